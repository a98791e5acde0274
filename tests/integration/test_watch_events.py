"""``workerpool watch`` on the real broker: it prints the events the reaper publishes for its
user (plain lines on a pipe, JSON with --json), nobody else's; and the deploy's client
permissions let a client bind a queue of its own to ``workerpool.events`` for its own
routing key only (deploy/rabbitmq/definitions.json, imported as the permission tests do)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pika
import pika.exceptions as pe
import pytest

from reaper.metrics import ReaperMetrics
from reaper.notify import Notifier
from shared import topology
from shared.broker import Publisher
from shared.client_args import CliError
from shared.client_watch import EventFeed, plain_line
from shared.config import Settings
from shared.messages import LeaseEnding, LeaseExtended, UserEvent, decode
from shared.messages.events import at
from tests.helpers import wait_for
from tests.integration.test_cli_support import cli_env, start
from tests.integration.test_deploy_rabbitmq_permissions import channel, refused, role_urls

__all__ = ["role_urls"]  # the fixture, shared with the permission tests

NOW = time.time()


def ending(user: str, iid: str = "i-0abc") -> LeaseEnding:
    return LeaseEnding(type="lease_ending", user_id=user, instance_id=iid, reason="idle",
                       ends_at=at(NOW + 300), sent_at=at(NOW))


def watching(proc: subprocess.Popen[str]) -> str:
    """Wait for the watch to say it is bound (its first stderr line)."""
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "watching the events of" in line, line
    return line


def test_watch_prints_the_users_events_as_plain_lines_and_nobody_elses(
        clean_queues: str, pool_settings: Settings, tmp_path: Path) -> None:
    env = cli_env(pool_settings, tmp_path)
    proc = start(env, "watch", "--user", "erin", "--count", "2")
    try:
        watching(proc)
        pub = Publisher(clean_queues, "reaper@tests")
        notifier = Notifier(publisher=pub, metrics=ReaperMetrics())
        assert notifier.send(ending("frank"))  # someone else's: not shown
        assert notifier.send(ending("erin"))
        extended = LeaseExtended(type="lease_extended", user_id="erin", instance_id="i-0abc",
                                 reason="expiry", ends_at=at(NOW + 3600), sent_at=at(NOW),
                                 previous_ends_at=at(NOW + 300))
        assert notifier.send(extended)
        out, err = proc.communicate(timeout=20)
        pub.close()
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines() == [plain_line(ending("erin")), plain_line(extended)]
    assert "frank" not in out and "Traceback" not in err
    assert "lease_ending i-0abc: workerpool: i-0abc (erin) has been idle" in out


def test_watch_json_prints_each_event_as_sent(clean_queues: str, pool_settings: Settings,
                                              tmp_path: Path) -> None:
    proc = start(cli_env(pool_settings, tmp_path), "watch", "-u", "gus", "--json",
                 "--count", "1")
    try:
        watching(proc)
        pub = Publisher(clean_queues, "reaper@tests")
        Notifier(publisher=pub, metrics=ReaperMetrics()).send(ending("gus"))
        out, _ = proc.communicate(timeout=20)
        pub.close()
    finally:
        proc.kill()
    assert decode(UserEvent, out.strip().encode()) == ending("gus")


def test_watch_says_when_the_broker_is_unreachable(pool_settings: Settings,
                                                   tmp_path: Path) -> None:
    env = cli_env(pool_settings, tmp_path, AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2F")
    proc = start(env, "watch", "-u", "hal")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3 and "workerpool watch:" in err and "Traceback" not in err


@pytest.fixture
def pool_settings(clean_queues: str) -> Settings:
    from shared.config import parse_settings

    return parse_settings(amqp_url=clean_queues)


# --- the deploy's permissions ------------------------------------------------------------
def client_user(url: str) -> str:
    return pika.URLParameters(url).credentials.username  # type: ignore[no-any-return]


def test_a_client_may_watch_its_own_events_and_no_one_elses(role_urls: dict[str, str],
                                                            clean_queues: str) -> None:
    url = role_urls["workerpool-client"]
    me = client_user(url)
    feed = EventFeed(url, me)  # declares amq.gen-…, binds user.<me>, consumes
    try:
        pub = Publisher(role_urls["workerpool-service"], "reaper@tests")
        Notifier(publisher=pub, metrics=ReaperMetrics()).send(ending(me))
        pub.close()
        got = wait_for(lambda: feed.pump(0.2), 10, what="the event")
        assert [json.loads(b)["user_id"] for b in got] == [me]
    finally:
        feed.close()
    with pytest.raises(CliError, match="does not let you watch user.alice"):
        EventFeed(url, "alice")
    for key in ("user.#", "user.*", "#"):  # wildcards are someone else's events too
        conn, ch = channel(url)
        q = ch.queue_declare("", exclusive=True).method.queue  # type: ignore[attr-defined]
        text = refused(lambda: ch.queue_bind(q, topology.EVENTS_EXCHANGE,  # type: ignore[attr-defined]  # noqa: B023
                                             routing_key=key))
        assert "topic" in text or "access" in text.lower()
        conn.close()


def test_a_client_still_cannot_declare_named_queues_or_read_the_services(
        role_urls: dict[str, str]) -> None:
    for attempt in (lambda c: c.queue_declare("workerpool.mine"),
                    lambda c: c.queue_declare("workerpool.claims.waiting", passive=False),
                    lambda c: c.basic_get(topology.AGENTS),
                    lambda c: c.queue_bind(topology.CLAIMS, topology.EVENTS_EXCHANGE,
                                           routing_key="user.x")):
        conn, ch = channel(role_urls["workerpool-client"])
        with pytest.raises(pe.ChannelClosedByBroker) as exc:
            attempt(ch)
        assert exc.value.reply_code in (403, 406)
        conn.close()
