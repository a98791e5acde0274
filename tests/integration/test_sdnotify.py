"""systemd's notify protocol (shared/sdnotify.py): a real process under a fake systemd (a unix
datagram socket of the test as NOTIFY_SOCKET) says READY=1, pings WATCHDOG=1 while its loop
goes round, and STOPPING=1 on SIGTERM; the pieces on their own below."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator

import pytest

from shared.config import Settings
from shared.sdnotify import Notifier, Watchdog
from tests.conftest import env_for
from tests.helpers import Proc


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: collects each datagram's KEY=value lines."""

    def __init__(self, address: str, bind_to: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(0.2)
        self.messages: list[list[str]] = []

    def until(self, field: str, timeout: float = 20.0) -> list[str]:
        """Read datagrams until one carries ``field``; return that one."""
        deadline = time.monotonic() + timeout
        for seen in self.messages:
            if field in seen:
                return seen
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append(data.decode().split("\n"))
            if field in self.messages[-1]:
                return self.messages[-1]
        raise AssertionError(f"no {field} within {timeout:g}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    # a short path: sun_path holds 107 bytes, pytest's tmp_path can be longer
    directory = tempfile.mkdtemp(prefix="wp-notify-", dir="/tmp")
    path = os.path.join(directory, "notify")
    fake = FakeSystemd(path, path)
    yield fake
    fake.close()
    os.unlink(path)
    os.rmdir(directory)


def test_a_process_under_systemd_says_ready_pings_the_watchdog_and_says_stopping(
        aws_pool: Settings, systemd: FakeSystemd) -> None:
    # Given a reaper started as a Type=notify unit with WatchdogSec=0.4 would start it
    env = env_for(aws_pool, REAP_INTERVAL=0.2, NOTIFY_SOCKET=systemd.address,
                  WATCHDOG_USEC=400_000)
    proc = Proc("reaper", env)
    try:
        # When it is ready, Then systemd hears READY=1 with the ready line
        ready = systemd.until("READY=1")
        assert any(f.startswith("STATUS=ready") for f in ready)
        assert proc.wait_ready()["event"] == "ready"
        # and WATCHDOG=1 while its loop goes round, several times
        for _ in range(3):
            systemd.messages.clear()
            systemd.until("WATCHDOG=1", timeout=2)
        # When asked to stop, Then STOPPING=1, and it exits 0 within the protocol's 10 s
        proc.signal(signal.SIGTERM)
        systemd.until("STOPPING=1", timeout=5)
        assert proc.popen.wait(12) == 0
    finally:
        proc.kill()


def test_the_abstract_namespace_is_reached_through_a_leading_at_sign() -> None:
    name = f"wp-notify-{os.getpid()}-{time.monotonic_ns()}"
    fake = FakeSystemd("@" + name, "\0" + name)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send("READY=1")
        assert fake.until("READY=1", timeout=2) == ["READY=1"]
    finally:
        fake.close()


def test_without_notify_socket_nothing_is_sent_and_there_is_no_watchdog() -> None:
    plain = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not plain.enabled and not plain.send("READY=1") and plain.watchdog is None


def test_a_watchdog_meant_for_another_process_is_not_ours() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    assert Notifier(env, pid=42).watchdog == 30.0
    assert Notifier({**env, "WATCHDOG_PID": "42"}, pid=42).watchdog == 30.0
    assert Notifier({**env, "WATCHDOG_PID": "43"}, pid=42).watchdog is None


def test_a_socket_that_is_gone_is_not_an_error() -> None:
    assert Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"}).send("READY=1") is False


class Recorder(Notifier):
    def __init__(self) -> None:
        super().__init__({"NOTIFY_SOCKET": "/unused", "WATCHDOG_USEC": "10000000"})
        self.sent: list[tuple[str, ...]] = []

    def send(self, *fields: str) -> bool:
        self.sent.append(fields)
        return True


def test_before_ready_the_start_timeout_is_extended_instead_of_pinging() -> None:
    rec = Recorder()
    Watchdog(rec, last_alive=lambda: None, is_ready=lambda: False).beat()
    assert rec.sent == [("EXTEND_TIMEOUT_USEC=20000000",)]


def test_a_loop_silent_for_a_whole_period_gets_no_ping_and_one_that_goes_round_does() -> None:
    rec = Recorder()
    now = time.monotonic()
    assert not Watchdog(rec, last_alive=lambda: now - 11, is_ready=lambda: True).beat()
    assert Watchdog(rec, last_alive=lambda: now - 1, is_ready=lambda: True).beat()
    # a process whose loop never reports is watched by the thread's own liveness only
    assert Watchdog(rec, last_alive=lambda: None, is_ready=lambda: True).beat()
    assert rec.sent == [("WATCHDOG=1",), ("WATCHDOG=1",)]
