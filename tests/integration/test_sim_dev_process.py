"""``workerpool dev`` as a developer runs it (a subprocess on this test's broker vhost):
it stops the fleet before the dispatchers, so no agent's deregister is left in
workerpool.agents; a quick restart keeps moto's port although TIME-WAIT holds it; the
fleet's public IPs are documentation addresses; with ``--dynamodb local`` DynamoDB is
DynamoDB Local's, moto keeps the ASG, and a claim is assigned."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from shared import topology
from shared.aws import client
from shared.broker import RpcClient, get_one
from sim.addresses import is_documentation
from tests.conftest import free_port
from tests.helpers import ROOT, unique, wait_for

#: ``workerpool dev`` with DynamoDB from argv[1]: through shared/cli.py's --dynamodb when
#: it has one, else set on the parsed arguments as that flag would.
LAUNCH = """
import sys
from shared.cli import build_parser

backend, argv = sys.argv[1], sys.argv[2:]
parser = build_parser()
dev = parser._subparsers._group_actions[0].choices["dev"]
if "--dynamodb" in dev._option_string_actions:
    args = parser.parse_args(["dev", "--dynamodb", backend, *argv])
else:
    args = parser.parse_args(["dev", *argv])
    args.dynamodb = backend
raise SystemExit(args.func(args))
"""

def server_closes_first(port: int) -> None:
    """A request moto answers and then hangs up on: its side of the connection, on its
    port, stays in TIME-WAIT for a minute (as test_sim_ports.py does)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"GET /moto-api/ HTTP/1.1\r\nHost: moto\r\nConnection: close\r\n\r\n")
        while c.recv(65536):
            pass


def plain_bind_fails(port: int) -> bool:
    """Whether a bind without SO_REUSEADDR (dev's old probe) is refused: TIME-WAIT."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def leftovers(amqp_url: str) -> list[dict[str, Any]]:
    """What is left in workerpool.agents (taken out, so the next run starts clean). A
    heartbeat may be: a dispatcher hands back the ones it has not written yet when it
    stops, and they change nothing; a deregister must not be."""
    found = []
    while (got := get_one(amqp_url, "test", topology.AGENTS)) is not None:
        found.append(json.loads(got[0]))
    return found


REGISTERED = re.compile(r"^fleet +\| info +registered instance_id=(i-\w+) .*public_ip=(\S+)")


class DevRun:
    """One ``workerpool dev``, its output lines collected."""

    def __init__(self, backend: str, port: int, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, backend, "--moto-port", str(port), "--target", "2"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        def seen() -> re.Match[str] | None:
            if self.popen.poll() is not None and not self.lines_matching(pattern):
                raise AssertionError(f"dev exited {self.popen.returncode}:\n{self.tail()}")
            found = self.lines_matching(pattern)
            return found[0] if found else None

        return wait_for(seen, timeout, 0.1, what=f"{pattern!r}")  # type: ignore[no-any-return]

    def lines_matching(self, pattern: str) -> list[re.Match[str]]:
        return [m for m in (re.search(pattern, line) for line in list(self.lines)) if m]

    def index(self, pattern: str) -> int:
        return next(k for k, line in enumerate(self.lines) if re.search(pattern, line))

    def registered(self, n: int) -> dict[str, str]:
        """instance id → the public IP its agent registered, once ``n`` have."""
        def enough() -> dict[str, str] | None:
            got = {m[1]: m[2] for m in map(REGISTERED.search, list(self.lines)) if m}
            return got if len(got) >= n else None

        return wait_for(enough, 60, 0.2, what=f"{n} agents registered")  # type: ignore[no-any-return]

    def interrupt(self, timeout: float = 45) -> int:
        """Ctrl-C, as a developer stops it."""
        self.popen.send_signal(signal.SIGINT)
        return self.popen.wait(timeout)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.lines[-n:])

    def close(self) -> None:
        """Whatever happened: stopped, and its children too (a second Ctrl-C kills them)."""
        for sig, wait in ((signal.SIGINT, 30), (signal.SIGINT, 10)):
            if self.popen.poll() is None:
                self.popen.send_signal(sig)
                try:
                    self.popen.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


@pytest.fixture
def dev_env(amqp_url: str, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "AMQP_URL": amqp_url, "TABLE_NAME": unique("dev").replace("-", "_"),
           "WORKERPOOL_DEV_STATE": str(tmp_path / "dev"), "FLEET_BOOT_DELAY": "0.5",
           "HEARTBEAT_INTERVAL": "1", "WORKERPOOL_SKIP_BROKER_RESTART": "1"}
    env.pop("AWS_ENDPOINT_URL", None)  # the session's moto: dev brings its own
    return env


@pytest.fixture
def runs() -> Iterator[list[DevRun]]:
    started: list[DevRun] = []
    yield started
    for run in started:
        run.close()


def test_dev_stops_the_fleet_first_so_no_deregister_is_left_and_restarts_on_the_same_port(
        dev_env: dict[str, str], amqp_url: str, runs: list[DevRun]) -> None:
    port = free_port()
    first = DevRun("moto", port, dev_env)
    runs.append(first)
    first.wait_line(rf"^\[dev\] AWS: moto at http://127\.0\.0\.1:{port} \(DynamoDB, Auto")
    first.wait_line(r"^\[dev\] the pool is up")
    registered = first.registered(2)
    assert all(is_documentation(ip) for ip in registered.values()), registered
    for _ in range(3):
        server_closes_first(port)  # TIME-WAIT on moto's port, as after a busy run

    assert first.interrupt() == 0, first.tail()

    left = leftovers(amqp_url)
    assert not [m for m in left if m.get("type") == "deregister"], left
    for iid in registered:
        first.wait_line(rf"^dispatcher-\d+ *\| info +worker deregistered instance_id={iid}", 1)
    fleet_stopped = first.index(r"^fleet +\| info +stopped event=stopped$")
    assert fleet_stopped < first.index(r"^dispatcher-\d+ *\| info +stopping event=stopping")
    first.wait_line(r"^\[dev\] stopped\.$", 1)

    assert plain_bind_fails(port), "no TIME-WAIT on moto's port: the restart proves little"
    again = DevRun("moto", port, dev_env)
    runs.append(again)
    again.wait_line(rf"^\[dev\] AWS: moto at http://127\.0\.0\.1:{port} ", 20)
    again.wait_line(r"^\[dev\] bootstrapped table")
    assert again.interrupt() == 0, again.tail()


@pytest.fixture
def dynamodb_local() -> str:
    if shutil.which("java") is None:
        pytest.skip("DynamoDB Local needs Java 17 (scripts/dynamodb says how to install it)")
    done = subprocess.run([str(ROOT / "scripts" / "dynamodb"), "start"], text=True,
                          capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def test_dev_with_dynamodb_local_keeps_the_asg_on_moto_and_assigns_a_claim(
        dev_env: dict[str, str], amqp_url: str, dynamodb_local: str,
        runs: list[DevRun]) -> None:
    run = DevRun("local", free_port(), dev_env)
    runs.append(run)
    where = run.wait_line(r"^\[dev\] AWS: moto at (\S+) \(Auto Scaling, EC2\), "
                          r"DynamoDB Local at (\S+) \(DynamoDB\)")
    moto, local = where[1], where[2]
    assert local == dynamodb_local
    run.wait_line(r"^\[dev\] the pool is up")
    run.registered(1)
    table = dev_env["TABLE_NAME"]
    on_local = client("dynamodb", region="us-east-1", endpoint_url=local)
    try:
        assert table in on_local.list_tables()["TableNames"]
        assert table not in client("dynamodb", region="us-east-1",
                                   endpoint_url=moto).list_tables()["TableNames"]

        rpc = RpcClient(amqp_url, "cli@test-sim-dev")
        try:
            body = {"request_id": unique("r"), "user_id": "alice", "wait_seconds": 30}
            reply = json.loads(rpc.call(topology.CLAIMS, json.dumps(body).encode(), 45))
        finally:
            rpc.close()
        assert reply["status"] == "assigned", reply
        host = urlsplit(reply["worker"]["url"]).hostname
        assert host == run.registered(1)[reply["worker"]["instance_id"]], reply
        assert host is not None and is_documentation(host), reply

        assert run.interrupt() == 0, run.tail()
        assert not [m for m in leftovers(amqp_url) if m.get("type") == "deregister"]
    finally:
        on_local.delete_table(TableName=table)
