"""The scaler as a real process (`python -m scaler`) against moto and the real broker.

AWS calls are counted from the process's own record (WORKERPOOL_RECORD_AWS_CALLS), so
"one call" means one SetDesiredCapacity the scaler really made.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from shared import topology
from shared.asg import Asg
from shared.bootstrap import bootstrap
from shared.broker import Broker, connect, declare_topology, properties
from shared.broker.connection import broker_user
from shared.config import Settings
from shared.messages import CapacityStatus, LeasedEvent, ShortageEvent, decode, now_sent_at
from shared.store import Store
from tests.conftest import env_for
from tests.helpers import Proc, wait_for

pytestmark = pytest.mark.timeout(60)

FAST = dict(RECONCILE_INTERVAL=0.2, LOCK_TTL_SECONDS=1.5, COOLDOWN_SECONDS=30,
            HEARTBEAT_INTERVAL=0.5, LOG_LEVEL="INFO")


def asg_of(s: Settings) -> Asg:
    return Asg.from_settings(s)


def store_of(s: Settings) -> Store:
    return Store.from_settings(s)


def calls(path: Path, op: str = "autoscaling:SetDesiredCapacity") -> int:
    return path.read_text().splitlines().count(op) if path.exists() else 0


def start(s: Settings, tmp: Path, name: str = "scaler", **extra: Any) -> tuple[Proc, Path]:
    record = tmp / f"{name}-aws-calls.txt"
    proc = Proc("scaler", env_for(s, **{**FAST, **extra}, WORKERPOOL_RECORD_AWS_CALLS=record),
                name=name)
    proc.wait_ready()
    return proc, record


def desired(s: Settings) -> int:
    return asg_of(s).describe().desired


def seconds_between(earlier: dict[str, Any], later: dict[str, Any]) -> float:
    """Time between two scale decisions, on the scalers' own clocks (the ``decided_at`` of
    their log lines: the ``now`` each cooldown check used)."""
    return float(later["decided_at"]) - float(earlier["decided_at"])


def shortage(waiting: int) -> bytes:
    return ShortageEvent(type="shortage", free=0, waiting=waiting, sent_at=now_sent_at()).to_json()


class CapacityListener:
    """A queue of our own bound to the capacity fanout, as a dispatcher has."""

    def __init__(self, url: str) -> None:
        self.conn = connect(url, "tests-capacity")
        self.ch = self.conn.channel()
        self.ch = declare_topology(self.ch)
        self.queue = self.ch.queue_declare("", exclusive=True).method.queue
        self.ch.queue_bind(self.queue, topology.CAPACITY_EXCHANGE)
        self.got: list[CapacityStatus] = []

    def poll(self) -> list[CapacityStatus]:
        while True:
            method, _props, body = self.ch.basic_get(self.queue, auto_ack=True)
            if method is None:
                return self.got
            self.got.append(decode(CapacityStatus, body))

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def big_pool(settings: Settings, clean_queues: str) -> Settings:
    """Like `pool`, with MaxSize 200 so that a burst of 100 fits."""
    s = settings.model_copy(update={"asg_max_size": 200})
    bootstrap(s)
    return s


def test_the_pool_fills_to_target_on_its_own_and_stops_adding_while_machines_boot(
        pool: Settings, tmp_path: Path) -> None:
    proc, record = start(pool, tmp_path, TARGET_AVAILABLE=2)
    try:
        wait_for(lambda: desired(pool) == 2, 10, what="desired 2")
        time.sleep(1.5)  # ~7 reconciles: the two instances boot (never register here)
        state = asg_of(pool).describe()
        assert state.desired == 2 and len(state.live_ids) == 2
        assert calls(record) == 1
        port = proc.health_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "ok" and body["scaler"]["counts"]["booting"] == 2
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert "workerpool_asg_desired_capacity 2.0" in metrics
        assert "workerpool_scale_calls_total 1.0" in metrics
    finally:
        assert proc.stop() == 0


def test_a_burst_of_100_shortage_events_is_met_by_one_call_with_the_missing_count(
        big_pool: Settings, tmp_path: Path) -> None:
    # an empty pool with no target of its own: nothing called yet, so no cooldown runs
    proc, record = start(big_pool, tmp_path, TARGET_AVAILABLE=0)
    try:
        time.sleep(0.5)
        assert desired(big_pool) == 0 and calls(record) == 0
        conn = connect(big_pool.amqp_url, "tests-burst")
        ch = conn.channel()
        me = broker_user(big_pool.amqp_url)  # as a dispatcher: a service user, proven
        for waiting in range(1, 101):  # one event per claim that had to wait
            ch.basic_publish("", topology.SCALING, shortage(waiting), properties(user_id=me))
        conn.close()
        # the 100 waiting claims are the missing machines
        try:
            wait_for(lambda: desired(big_pool) == 100, 15, what="desired 100")
        except AssertionError:
            print(proc.log_text()); print(desired(big_pool)); raise
        time.sleep(1.0)
        assert calls(record) == 1
        assert desired(big_pool) == 100
    finally:
        assert proc.stop() == 0


def test_the_cooldown_holds_back_a_repeat_call_until_it_ends(pool: Settings,
                                                            tmp_path: Path) -> None:
    proc, record = start(pool, tmp_path, TARGET_AVAILABLE=1, COOLDOWN_SECONDS=3)
    try:
        wait_for(lambda: desired(pool) == 1, 10, what="desired 1")
        # as the reaper recycles a worker: terminate it and decrement desired
        (iid,) = asg_of(pool).describe().live_ids
        assert asg_of(pool).terminate(iid, decrement=True)
        time.sleep(1.0)
        assert desired(pool) == 0 and calls(record) == 1  # within the cooldown: no call
        wait_for(lambda: desired(pool) == 1, 8, what="the replacement after the cooldown")
        assert calls(record) == 2
        # the gap between the two calls, on the scaler's own clock (its log timestamps)
        wait_for(lambda: len(proc.events("scale")) == 2, 5, what="two scale lines")
        assert seconds_between(*proc.events("scale")) >= 3
    finally:
        assert proc.stop() == 0


def test_a_need_beyond_max_size_raises_to_max_size_and_dispatchers_hear_what_is_coming(
        pool: Settings, tmp_path: Path) -> None:
    listener = CapacityListener(pool.amqp_url)
    proc, record = start(pool, tmp_path, TARGET_AVAILABLE=0)  # no earlier call: no cooldown
    try:
        proc.wait_ready()
        Broker(pool.amqp_url, "tests").publish(topology.SCALING, shortage(20))
        wait_for(lambda: desired(pool) == 10, 10, what="desired clamped to MaxSize 10")
        # at MaxSize, launches still work: the dispatchers hear how many machines come
        # (moto launches them inside the call: 10 booting, none registered), and decide
        # themselves which waiting claims those can serve
        told = wait_for(lambda: [c for c in listener.poll() if c.desired == 10], 5,
                        what="a CapacityStatus after the raise")
        assert told[-1].ok and told[-1].max_size == 10
        assert told[-1].free == 0 and told[-1].booting + told[-1].pending == 10
        time.sleep(0.5)
        assert desired(pool) == 10  # never above MaxSize (moto would accept it)
        assert len([line for line in record.read_text().splitlines()
                    if line == "autoscaling:SetDesiredCapacity"]) == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.health_port}/health") as r:
            body = json.load(r)
        # the operator still sees that demand is beyond MaxSize
        assert r.status == 200 and body["scaler"]["capacity_ok"] is False
        assert "MaxSize 10" in body["scaler"]["capacity_reason"]
    finally:
        assert proc.stop() == 0
        listener.close()


def test_a_leased_worker_is_protected_from_scale_in_and_unprotected_when_released(
        pool: Settings, tmp_path: Path) -> None:
    proc, _ = start(pool, tmp_path, TARGET_AVAILABLE=2)
    store, asg = store_of(pool), asg_of(pool)
    try:
        wait_for(lambda: len(asg.describe().live_ids) == 2, 10, what="two instances")
        iid = sorted(asg.describe().live_ids)[0]
        now = time.time()
        worker = store.workers.register(iid, now=now, private_ip="10.0.0.1", public_ip=None)
        store.leases.grant(worker, user_id="alice", request_id="r-1", lease_seconds=60, now=now,
                    max_leases=1, remember_seconds=86400)
        Broker(pool.amqp_url, "tests").publish(topology.SCALING, LeasedEvent(
            type="leased", instance_id=iid, sent_at=now_sent_at()).to_json())

        def protected() -> dict[str, bool]:
            return {i.instance_id: i.protected for i in asg.describe().instances}

        wait_for(lambda: protected()[iid], 5, what="protection set")
        assert not any(p for i, p in protected().items() if i != iid)
        store.leases.release(iid, user_id="alice", now=time.time())
        wait_for(lambda: not protected()[iid], 5, what="protection cleared")
    finally:
        assert proc.stop() == 0


def test_of_two_scalers_only_one_acts_and_the_other_takes_over_with_its_cooldown(
        pool: Settings, tmp_path: Path) -> None:
    a, rec_a = start(pool, tmp_path, "scaler-a", TARGET_AVAILABLE=2, COOLDOWN_SECONDS=6)
    b, rec_b = start(pool, tmp_path, "scaler-b", TARGET_AVAILABLE=2, COOLDOWN_SECONDS=6)
    try:
        wait_for(lambda: desired(pool) == 2, 10, what="desired 2")
        time.sleep(0.5)
        actives = [p for p in (a, b) if p.events("active")]
        assert len(actives) == 1
        active, standby = (a, b) if actives[0] is a else (b, a)
        rec_active, rec_standby = (rec_a, rec_b) if active is a else (rec_b, rec_a)
        assert calls(rec_active) == 1 and calls(rec_standby) == 0
        assert active.stop() == 0  # resigns the lock on the way out
        wait_for(lambda: standby.events("active"), 5, what="the standby taking over")
        Broker(pool.amqp_url, "tests").publish(topology.SCALING, shortage(3))
        wait_for(lambda: desired(pool) == 5, 12, what="the new active scaler acting")
        assert calls(rec_standby) == 1
        # the standby kept its predecessor's cooldown: its raise was decided no sooner than
        # COOLDOWN_SECONDS after the first one
        (first,) = active.events("scale")
        (second,) = wait_for(lambda: standby.events("scale"), 5, what="the standby's raise")
        assert seconds_between(first, second) >= 6 - 0.001, standby.log_text()  # ms in the table
    finally:
        for p in (a, b):
            if p.popen.poll() is None:
                assert p.stop() == 0
