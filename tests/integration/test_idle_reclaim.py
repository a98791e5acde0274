"""Idle reclaim and warnings (issue 17, parts 1 and 2) on the real broker and moto: the
reaper's pass in-process with an explicit clock, the events it publishes on
``workerpool.events`` and the ``notice`` commands it sends to agents, read back from the
broker; and a real dispatcher storing the activity that heartbeats carry (v1 ones too)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from reaper.actions import DONE, LOST
from reaper.ending import ExpireIdle, Notify
from reaper.loop import Reaper
from reaper.metrics import ReaperMetrics
from reaper.notify import Notifier
from reaper.rules import Expire
from shared import topology
from shared.asg import Asg
from shared.broker import Publisher
from shared.config import Settings
from shared.errors import BrokerUnavailable, ConditionFailed
from shared.messages import Heartbeat, LeaseEnding, decode
from shared.messages.events import at
from shared.queues import command_queue
from shared.store import Store
from tests.helpers import wait_for
from tests.integration.test_dispatcher_support import (
    Client,
    launch,
    publish_agent,
    register_workers,
    start_dispatchers,
    stop_all,
)

HOUR = 3600


class Tap:
    """What reaches the broker: events bound by ``user.#``, and one agent's commands."""

    def __init__(self, url: str, instance_id: str | None = None) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.events_q = self.ch.queue_declare("", exclusive=True).method.queue
        self.ch.queue_bind(self.events_q, topology.EVENTS_EXCHANGE, routing_key="user.#")
        self.commands_q = None
        if instance_id:  # as the agent would: its own exclusive command queue
            self.commands_q = command_queue(instance_id)
            self.ch.queue_declare(self.commands_q, exclusive=True, auto_delete=True)

    def _drain(self, queue: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        while True:
            method, _, body = self.ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((method.routing_key, json.loads(body)))

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        return self._drain(self.events_q)

    def commands(self) -> list[dict[str, Any]]:
        assert self.commands_q is not None
        return [body for _, body in self._drain(self.commands_q)]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def rig(pool: Settings) -> Iterator[dict[str, Any]]:
    store, asg = Store.from_settings(pool), Asg.from_settings(pool)
    asg.set_desired(2)
    iid, other = sorted(asg.describe().live_ids)
    t0 = float(int(time.time()))
    for i in (iid, other):
        store.workers.register(i, now=t0, private_ip="10.0.0.1", public_ip=None)
    w = store.workers.get(iid)
    assert w is not None
    store.leases.grant(w, user_id="alice", request_id="r-1", lease_seconds=HOUR, now=t0,
                       max_leases=5, remember_seconds=86400)
    tap = Tap(pool.amqp_url, iid)
    publisher = Publisher(pool.amqp_url, "reaper@tests", give_up_after=2)
    yield {"store": store, "asg": asg, "iid": iid, "other": other, "t0": t0, "tap": tap,
           "publisher": publisher}
    publisher.close()
    tap.close()


def reaper(settings: Settings, rig: dict[str, Any], publisher: Any = None, **update: Any
           ) -> Reaper:
    s = settings.model_copy(update={"warn_before_seconds": 300, **update})
    metrics = ReaperMetrics()
    notifier = Notifier(publisher=publisher or rig["publisher"], metrics=metrics)
    return Reaper(store=rig["store"], asg=rig["asg"], settings=s, notifier=notifier,
                  metrics=metrics)


def alive(rig: dict[str, Any], now: float, activity: float | None = None) -> None:
    """Both workers heartbeat at ``now`` (only the rules under test are in play)."""
    for i in (rig["iid"], rig["other"]):
        rig["store"].workers.heartbeat(i, healthy=True, now=now,
                                       last_activity=activity if i == rig["iid"] else None)


def kinds(outcomes: list) -> list[tuple[str, str]]:
    return [(type(a).__name__, o) for a, o in outcomes]


def test_an_idle_lease_is_warned_then_reclaimed_after_idle_seconds(pool: Settings,
                                                                    rig: dict[str, Any]) -> None:
    store, iid, t0, tap = rig["store"], rig["iid"], rig["t0"], rig["tap"]
    alive(rig, t0 + 10, activity=t0 + 10)  # the user's last activity
    r = reaper(pool, rig, idle_seconds=600)
    alive(rig, t0 + 100)  # heartbeats without activity leave it as it was
    assert kinds(r.run_pass(now=t0 + 100)) == []  # far from the idle end (t0 + 610)
    alive(rig, t0 + 320)
    assert kinds(r.run_pass(now=t0 + 320)) == [("Notify", DONE)]
    ((key, ending),) = tap.events()
    assert key == "user.alice" and ending["type"] == "lease_ending"
    assert ending["reason"] == "idle" and ending["ends_at"] == at(t0 + 610).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    (notice,) = tap.commands()  # the agent is told too, from the services' user
    assert notice["type"] == "notice" and notice["event"] == ending
    alive(rig, t0 + 611)
    outcomes = r.run_pass(now=t0 + 611)
    assert kinds(outcomes) == [("ExpireIdle", DONE), ("Recycle", DONE)]
    ((_, ended),) = tap.events()
    assert (ended["type"], ended["reason"]) == ("lease_ended", "idle")
    assert store.workers.get(iid) is None and store.leases.held_by("alice") == []
    assert iid not in rig["asg"].describe().live_ids
    assert r.metrics.leases_idle._value.get() == 1


def test_activity_that_lands_before_the_reclaim_wins(pool: Settings,
                                                     rig: dict[str, Any]) -> None:
    store, iid, t0 = rig["store"], rig["iid"], rig["t0"]
    alive(rig, t0 + 10, activity=t0 + 10)
    r = reaper(pool, rig, idle_seconds=600)
    real = r.actions.clocks.expire_idle

    def used_meanwhile(clock: Any, *, now: float) -> Any:  # the user typed a moment ago
        store.workers.heartbeat(iid, healthy=True, now=now, last_activity=now - 1)
        return real(clock, now=now)

    r.actions.clocks.expire_idle = used_meanwhile  # type: ignore[method-assign]
    alive(rig, t0 + 700)
    assert kinds(r.run_pass(now=t0 + 700)) == [("ExpireIdle", LOST)]
    item = store.workers.get(iid)
    assert item is not None and item.status == "leased"
    r.actions.clocks.expire_idle = real  # type: ignore[method-assign]
    assert kinds(r.run_pass(now=t0 + 701)) == []  # idle since t0 + 699 now: nothing to do


def test_a_renew_before_the_reclaim_wins_and_idle_seconds_0_reclaims_nothing(
        pool: Settings, rig: dict[str, Any]) -> None:
    store, iid, t0 = rig["store"], rig["iid"], rig["t0"]
    alive(rig, t0 + 1000, activity=t0 + 1)
    assert kinds(reaper(pool, rig, idle_seconds=0).run_pass(now=t0 + 1000)) == []
    r = reaper(pool, rig, idle_seconds=600)
    snapshot = r.read(t0 + 1000, sweep=False)
    (clock,) = [c for c in snapshot.leases if c.worker.instance_id == iid]
    store.leases.renew(iid, user_id="alice", lease_seconds=HOUR, now=t0 + 999)
    with pytest.raises(ConditionFailed):  # the pass read the lease before the renew
        r.clocks.expire_idle(clock, now=t0 + 1000)
    assert kinds(r.run_pass(now=t0 + 1000)) == []  # a renew is a sign of life
    assert [w.instance_id for w in store.leases.held_by("alice")] == [iid]


def test_an_expiry_warning_is_sent_once_whatever_the_reapers_and_a_renew_says_extended(
        pool: Settings, rig: dict[str, Any]) -> None:
    store, iid, t0, tap = rig["store"], rig["iid"], rig["t0"], rig["tap"]
    first, second = reaper(pool, rig), reaper(pool, rig)  # two replicas, or a restart
    for t in range(int(t0) + HOUR - 400, int(t0) + HOUR - 250, 10):
        alive(rig, t)
        first.run_pass(now=t)
        second.run_pass(now=t)
    sent = tap.events()
    assert [(e["type"], e["reason"]) for _, e in sent] == [("lease_ending", "expiry")]
    store.leases.renew(iid, user_id="alice", lease_seconds=HOUR, now=t0 + HOUR - 250)
    alive(rig, t0 + HOUR - 240)
    first._next_sweep = 0.0  # a sweep pass: warnings alone read every lease only then
    outcomes = first.run_pass(now=t0 + HOUR - 240)
    assert ("Notify", DONE) in kinds(outcomes)
    ((_, extended),) = tap.events()
    assert extended["type"] == "lease_extended" and extended["reason"] == "expiry"
    assert extended["previous_ends_at"] == at(t0 + HOUR).strftime("%Y-%m-%dT%H:%M:%SZ")
    second._next_sweep = 0.0
    assert [a for a, _ in second.run_pass(now=t0 + HOUR - 230)] == []  # said once
    assert tap.events() == []


def test_an_expired_lease_is_announced_as_ended(pool: Settings, rig: dict[str, Any]) -> None:
    t0, tap = rig["t0"], rig["tap"]
    alive(rig, t0 + HOUR + 1)
    outcomes = reaper(pool, rig).run_pass(now=t0 + HOUR + 1)
    assert [type(a) for a, _ in outcomes][:1] == [Expire]
    ((key, ended),) = tap.events()
    assert key == "user.alice" and (ended["type"], ended["reason"]) == ("lease_ended", "expiry")


class Down:
    """A publisher whose broker is away for the first ``n`` publishes."""

    def __init__(self, real: Publisher, n: int) -> None:
        self.real, self.n = real, n

    def publish(self, *args: Any, **kwargs: Any) -> None:
        if self.n > 0:
            self.n -= 1
            raise BrokerUnavailable("broker away")
        self.real.publish(*args, **kwargs)


def test_a_warning_the_broker_did_not_take_is_sent_next_pass(pool: Settings,
                                                             rig: dict[str, Any]) -> None:
    store, iid, t0, tap = rig["store"], rig["iid"], rig["t0"], rig["tap"]
    r = reaper(pool, rig, publisher=Down(rig["publisher"], 1))
    alive(rig, t0 + HOUR - 100)
    assert kinds(r.run_pass(now=t0 + HOUR - 100)) == [("Notify", "failed")]
    assert tap.events() == [] and r.metrics.notices_failed._value.get() == 1
    clock = store.workers.lease_clock(iid)
    assert clock is not None and clock.notice is None  # forgotten, to be sent again
    assert kinds(r.run_pass(now=t0 + HOUR - 95)) == [("Notify", DONE)]
    assert [e["type"] for _, e in tap.events()] == ["lease_ending"]


def test_a_dispatcher_keeps_the_newest_activity_and_a_v1_heartbeat_still_counts(
        pool: Settings) -> None:
    procs = start_dispatchers(pool)
    client = Client(pool)
    try:
        (iid,) = launch(pool, 1)
        register_workers(pool, [iid])
        store = Store.from_settings(pool)
        v1 = json.dumps({"type": "heartbeat", "instance_id": iid, "healthy": True}).encode()
        publish_agent(pool, [v1])
        wait_for(lambda: (w := store.workers.get(iid)) and w.last_heartbeat > 0, 10)
        assert decode(Heartbeat, v1).last_activity is None
        t = time.time()

        def beat(activity: float) -> bytes:
            return Heartbeat(type="heartbeat", instance_id=iid, healthy=True, sent_at=at(t),
                             last_activity=at(activity)).to_json()

        publish_agent(pool, [beat(t - 30), beat(t - 300)])  # a newer, then an older one
        wait_for(lambda: (c := store.workers.lease_clock(iid)) and c.last_activity == int(t) - 30,
                 10, what="the newer activity stored")
        publish_agent(pool, [v1, beat(t - 600)])  # neither takes the activity back
        time.sleep(1)
        clock = store.workers.lease_clock(iid)
        assert clock is not None and clock.last_activity == int(t) - 30
        reply = client.claim("dora", lease_seconds=600)
        assert reply["status"] == "assigned", reply
        time.sleep(2.5)  # idle since the lease began: the activity before it is not hers
        (lease,) = client.lease("status", "dora", iid)["leases"]
        assert lease["instance_id"] == iid and 2 <= lease["idle_seconds"] <= 6
        t = time.time()
        publish_agent(pool, [beat(t)])
        wait_for(lambda: client.lease("status", "dora", iid)["leases"][0]["idle_seconds"] <= 1,
                 10, interval=0.3, what="idle time back to zero after activity")
    finally:
        client.close()
        stop_all(procs)


def test_the_event_models_read_what_the_reaper_sends() -> None:
    e = LeaseEnding(type="lease_ending", user_id="a", instance_id="i-1", reason="expiry",
                    ends_at=at(1), sent_at=at(0))
    assert json.loads(e.to_json())["ends_at"] == "1970-01-01T00:00:01Z"
    assert ExpireIdle and Notify  # the actions the tests above see by name
