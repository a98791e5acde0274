"""When the fleet or our own replicas misbehave (issue 14, items 6–8): an instance put in
Standby or detached never comes back as a free worker with the last user's disk, an
unhealthy free worker is replaced after its grace, and a scaler or reaper that lost its lock
makes no mutating AWS call."""

from __future__ import annotations

import time

import pytest

from shared import topology
from shared.asg import Asg
from shared.broker import Broker
from shared.errors import LockLost
from shared.leader import Leadership
from tests.faults.rig import Heartbeats, Rig
from tests.helpers import wait_for
from tests.integration.test_dispatcher_support import Client, register_msg, register_workers

pytestmark = pytest.mark.timeout(120)

REAPER = dict(REAP_INTERVAL=0.2, LOCK_TTL_SECONDS=2, ORPHAN_SWEEP_INTERVAL=1,
              HEARTBEAT_INTERVAL=0.5, HEARTBEAT_TIMEOUT=30)


@pytest.mark.parametrize("how", ["standby", "detach"])
def test_a_leased_instance_that_leaves_the_group_is_tombstoned_and_never_free_again(
        rig: Rig, how: str) -> None:
    d = rig.start("dispatcher", HEARTBEAT_TIMEOUT=30)
    ids = rig.launch(2)
    register_workers(rig.settings, ids)
    client = Client(rig.settings)
    try:
        iid = client.claim("alice", "r-1")["worker"]["instance_id"]
    finally:
        client.close()
    rig.start("reaper", **REAPER)
    api = rig.asg.api
    if how == "standby":
        api.enter_standby(AutoScalingGroupName=rig.settings.asg_name, InstanceIds=[iid],
                          ShouldDecrementDesiredCapacity=True)
    else:
        api.detach_instances(AutoScalingGroupName=rig.settings.asg_name, InstanceIds=[iid],
                             ShouldDecrementDesiredCapacity=True)
    store = rig.store
    wait_for(lambda: store.workers.get(iid) is None, 15, interval=0.2,
             what="the leased orphan retired and recycled")
    assert store.leases.held_by("alice") == []

    if how == "standby":  # back in service, its agent registers it again: refused
        api.exit_standby(AutoScalingGroupName=rig.settings.asg_name, InstanceIds=[iid])
    broker = Broker(rig.settings.amqp_url, "tests")
    broker.publish(topology.AGENTS, register_msg(iid))
    broker.close()
    wait_for(lambda: any(l.get("instance_id") == iid and l.get("msg") in (
        "registration of a draining or dead worker ignored", "message refused")
        or (l.get("instance_id") == iid and "refused" in str(l.get("msg"))) for l in d.lines),
        10, what="the registration refused")
    time.sleep(0.5)
    w = store.workers.get(iid)
    assert w is None or w.status not in ("free", "leased"), w


def test_an_unhealthy_free_worker_is_replaced_after_its_grace(rig: Rig) -> None:
    ids = rig.launch(2)
    rig.start("dispatcher", HEARTBEAT_TIMEOUT=30, HEARTBEAT_INTERVAL=0.5)
    register_workers(rig.settings, ids)
    sick, well = ids
    beats = Heartbeats(rig.settings, ids, interval=0.3)
    beats.unhealthy.add(sick)
    try:
        rig.start("reaper", UNHEALTHY_GRACE_SECONDS=2, **REAPER)
        store = rig.store
        wait_for(lambda: (w := store.workers.get(sick)) is not None and not w.healthy, 5,
                 what="the worker reported unhealthy")
        started = time.monotonic()
        wait_for(lambda: sick not in rig.asg.describe().live_ids, 20, interval=0.2,
                 what="the unhealthy worker's instance terminated")
        assert time.monotonic() - started >= 1.0  # not before its grace
        state = rig.asg.describe()
        assert state.desired == 2  # replaced, not shrunk: at MaxSize it must come back
        w = store.workers.get(well)
        assert w is not None and w.status == "free" and well in state.live_ids
    finally:
        beats.stop()


def test_a_replica_that_lost_its_lock_makes_no_mutating_aws_call(rig: Rig) -> None:
    clock = [time.time()]
    store = rig.store
    a = Leadership(store, name="scaler", owner="scaler-a", ttl=2, clock=lambda: clock[0])
    b = Leadership(store, name="scaler", owner="scaler-b", ttl=2, clock=lambda: clock[0])
    asg_a = Asg.from_settings(rig.settings, fence=a.fence)
    asg_b = Asg.from_settings(rig.settings, fence=b.fence)
    assert a.refresh(clock[0]) and not b.refresh(clock[0])
    asg_a.set_desired(1)  # held and confirmed: the call goes out
    assert rig.asg.describe().desired == 1

    clock[0] += 3  # a paused or slowed: its lease runs out and b takes over
    assert b.refresh(clock[0])
    with pytest.raises(LockLost):
        asg_a.set_desired(5)  # stale: never sent
    assert rig.asg.describe().desired == 1 and not a.active
    asg_b.set_desired(2)
    assert rig.asg.describe().desired == 2
    assert not a.refresh(clock[0])  # and a stays a standby while b renews
