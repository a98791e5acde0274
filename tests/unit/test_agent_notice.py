"""The agent's side of idle reclaim and notices, without a broker: code-server's
``lastHeartbeat`` becomes ``last_activity``; a ``notice`` command writes the notice file and
runs the (fake) wall command; a heartbeat without ``last_activity`` (v1) still decodes."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from agent.health import last_activity, probe
from agent.notice import Notices, notice_text, run_wall
from shared.config import parse_settings
from shared.messages import Heartbeat, LeaseEnding, Notice, decode
from shared.messages.events import at
from sim.fakes import FakeCodeServer

NOW = 1_800_000_000.0


def ending(iid: str = "i-0abc") -> LeaseEnding:
    return LeaseEnding(type="lease_ending", user_id="alice", instance_id=iid, reason="idle",
                       ends_at=at(NOW + 300), sent_at=at(NOW))


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"status": "alive", "lastHeartbeat": 1800000000123}', 1800000000.123),
    (b'{"status": "expired", "lastHeartbeat": 0}', None),  # nobody used it yet
    (b'{"status": "alive"}', None),  # an older code-server
    (b'{"lastHeartbeat": "soon"}', None),
    (b'{"lastHeartbeat": true}', None),
    (b"<html>", None),
    (b"[1, 2]", None),
])
def test_code_servers_last_heartbeat_is_the_users_last_activity(body: bytes,
                                                                 expected: float | None) -> None:
    assert last_activity(body) == expected


def test_the_fake_code_server_reports_the_activity_a_test_sets() -> None:
    with FakeCodeServer() as cs:
        assert probe(cs.url, 2).last_activity is None  # never used
        cs.touch(NOW)
        got = probe(cs.url, 2)
        assert got.healthy and got.last_activity == NOW
        cs.active = True
        assert abs((probe(cs.url, 2).last_activity or 0) - time.time()) < 2
        cs.healthy = False
        assert probe(cs.url, 2).last_activity is None  # unhealthy: nothing to say


def test_a_v1_heartbeat_without_last_activity_still_decodes() -> None:
    v1 = decode(Heartbeat, b'{"type": "heartbeat", "instance_id": "i-0abc", "healthy": true,'
                           b' "sent_at": "2026-11-28T10:00:00Z"}')
    assert v1.last_activity is None
    v2 = decode(Heartbeat, json.dumps({"type": "heartbeat", "instance_id": "i-0abc",
                                       "healthy": True, "sent_at": None,
                                       "last_activity": "2026-11-28T09:58:00Z"}).encode())
    assert v2.last_activity is not None and v2.last_activity.tzinfo is not None


class Delivered:
    def __init__(self) -> None:
        self.acked = 0

    def ack(self) -> None:
        self.acked += 1


def fake_wall(tmp_path: Path) -> tuple[str, Path]:
    """A wall stand-in that appends what it reads to a file."""
    log = tmp_path / "wall.log"
    script = tmp_path / "wall.py"
    script.write_text(f"import sys\nopen({str(log)!r}, 'a').write(sys.stdin.read())\n")
    return f"{sys.executable} {script}", log


def test_a_notice_writes_the_notice_file_and_runs_the_wall_command(tmp_path: Path) -> None:
    wall, log = fake_wall(tmp_path)
    notice_file = tmp_path / "home" / "WORKERPOOL-NOTICE.txt"
    notice_file.parent.mkdir()
    notices = Notices(instance_id="i-0abc", wall_command=wall, notice_file=str(notice_file))
    d = Delivered()
    notices.handle(d, Notice(type="notice", command_id="c" * 16, event=ending(),
                             sent_at=at(NOW)))  # type: ignore[arg-type]
    assert d.acked == 1
    text = notice_file.read_text()
    assert text.startswith("workerpool: i-0abc (alice) has been idle")
    assert "ends_at: 2027-01-15T08:05:00Z" in text and "reason: idle" in text
    assert stat.S_IMODE(notice_file.stat().st_mode) == 0o644  # the user reads it
    assert log.read_text() == text.splitlines()[0] + "\n"  # one line, on standard input


def test_a_notice_file_behind_a_symlink_is_replaced_where_it_points(tmp_path: Path) -> None:
    real = tmp_path / "run" / "notice.txt"
    real.parent.mkdir()
    link = tmp_path / "WORKERPOOL-NOTICE.txt"
    os.symlink(real, link)
    assert Notices(instance_id="i-0abc", wall_command="", notice_file=str(link)).show(
        ending()) == []
    assert link.is_symlink() and real.read_text() == notice_text(ending())


def test_a_failing_wall_or_file_is_reported_and_a_notice_for_another_vm_ignored(
        tmp_path: Path) -> None:
    notices = Notices(instance_id="i-0abc", wall_command=f"{sys.executable} -c 'exit(3)'",
                      notice_file=str(tmp_path / "missing" / "notice.txt"))
    problems = notices.show(ending())
    assert len(problems) == 2 and "exited 3" in problems[1]
    assert run_wall("/nonexistent/wall", "x") is not None
    wall, log = fake_wall(tmp_path)
    other = Notices(instance_id="i-0abc", wall_command=wall, notice_file="")
    other.handle(Delivered(), Notice(type="notice", command_id="c" * 16,  # type: ignore[arg-type]
                                     event=ending("i-0other"), sent_at=at(NOW)))
    assert not log.exists()


def test_the_agents_notice_settings_default_to_wall_and_the_ubuntu_home() -> None:
    s = parse_settings(amqp_url="amqp://guest:guest@localhost:5672/x")
    assert (s.agent_wall_command, s.agent_notice_file) == (
        "wall", "/home/ubuntu/WORKERPOOL-NOTICE.txt")
    assert (s.idle_seconds, s.warn_before_seconds) == (0, 300)
    off = parse_settings(amqp_url="amqp://guest:guest@localhost:5672/x", agent_wall_command="",
                         agent_notice_file="")
    assert Notices(instance_id="i-1", wall_command=off.agent_wall_command,
                   notice_file=off.agent_notice_file).show(ending("i-1")) == []
