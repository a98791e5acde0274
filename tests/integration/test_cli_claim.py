"""``workerpool claim``, ``cancel``, ``release`` driven as a user drives them: the console
script in a clean environment against a real dispatcher, the real broker and moto."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import topology
from shared.broker import connect, get_one
from shared.config import Settings
from tests.helpers import Proc, wait_for
from tests.integration.test_cli_support import cli_env, no_traceback, run, start
from tests.integration.test_dispatcher_support import (
    dead_letters,
    launch,
    metrics_text,
    register_workers,
    start_dispatchers,
    store_of,
)


@pytest.fixture
def dispatcher(pool: Settings) -> Iterator[Proc]:
    (proc,) = start_dispatchers(pool)
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


def test_claim_without_user_is_for_workerpool_user_and_release_needs_no_instance(
        pool: Settings, dispatcher: Proc, home: Path) -> None:
    """Given a free worker, when alice claims with only WORKERPOOL_USER set and then runs
    `workerpool release` with no argument, the worker she got is released."""
    (iid,) = launch(pool, 1)
    register_workers(pool, [iid])
    env = cli_env(pool, home, WORKERPOOL_USER="alice")

    claimed = run(env, "claim")
    assert claimed.returncode == 0, claimed.stderr
    assert claimed.stdout.splitlines()[0] == f"assigned {iid} to alice"
    assert claimed.stderr == ""  # answered at once: nothing to say while waiting
    worker = store_of(pool).workers.get(iid)
    assert worker is not None and worker.status == "leased" and worker.user_id == "alice"

    released = run(env, "release")
    assert released.returncode == 0, released.stderr
    assert released.stdout.strip() == f"released {iid}"
    assert f"{iid}, the last worker alice claimed here" in released.stderr
    again = run(env, "release")
    assert again.returncode == 2 and "no worker claimed by alice" in again.stderr


def test_ctrl_c_on_a_waiting_claim_cancels_it_and_the_next_worker_stays_free(
        pool: Settings, dispatcher: Proc, home: Path) -> None:
    env = cli_env(pool, home, WORKERPOOL_USER="bob")
    claim = start(env, "claim", "--wait", "2m")
    wait_for(lambda: "workerpool_waiting_claims 1.0" in metrics_text(dispatcher), 10,
             what="the claim waiting")
    time.sleep(1.2)  # past the moment a waiting claim shows its request id
    claim.send_signal(signal.SIGINT)
    out, err = claim.communicate(timeout=15)
    assert claim.returncode == 130, err
    assert "Ctrl-C: cancelling claim cli-" in err
    assert "cancelled claim cli-" in err and "it will not be assigned" in err
    rid = err.split("claim ", 1)[1].split()[0]
    assert f"`workerpool claim --request-id {rid}` picks it up again" in err
    assert "Traceback" not in err and out == ""

    (iid,) = launch(pool, 1)
    register_workers(pool, [iid])
    time.sleep(1.0)  # ten passes of the waiting room (WAIT_POLL_INTERVAL 0.1)
    worker = store_of(pool).workers.get(iid)
    assert worker is not None and worker.status == "free"
    assert list(store_of(pool).leases.held_by("bob")) == []
    # the same request id picks the claim up again: it stays cancelled
    again = run(env, "claim", "--request-id", rid)
    assert again.returncode == 1 and again.stdout.startswith("cancelled: "), again


def test_the_same_request_id_picks_up_the_same_worker(
        pool: Settings, dispatcher: Proc, home: Path) -> None:
    ids = launch(pool, 2)
    register_workers(pool, ids)
    env = cli_env(pool, home)
    first = run(env, "claim", "--user", "carol", "--request-id", "carol-1")
    again = run(env, "claim", "--user", "carol", "--request-id", "carol-1")
    assert first.returncode == again.returncode == 0
    assert first.stdout.splitlines()[0] == again.stdout.splitlines()[0]


def test_a_second_claim_says_it_is_the_worker_already_held_and_that_lease_did_not_apply(
        pool: Settings, dispatcher: Proc, home: Path) -> None:
    ids = launch(pool, 2)
    register_workers(pool, ids)
    env = cli_env(pool, home, WORKERPOOL_USER="dora")
    first = run(env, "claim")
    iid = first.stdout.split()[1]
    second = run(env, "claim", "--lease", "3h")
    assert second.returncode == 0
    assert second.stdout.splitlines()[0] == (
        f"you already hold {iid} (MAX_LEASES_PER_USER reached); --lease did not apply: use "
        "`workerpool renew`")


def test_bad_flags_are_refused_before_anything_is_sent(
        pool: Settings, dispatcher: Proc, home: Path) -> None:
    env = cli_env(pool, home)
    cases = [(["claim", "--user", "alice", "--lease", "5"], "--lease: 5 is 5s"),
             (["claim", "--user", "bob smith"], "'bob smith' is not a valid user id"),
             (["claim", "--user", "alice", "--wait", "1000"], "the wait must be from 0s to 15m"),
             (["claim", "--user", "alice", "--wait", "2x"], "'2x' is not a duration"),
             (["claim", "--user", "alice", "--request-id", "a b"], "not a valid request id"),
             (["renew", "--user", "alice", "i-0abc", "--lease", "2d"], "from 10s to 1d"),
             (["release", "--user", "alice", "bogus"], "'bogus' is not a valid instance id"),
             (["claim"], "'bob smith' is not a valid user id")]
    for args, message in cases:
        extra = {"WORKERPOOL_USER": "bob smith"} if args == ["claim"] else {}
        done = run({**env, **extra}, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        no_traceback(done)
    time.sleep(0.5)
    assert dead_letters(pool) == []
    assert 'workerpool_claims_total{outcome="rejected"}' not in metrics_text(dispatcher)


def test_with_no_dispatcher_claim_fails_within_seconds_with_a_hint(
        pool: Settings, home: Path) -> None:
    began = time.monotonic()
    done = run(cli_env(pool, home), "claim", "--user", "alice", timeout=60)
    took = time.monotonic() - began
    print(f"\nno dispatcher: exit {done.returncode} after {took:.2f}s")
    assert done.returncode == 3, done.stderr
    assert "no dispatcher is serving workerpool.claims" in done.stderr
    assert "is the pool running?" in done.stderr
    assert took < 15
    # nothing was sent: the claim does not wait in the queue for a dispatcher to come
    assert get_one(pool.amqp_url, "tests", topology.CLAIMS) is None


def test_the_clients_own_deadline_cancels_the_claim(pool: Settings, home: Path) -> None:
    """A consumer that never answers (a hung dispatcher): after --wait plus the grace the
    client sends a cancel for the claim, says so, and exits 4."""
    conn = connect(pool.amqp_url, "tests-silent")
    channel = conn.channel()
    channel.basic_consume(topology.CLAIMS, lambda *a: None, auto_ack=False)
    try:
        done = run(cli_env(pool, home), "claim", "--user", "erin", "--wait", "1",
                   "--grace", "1", timeout=60)
    finally:
        conn.close()
    assert done.returncode == 4, done.stderr
    assert "no answer within 2s: cancelling claim cli-" in done.stderr
    assert "the cancel was sent (the broker has it) but not answered yet" in done.stderr
    sent = []
    while (got := get_one(pool.amqp_url, "tests", topology.LEASES)) is not None:
        sent.append(json.loads(got[0]))
    # the cancel, and no status request (nobody serves workerpool.leases: none is sent)
    assert [(m["type"], m["user_id"]) for m in sent] == [("cancel", "erin")]


def test_claim_into_a_closed_pipe_ends_without_a_traceback(
        pool: Settings, dispatcher: Proc, home: Path) -> None:
    ids = launch(pool, 2)
    register_workers(pool, ids)
    env = cli_env(pool, home)
    head = run(env, '"$WP" claim --user fay | head -1', shell=True)
    assert head.stdout.startswith("assigned i-") and len(head.stdout.splitlines()) == 1
    no_traceback(head)
    closed = run(env, '"$WP" claim --user gus | true', shell=True)
    no_traceback(closed)


def test_cancel_of_an_unknown_claim_is_not_found(
        pool: Settings, dispatcher: Proc, home: Path) -> None:
    done = run(cli_env(pool, home), "cancel", "--user", "hal", "never-sent")
    assert done.returncode == 1 and done.stdout.startswith("not_found: "), done
