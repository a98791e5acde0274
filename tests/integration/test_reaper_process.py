"""`python -m reaper` as real processes against moto and the real broker (our vhost)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from shared.config import Settings
from shared.errors import ConditionFailed
from shared.store import Store
from tests.conftest import env_for
from tests.helpers import Proc, wait_for
from tests.integration.test_reaper_apply import adapters, launch, lease, register

FAST = {"REAP_INTERVAL": 0.2, "HEARTBEAT_INTERVAL": 0.5, "BOOT_TIMEOUT_SECONDS": 2,
        "LOCK_TTL_SECONDS": 2, "ORPHAN_SWEEP_INTERVAL": 1}


class Agents:
    """Heartbeats for some instances from a thread, as their agents would send them."""

    def __init__(self, store: Store, ids: list[str], interval: float = 0.2) -> None:
        self.store, self.ids, self.interval = store, list(ids), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for iid in list(self.ids):
                try:
                    self.store.workers.heartbeat(iid, healthy=True, now=time.time())
                except ConditionFailed:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def start(procs: list[Proc], pool: Settings, name: str = "reaper", **extra: Any) -> Proc:
    p = Proc("reaper", env_for(pool, **{**FAST, **extra}), name=name)
    procs.append(p)
    p.wait_ready()
    return p


def metric(p: Proc, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{p.health_port}/metrics", timeout=5)
    for line in body.read().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_an_expired_lease_gets_its_instance_terminated_desired_lowered_and_item_removed(
        pool: Settings, procs: list[Proc]) -> None:
    store, asg = adapters(pool)
    leased_id, free_id = launch(asg, 2)
    now = time.time()
    register(store, leased_id, now)
    register(store, free_id, now)
    agents = Agents(store, [leased_id, free_id])
    lease(store, leased_id, "alice", now=now, seconds=2)
    reaper = start(procs, pool)
    wait_for(lambda: store.workers.get(leased_id) is None, 8, what="the expired worker's item removed")
    agents.stop()
    state = asg.describe()
    assert [i.instance_id for i in state.instances] == [free_id]
    assert state.desired == 1
    assert store.workers.get(free_id) is not None and store.workers.get(free_id).status == "free"  # type: ignore[union-attr]
    (expired,) = reaper.events("lease_expired")
    assert expired["instance_id"] == leased_id and expired["user_id"] == "alice"
    assert metric(reaper, "workerpool_leases_expired_total") == 1
    assert metric(reaper, "workerpool_recycled_total") == 1
    assert store.leases.held_by("alice") == []


def test_a_leased_worker_whose_heartbeats_stop_is_reclaimed_and_reported(
        pool: Settings, procs: list[Proc]) -> None:
    store, asg = adapters(pool)
    silent_id, alive_id = launch(asg, 2)
    now = time.time()
    register(store, silent_id, now)
    register(store, alive_id, now)
    lease(store, silent_id, "bob", now=now, seconds=3600)
    agents = Agents(store, [alive_id])  # silent_id's agent never heartbeats again
    reaper = start(procs, pool)
    wait_for(lambda: store.workers.get(silent_id) is None, 8, what="the dead worker's item removed")
    agents.stop()
    assert [i.instance_id for i in asg.describe().instances] == [alive_id]
    assert asg.describe().desired == 1
    (lost,) = reaper.events("leased_worker_lost")
    assert lost["level"] == "warning" and lost["user_id"] == "bob"
    assert metric(reaper, "workerpool_workers_dead_total") == 1
    assert metric(reaper, "workerpool_leased_workers_lost_total") == 1


def test_an_instance_that_never_registers_is_replaced_after_boot_timeout(
        pool: Settings, procs: list[Proc]) -> None:
    store, asg = adapters(pool)
    (silent,) = launch(asg, 1)
    reaper = start(procs, pool)
    wait_for(lambda: reaper.events("tracking_booting"), 5, what="the instance tracked")
    wait_for(lambda: silent not in {i.instance_id for i in asg.describe().instances}, 8,
             what="the never-booted instance terminated")
    # not before BOOT_TIMEOUT_SECONDS, on the reaper's own clock (the test's polling lags)
    wait_for(lambda: reaper.events("boot_timed_out"), 5, what="the boot timeout logged")
    assert reaper.events("boot_timed_out")[0]["booting_seconds"] >= 2
    state = asg.describe()
    assert state.desired == 1 and len(state.instances) == 1  # a replacement, same desired
    replacement = state.instances[0].instance_id
    wait_for(lambda: store.workers.get(replacement) is not None, 5, what="the replacement tracked")
    assert store.workers.get(silent) is None
    assert reaper.events("boot_timed_out")[0]["instance_id"] == silent
    assert metric(reaper, "workerpool_boots_timed_out_total") >= 1


def test_a_renew_never_loses_to_the_reaper_and_a_reclaimed_lease_cannot_be_renewed(
        pool: Settings, procs: list[Proc]) -> None:
    store, asg = adapters(pool)
    (iid,) = launch(asg, 1)
    register(store, iid, time.time())
    agents = Agents(store, [iid])
    lease(store, iid, "dora", now=time.time(), seconds=60)  # outlives the process start
    start(procs, pool, REAP_INTERVAL=0.05)
    until = time.time() + 3
    while time.time() < until:  # renewing every 0.1 s keeps a 2 s lease alive throughout
        store.leases.renew(iid, user_id="dora", lease_seconds=2, now=time.time())
        time.sleep(0.1)
    wait_for(lambda: store.workers.get(iid) is None, 6, what="the lease reclaimed once renews stop")
    with pytest.raises(ConditionFailed):
        store.leases.renew(iid, user_id="dora", lease_seconds=2, now=time.time())
    agents.stop()
    assert store.leases.held_by("dora") == [] and asg.describe().instances == ()


def test_a_reaper_killed_mid_pass_and_restarted_reaches_the_same_end_state(
        pool: Settings, procs: list[Proc]) -> None:
    store, asg = adapters(pool)
    ids = launch(asg, 12)
    doomed, healthy = ids[:10], ids[10:]
    now = time.time()
    for iid in ids:
        register(store, iid, now)
    for iid in doomed:
        lease(store, iid, f"u-{iid}", now=now - 100, seconds=10)
    agents = Agents(store, ids)
    first = start(procs, pool)
    wait_for(lambda: first.events("lease_expired"), 8, interval=0.002, what="a first action")
    first.kill()  # SIGKILL: no chance to finish the pass or resign the lock
    reclaimed = sum(1 for iid in doomed if store.workers.get(iid) is None)
    second = start(procs, pool, name="restarted")
    wait_for(lambda: all(store.workers.get(iid) is None for iid in doomed), 10,
             what="every expired worker reclaimed after the restart")
    agents.stop()
    state = asg.describe()
    assert sorted(i.instance_id for i in state.instances) == healthy
    assert state.desired == 2  # each reclaimed instance decremented exactly once
    assert {w.instance_id: w.status for w in store.workers.all()} == dict.fromkeys(healthy,
                                                                                   "free")
    assert reclaimed < len(doomed)  # the kill did land mid-pass
    assert second.events("active")


def test_of_two_reapers_only_one_acts_and_the_other_takes_over_when_it_stops(
        pool: Settings, procs: list[Proc]) -> None:
    store, asg = adapters(pool)
    ids = launch(asg, 4)
    now = time.time()
    for iid in ids:
        register(store, iid, now)
    agents = Agents(store, ids)
    # a long lock lease: on a loaded machine a stalled pass must not let the standby in
    # (that would be safe, but this test checks that only one acts); a clean stop resigns.
    a = start(procs, pool, name="a", LOCK_TTL_SECONDS=30)
    b = start(procs, pool, name="b", LOCK_TTL_SECONDS=30)
    for iid in ids[:2]:
        lease(store, iid, f"u-{iid}", now=now - 100, seconds=10)
    wait_for(lambda: all(store.workers.get(i) is None for i in ids[:2]), 8, what="first reclaim")
    active, standby = (a, b) if a.events("active") else (b, a)
    assert not standby.events("active")
    assert len(active.events("recycled")) == 2 and not standby.events("recycled")
    assert active.stop() == 0  # a clean stop resigns the lock: the standby takes over
    lease(store, ids[2], "erin", now=now - 100, seconds=10)
    wait_for(lambda: store.workers.get(ids[2]) is None, 8, what="reclaim by the former standby")
    agents.stop()
    assert [e["instance_id"] for e in standby.events("recycled")] == [ids[2]]
    assert asg.describe().desired == 1


def test_a_bad_variable_stops_the_reaper_with_one_line_naming_it(pool: Settings) -> None:
    p = Proc("reaper", env_for(pool, REAP_INTERVAL="-1"))
    assert p.popen.wait(20) == 2
    assert len(p.raw) == 1 and "REAP_INTERVAL" in p.raw[0]


def test_health_is_200_with_broker_and_aws_and_503_without_the_broker(
        pool: Settings, procs: list[Proc]) -> None:
    good = start(procs, pool)
    body = json.loads(urllib.request.urlopen(
        f"http://127.0.0.1:{good.health_port}/health", timeout=5).read())
    assert body["checks"]["aws"]["ok"] and body["checks"]["broker"]["ok"]
    bad = start(procs, pool, name="no-broker",
                AMQP_URL="amqp://guest:guest@127.0.0.1:1/reaper")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{bad.health_port}/health", timeout=10)
    assert err.value.code == 503
    assert json.loads(err.value.read())["checks"]["broker"]["ok"] is False
    started = time.monotonic()
    assert good.stop() == 0 and bad.stop() == 0
    assert time.monotonic() - started < 10
