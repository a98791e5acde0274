"""A real ``python -m agent`` against a fake IMDSv2, a fake code-server and the real broker
(the vhost of AMQP_URL); what it sends is read back from workerpool.agents.

SIGTERM deregisters only when the VM is shutting down (agent/shutdown.py): the tests that
stop an agent as "the machine goes" set AGENT_DEREGISTER_ON_STOP=always (as the simulated
fleet does), so that they mean the same on a host whose own systemd is running; those about
telling a restart from a shutdown put a fake ``systemctl`` first on PATH."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent import AGENT_VERSION
from agent.shutdown import VARIABLE
from shared.config import Settings
from sim.fakes import FakeCodeServer, FakeImds
from sim.tap import AgentsTap
from tests.helpers import Proc, unique, wait_for
from tests.integration.test_dispatcher_support import (
    Client,
    launch,
    start_dispatchers,
    stop_all,
    store_of,
)
from tests.proxy import CuttableProxy

INTERVAL = 0.5
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def new_instance_id() -> str:
    return unique("i-0").replace("-0-", "-0")


@pytest.fixture
def tap(clean_queues: str) -> Iterator[AgentsTap]:
    with AgentsTap(clean_queues) as t:
        yield t


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    with FakeImds(instance_id=new_instance_id(), private_ip="10.0.1.5",
                  public_ip="203.0.113.7") as fake:
        yield fake


@pytest.fixture
def code_server() -> Iterator[FakeCodeServer]:
    with FakeCodeServer() as fake:
        yield fake


def start_agent(amqp_url: str, imds: FakeImds, code_server: FakeCodeServer,
                **extra: str) -> Proc:
    env = {"AMQP_URL": amqp_url, "HEALTH_PORT": "0", "HEARTBEAT_INTERVAL": str(INTERVAL),
           "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, "CODE_SERVER_URL": code_server.url,
           VARIABLE: "always", **extra}
    return Proc("agent", env)


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def running(tap: AgentsTap, imds: FakeImds, code_server: FakeCodeServer
            ) -> Iterator[tuple[Proc, AgentsTap, FakeImds, FakeCodeServer]]:
    proc = start_agent(tap_url(tap), imds, code_server)
    try:
        proc.wait_ready()
        yield proc, tap, imds, code_server
    finally:
        proc.kill()


def tap_url(tap: AgentsTap) -> str:
    return tap.amqp_url


def test_the_registration_is_exactly_what_protocol_section_4_says(running: Any) -> None:
    proc, tap, imds, _ = running
    reg = wait_for(lambda: tap.of(imds.instance_id, "register"), what="a registration")[0]
    body = json.loads(reg["_raw"])
    assert list(body) == ["type", "instance_id", "private_ip", "public_ip", "instance_type",
                          "availability_zone", "agent_version", "sent_at",
                          "identity_document", "identity_signature", "agent_key",  # v2
                          "tls_fingerprint"]
    assert body["type"] == "register"
    assert body["instance_id"] == imds.instance_id
    assert body["private_ip"] == "10.0.1.5" and body["public_ip"] == "203.0.113.7"
    assert body["instance_type"] == "t3.medium"
    assert body["availability_zone"] == "us-east-1a"
    assert body["agent_version"] == AGENT_VERSION
    assert ISO_Z.match(body["sent_at"]), body["sent_at"]
    sent = datetime.fromisoformat(body["sent_at"].replace("Z", "+00:00")).timestamp()
    assert abs(sent - time.time()) < 10
    # the first heartbeat follows at once, and it is the §4 shape too
    beat = wait_for(lambda: tap.of(imds.instance_id, "heartbeat"), what="a heartbeat")[0]
    assert beat["_at"] - reg["_at"] < INTERVAL
    assert list(json.loads(beat["_raw"])) == ["type", "instance_id", "healthy", "sent_at",
                                              "last_activity"]  # v2: null until code-server says
    assert beat["healthy"] is True
    ready = proc.events("ready")[0]
    assert ready["instance_id"] == imds.instance_id and ready["health_port"] > 0


def test_heartbeats_keep_the_configured_cadence(running: Any) -> None:
    _, tap, imds, _ = running
    wait_for(lambda: len(tap.of(imds.instance_id, "heartbeat")) >= 8, timeout=10,
             what="8 heartbeats")
    arrivals = [m["_at"] for m in tap.of(imds.instance_id, "heartbeat")][:8]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert sum(gaps) / len(gaps) == pytest.approx(INTERVAL, abs=0.15), gaps
    assert max(gaps) < 2 * INTERVAL, gaps
    assert len(tap.of(imds.instance_id, "register")) == 1


def test_healthy_turns_false_while_code_server_fails_and_back_and_health_says_why(
        running: Any) -> None:
    proc, tap, imds, code_server = running
    port = proc.health_port
    wait_for(lambda: health(port)[0] == 200, what="/health 200")
    code_server.healthy = False
    wait_for(lambda: any(not m["healthy"] for m in tap.of(imds.instance_id, "heartbeat")),
             what="a heartbeat with healthy false")
    status, body = wait_for(lambda: (h := health(port))[0] == 503 and h, what="/health 503")
    assert body["checks"]["code_server"]["ok"] is False
    assert "503" in body["checks"]["code_server"]["detail"]
    assert body["checks"]["heartbeat"]["ok"] is True  # the broker part is still fine
    code_server.healthy = True
    seen = len(tap.of(imds.instance_id, "heartbeat"))
    wait_for(lambda: any(m["healthy"] for m in tap.of(imds.instance_id, "heartbeat")[seen:]),
             what="healthy true again")
    wait_for(lambda: health(port)[0] == 200, what="/health 200 again")


def test_sigterm_sends_a_deregister_and_exits_zero_in_time(running: Any) -> None:
    proc, tap, imds, _ = running
    wait_for(lambda: tap.of(imds.instance_id, "heartbeat"), what="a heartbeat")
    started = time.monotonic()
    assert proc.stop(timeout=10) == 0
    assert time.monotonic() - started < 10
    dereg = wait_for(lambda: tap.of(imds.instance_id, "deregister"), what="a deregister")
    assert dereg[0]["reason"] == "shutdown"
    assert list(json.loads(dereg[0]["_raw"])) == ["type", "instance_id", "reason", "sent_at"]
    time.sleep(INTERVAL * 2)
    assert tap.of(imds.instance_id)[-1]["type"] == "deregister"  # nothing after it


def test_a_broker_outage_is_ridden_out_heartbeats_resume_and_it_registers_again(
        tap: AgentsTap, imds: FakeImds, code_server: FakeCodeServer, amqp_url: str) -> None:
    vhost = amqp_url.rsplit("/", 1)[1]
    proxy = CuttableProxy()
    proc = start_agent(proxy.url(vhost), imds, code_server)
    try:
        port = proc.health_port
        wait_for(lambda: len(tap.of(imds.instance_id, "heartbeat")) >= 2, what="heartbeats")
        pid = proc.popen.pid
        proxy.cut(refuse_for=2)
        cut_at = time.monotonic()
        status, body = wait_for(lambda: (h := health(port))[0] == 503 and h, timeout=5,
                                what="/health 503 during the outage")
        assert body["checks"]["heartbeat"]["ok"] is False
        regs = wait_for(lambda: [m for m in tap.of(imds.instance_id, "register")
                                 if m["_at"] > cut_at], timeout=15, what="a re-registration")
        wait_for(lambda: len([m for m in tap.of(imds.instance_id, "heartbeat")
                              if m["_at"] > regs[0]["_at"]]) >= 3, what="heartbeats resumed")
        # (a message already in flight at the cut may land just after it: skip 0.2 s; the
        # proxy refuses everything for 2 s anyway)
        after = [m["type"] for m in tap.of(imds.instance_id) if m["_at"] > cut_at + 0.2]
        assert after[0] == "register", after  # registered again before any heartbeat
        assert proc.popen.poll() is None and proc.popen.pid == pid  # never restarted
        assert any(l.get("event") == "publish_failed" for l in proc.lines)
        wait_for(lambda: health(port)[0] == 200, what="/health 200 after the outage")
    finally:
        proc.kill()
        proxy.close()


def test_sigterm_while_the_broker_is_gone_still_exits_zero_within_10_seconds(
        tap: AgentsTap, imds: FakeImds, code_server: FakeCodeServer, amqp_url: str) -> None:
    proxy = CuttableProxy()
    proc = start_agent(proxy.url(amqp_url.rsplit("/", 1)[1]), imds, code_server)
    try:
        proc.wait_ready()
        proxy.cut(refuse_for=60)
        try:
            wait_for(lambda: any(l.get("event") == "publish_failed" for l in proc.lines),
                     what="a failed publish")
        except AssertionError:
            raise AssertionError(proc.log_text()) from None
        started = time.monotonic()
        assert proc.stop(timeout=10) == 0
        assert time.monotonic() - started < 10
        # the reader thread may still be collecting the last lines of the exited process
        wait_for(lambda: any(l.get("event") == "deregister_failed" for l in proc.lines), 3,
                 what="the deregister_failed line")
    finally:
        proc.kill()
        proxy.close()


def test_imds_refusing_token_less_requests_never_sees_one_and_the_agent_works(
        running: Any) -> None:
    _, tap, imds, _ = running
    wait_for(lambda: tap.of(imds.instance_id, "register"), what="a registration")
    gets = [r for r in imds.seen if r.method == "GET"]
    assert {r.path for r in gets} >= {"/latest/meta-data/instance-id",
                                      "/latest/meta-data/local-ipv4"}
    assert imds.tokenless_requests() == []
    assert [r.method for r in imds.seen][0] == "PUT"  # the token came first


def test_imds_down_at_start_the_agent_waits_says_so_then_registers(
        tap: AgentsTap, imds: FakeImds, code_server: FakeCodeServer) -> None:
    imds.down = True
    proc = start_agent(tap_url(tap), imds, code_server)
    try:
        waiting = wait_for(lambda: [l for l in proc.lines if l.get("event") == "waiting"],
                           timeout=10, what="a 'waiting for IMDS' line")
        assert "IMDS" in waiting[0]["reason"] and waiting[0]["endpoint"] == imds.url
        time.sleep(1.0)
        assert tap.of(imds.instance_id) == [] and proc.popen.poll() is None
        imds.down = False
        wait_for(lambda: tap.of(imds.instance_id, "register"), timeout=15,
                 what="a registration once IMDS is back")
        proc.wait_ready()
        assert imds.tokenless_requests() == []
    finally:
        proc.kill()


def test_a_bad_imds_answer_is_retried_not_fatal(
        tap: AgentsTap, imds: FakeImds, code_server: FakeCodeServer) -> None:
    imds.garbage = True
    proc = start_agent(tap_url(tap), imds, code_server)
    try:
        wait_for(lambda: [l for l in proc.lines if l.get("event") == "waiting"
                          and "instance-id" in l.get("reason", "")], what="the reason logged")
        imds.garbage = False
        wait_for(lambda: tap.of(imds.instance_id, "register"), timeout=15,
                 what="a registration after IMDS answers well")
    finally:
        proc.kill()


def test_a_public_ip_absent_from_imds_registers_as_null(
        tap: AgentsTap, code_server: FakeCodeServer) -> None:
    with FakeImds(instance_id=new_instance_id(), public_ip=None) as imds:
        proc = start_agent(tap_url(tap), imds, code_server)
        try:
            reg = wait_for(lambda: tap.of(imds.instance_id, "register"), what="registration")
            assert json.loads(reg[0]["_raw"])["public_ip"] is None
            assert "public_ip" in json.loads(reg[0]["_raw"])  # null, not omitted
        finally:
            proc.kill()


def test_a_bad_heartbeat_interval_exits_2_with_one_line_naming_it(imds: FakeImds,
                                                                    code_server: Any) -> None:
    proc = start_agent("amqp://guest:guest@127.0.0.1:1/x", imds, code_server,
                       HEARTBEAT_INTERVAL="soon")
    assert proc.popen.wait(10) == 2
    time.sleep(0.1)
    assert len(proc.raw) == 1 and "HEARTBEAT_INTERVAL" in proc.raw[0]


def test_sigint_stops_it_too(running: Any) -> None:
    proc, tap, imds, _ = running
    proc.signal(signal.SIGINT)
    assert proc.popen.wait(10) == 0
    wait_for(lambda: tap.of(imds.instance_id, "deregister"), what="a deregister")


# --- a stop or a shutdown (PROTOCOL §4 v2: a restart keeps the lease) -------------------

class FakeSystemctl:
    """``systemctl`` first on PATH: ``is-system-running`` prints ``state`` (exit 0 only for
    running, as the real one), and every call is recorded."""

    def __init__(self, directory: Path, state: str) -> None:
        self.bin = directory / "fake-bin"
        self.bin.mkdir(exist_ok=True)
        self._state = self.bin / "state"
        self._calls = self.bin / "calls"
        script = self.bin / "systemctl"
        script.write_text('#!/bin/sh\n'
                          'here=$(dirname "$0")\n'
                          'echo "$*" >> "$here/calls"\n'
                          'state=$(cat "$here/state")\n'
                          'echo "$state"\n'
                          '[ "$state" = running ]\n')
        script.chmod(0o755)
        self.state = state

    @property
    def state(self) -> str:
        return self._state.read_text()

    @state.setter
    def state(self, word: str) -> None:
        self._state.write_text(word)

    def calls(self) -> list[str]:
        return self._calls.read_text().splitlines() if self._calls.exists() else []

    def env(self, mode: str = "auto") -> dict[str, str]:
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", VARIABLE: mode}


def stop_decision_line(proc: Proc) -> dict[str, Any]:
    """The agent's own "stopping" line (Runtime's, before it, names the signal)."""
    lines = wait_for(lambda: [l for l in proc.events("stopping") if "deregister" in l], 3,
                     what="the stopping line with the decision")
    assert len(lines) == 1, lines
    return lines[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("state", ["running", "degraded", "starting"])
def test_sigterm_while_systemd_is_up_is_a_restart_no_deregister_and_exit_zero_in_time(
        tap: AgentsTap, imds: FakeImds, code_server: FakeCodeServer, tmp_path: Path,
        state: str) -> None:
    systemctl = FakeSystemctl(tmp_path, state)
    proc = start_agent(tap_url(tap), imds, code_server, **systemctl.env())
    try:
        proc.wait_ready()
        wait_for(lambda: tap.of(imds.instance_id, "heartbeat"), what="a heartbeat")
        started = time.monotonic()
        assert proc.stop(timeout=10) == 0
        assert time.monotonic() - started < 10
        line = stop_decision_line(proc)
        assert line["deregister"] is False and state in line["reason"]
        assert line["instance_id"] == imds.instance_id
        assert systemctl.calls() == ["is-system-running"]  # asked once, at the stop
        time.sleep(INTERVAL * 3)  # a deregister would have landed by now
        assert tap.of(imds.instance_id, "deregister") == []
        assert not proc.events("deregistered")
    finally:
        proc.kill()


def test_sigterm_while_systemd_is_stopping_is_a_shutdown_and_deregisters(
        tap: AgentsTap, imds: FakeImds, code_server: FakeCodeServer, tmp_path: Path) -> None:
    systemctl = FakeSystemctl(tmp_path, "running")
    proc = start_agent(tap_url(tap), imds, code_server, **systemctl.env())
    try:
        proc.wait_ready()
        assert systemctl.calls() == []  # systemd is asked only when the stop comes
        systemctl.state = "stopping"  # poweroff / reboot / EC2 terminate has begun
        started = time.monotonic()
        assert proc.stop(timeout=10) == 0
        assert time.monotonic() - started < 10
        dereg = wait_for(lambda: tap.of(imds.instance_id, "deregister"), what="a deregister")
        assert dereg[0]["reason"] == "shutdown"
        line = stop_decision_line(proc)
        assert line["deregister"] is True and "stopping" in line["reason"]
    finally:
        proc.kill()


@pytest.mark.parametrize("systemd", ["offline", "missing"])
def test_sigterm_without_systemd_as_init_deregisters_by_default(
        tap: AgentsTap, imds: FakeImds, code_server: FakeCodeServer, tmp_path: Path,
        systemd: str) -> None:
    if systemd == "offline":  # systemctl installed, systemd not PID 1 (a container)
        env = FakeSystemctl(tmp_path, "offline").env()
    else:  # no systemctl at all: PATH holds nothing (the agent needs nothing from it)
        empty = tmp_path / "empty"
        empty.mkdir()
        env = {"PATH": str(empty), VARIABLE: ""}  # empty: the default, auto
    proc = start_agent(tap_url(tap), imds, code_server, **env)
    try:
        proc.wait_ready()
        assert proc.events("starting")[0]["deregister_on_stop"] == "auto"
        assert proc.stop(timeout=10) == 0
        wait_for(lambda: tap.of(imds.instance_id, "deregister"), what="a deregister")
        assert stop_decision_line(proc)["deregister"] is True
    finally:
        proc.kill()


def test_never_keeps_the_registration_even_at_a_shutdown(
        tap: AgentsTap, imds: FakeImds, code_server: FakeCodeServer, tmp_path: Path) -> None:
    systemctl = FakeSystemctl(tmp_path, "stopping")
    proc = start_agent(tap_url(tap), imds, code_server, **systemctl.env("never"))
    try:
        proc.wait_ready()
        assert proc.stop(timeout=10) == 0
        line = stop_decision_line(proc)
        assert line["deregister"] is False and VARIABLE in line["reason"]
        assert systemctl.calls() == []  # not asked: the variable decided
        time.sleep(INTERVAL * 3)
        assert tap.of(imds.instance_id, "deregister") == []
    finally:
        proc.kill()


def test_a_bad_deregister_on_stop_value_exits_2_with_one_line_naming_it(
        imds: FakeImds, code_server: FakeCodeServer) -> None:
    proc = start_agent("amqp://guest:guest@127.0.0.1:1/x", imds, code_server,
                       **{VARIABLE: "sometimes"})
    assert proc.popen.wait(10) == 2
    time.sleep(0.1)
    assert len(proc.raw) == 1 and VARIABLE in proc.raw[0], proc.raw
    assert "'auto', 'always' or 'never'" in proc.raw[0]


def test_a_restarted_agent_registers_again_and_its_leased_worker_stays_leased(
        pool: Settings, tmp_path: Path) -> None:
    """Given a leased worker, when its agent is restarted (systemd up: `systemctl restart`,
    an upgrade), then the new process registers again with the same key and the worker
    stays the user's; when the VM then shuts down, the agent deregisters it.
    Checked where it matters: a real dispatcher and its table (moto), not the messages."""
    (iid,) = launch(pool, 1)
    systemctl = FakeSystemctl(tmp_path, "running")
    key_file = tmp_path / "agent.key"  # the same file across restarts, as on the VM's disk
    store = store_of(pool)
    client = Client(pool)
    procs: list[Proc] = []
    with FakeImds(instance_id=iid, private_ip="10.0.7.7", public_ip="198.51.100.77") as imds, \
            FakeCodeServer() as code_server:

        def agent(n: int) -> Proc:
            proc = start_agent(pool.amqp_url, imds, code_server, AGENT_KEY_FILE=str(key_file),
                               **systemctl.env())
            proc.name = f"agent{n}"
            procs.append(proc)
            return proc

        try:
            (dispatcher,) = start_dispatchers(pool)
            procs.append(dispatcher)
            first = agent(1)
            first.wait_ready()
            wait_for(lambda: (w := store.workers.get(iid)) and w.status == "free",
                     what="the worker free")
            reply = client.claim("alice", "r-restart")
            assert reply["status"] == "assigned" and reply["worker"]["instance_id"] == iid
            key = store.workers.agent_key(iid)
            assert key

            def registered_while_leased() -> int:
                return sum(1 for l in dispatcher.lines if l.get("msg") == "worker registered"
                           and l.get("instance_id") == iid and l.get("status") == "leased")

            assert first.stop(timeout=10) == 0  # systemctl restart workerpool-agent
            assert stop_decision_line(first)["deregister"] is False
            before = registered_while_leased()  # (the first agent re-registers now and then)
            restarted_at = time.time()
            second = agent(2)
            second.wait_ready()
            wait_for(lambda: registered_while_leased() > before,
                     what="the second agent's registration, of a leased worker")
            wait_for(lambda: (w := store.workers.get(iid)) and w.last_heartbeat > restarted_at,
                     what="a heartbeat of the second agent written")
            worker = store.workers.get(iid)
            assert worker is not None
            assert worker.status == "leased" and worker.user_id == "alice"
            assert store.workers.agent_key(iid) == key  # same key file, same key
            assert not [l for l in dispatcher.lines if l.get("msg") == "worker deregistered"]
            again = client.claim("alice", "r-restart-2")  # still hers: her worker back
            assert again["status"] == "assigned" and again["worker"]["instance_id"] == iid

            systemctl.state = "stopping"  # and now the VM shuts down for real
            assert second.stop(timeout=10) == 0
            assert stop_decision_line(second)["deregister"] is True
            wait_for(lambda: (w := store.workers.get(iid)) and w.status == "draining",
                     what="the lease ended by the deregister")
        finally:
            stop_all(procs)
            client.close()
