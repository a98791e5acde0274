"""``workerpool status`` (and a claim's spinner) driven as a user drives them: broker
credentials only, ``--watch`` on a terminal and on a pipe, through a dispatcher restart."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import Settings
from tests.helpers import Proc, wait_for
from tests.integration.test_cli_support import Tty, cli_env, no_traceback, run, start
from tests.integration.test_dispatcher_support import (
    launch,
    metrics_text,
    register_workers,
    start_dispatchers,
)

CLEAR_SCREEN = "\x1b[2J"
COLOUR = "\x1b[3"  # SGR foreground colours 30-37 (rich writes e.g. \x1b[36m, \x1b[32m)


@pytest.fixture
def dispatcher(pool: Settings) -> Iterator[Proc]:
    (proc,) = start_dispatchers(pool)
    yield proc
    proc.stop()


def test_status_needs_only_the_broker_and_lists_your_lease(
        pool: Settings, dispatcher: Proc, tmp_path: Path) -> None:
    ids = launch(pool, 2)
    register_workers(pool, ids)
    env = cli_env(pool, tmp_path, WORKERPOOL_USER="alice")  # no AWS_* at all
    assert not any(k.startswith("AWS") for k in env)
    before = run(env, "status")
    assert before.returncode == 0, before.stderr
    assert before.stdout.splitlines()[:2] == [
        "pool: 2 free, 0 leased, 0 booting, 0 draining, 0 dead",
        "claims waiting: 0    machines: desired 2 of max 10"]
    assert "alice holds no worker" in before.stdout

    iid = run(env, "claim").stdout.split()[1]
    after = run(env, "status")
    assert after.returncode == 0
    assert "leases of alice:" in after.stdout
    row = next(line for line in after.stdout.splitlines() if line.startswith(iid))
    assert "http" in row and ":8080" in row
    as_json = json.loads(run(env, "status", "--json").stdout)
    assert as_json["status"] == "ok" and as_json["leases"][0]["instance_id"] == iid


def test_status_aws_without_aws_variables_is_a_configuration_error(
        pool: Settings, tmp_path: Path) -> None:
    done = run(cli_env(pool, tmp_path), "status", "--aws")
    assert done.returncode == 2, done
    assert "AWS credentials" in done.stderr and "needs only the broker" in done.stderr
    no_traceback(done)
    operator = run(cli_env(pool, tmp_path, aws=True), "status", "--aws")
    assert operator.returncode == 0, operator.stderr
    assert operator.stdout.startswith("workerpool status at ")


def test_status_with_no_dispatcher_fails_fast(pool: Settings, tmp_path: Path) -> None:
    began = time.monotonic()
    done = run(cli_env(pool, tmp_path, WORKERPOOL_USER="bob"), "status")
    took = time.monotonic() - began
    print(f"\nstatus, no dispatcher: exit {done.returncode} after {took:.2f}s")
    assert done.returncode == 3 and "is the pool running?" in done.stderr
    assert took < 15


def _collect(stream: subprocess.Popen[str], into: list[str], which: str) -> threading.Thread:
    pipe = stream.stdout if which == "out" else stream.stderr
    assert pipe is not None

    def read() -> None:
        for line in pipe:
            into.append(line)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def test_watch_on_a_pipe_rides_out_a_dispatcher_restart(
        pool: Settings, tmp_path: Path) -> None:
    (first,) = start_dispatchers(pool)
    env = cli_env(pool, tmp_path, WORKERPOOL_USER="carol")
    watch = start(env, "status", "--watch", "--json", "--interval", "0.3")
    out: list[str] = []
    err: list[str] = []
    readers = [_collect(watch, out, "out"), _collect(watch, err, "err")]
    try:
        wait_for(lambda: len(out) >= 2, 15, what="two views")
        assert first.stop() == 0
        wait_for(lambda: any("trying again" in line for line in err), 20,
                 what="a note that the view is stale")
        seen = len(out)
        (second,) = start_dispatchers(pool)
        try:
            wait_for(lambda: len(out) > seen, 40, what="views again after the restart")
        finally:
            second.stop()
    finally:
        watch.send_signal(2)
        watch.wait(10)
        for t in readers:
            t.join(5)
    assert watch.returncode == 0
    assert all(json.loads(line)["status"] == "ok" for line in out)
    assert not any("Traceback" in line for line in err), err


def test_watch_on_a_terminal_redraws_in_place_in_colour_unless_no_color(
        pool: Settings, dispatcher: Proc, tmp_path: Path) -> None:
    register_workers(pool, launch(pool, 1))  # "1 free", in green
    env = cli_env(pool, tmp_path, WORKERPOOL_USER="dave")
    tty = Tty(env, "status", "--watch", "--interval", "0.3")
    tty.wait_for("updated ")
    time.sleep(1.0)
    assert tty.interrupt() == 0
    screen = tty.text
    assert screen.count("Ctrl-C to stop") >= 2  # several views…
    assert CLEAR_SCREEN not in screen  # …drawn over each other, never by clearing the screen
    assert "\x1b[1A" in screen or "\x1b[2K" in screen  # cursor up / erase line: in place
    assert COLOUR in screen

    plain = Tty({**env, "NO_COLOR": "1"}, "status")
    plain.read(8)
    assert plain.proc.wait(10) == 0
    assert "pool" in plain.text and COLOUR not in plain.text


def test_a_waiting_claim_shows_what_the_pool_is_doing_on_a_terminal(
        pool: Settings, dispatcher: Proc, tmp_path: Path) -> None:
    env = cli_env(pool, tmp_path, WORKERPOOL_USER="erin")
    tty = Tty(env, "claim", "--wait", "1m")
    wait_for(lambda: "workerpool_waiting_claims 1.0" in metrics_text(dispatcher), 10,
             what="the claim waiting")
    tty.wait_for("1 waiting · 0 booting · desired 0/10")
    tty.wait_for("waits up to 1m for a worker")
    assert tty.interrupt() == 130
    assert "cancelled claim cli-" in tty.text
