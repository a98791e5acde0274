"""Memory of capacity errors, on the real broker and the simulated fleet: t3.medium lacks
capacity in the group's zone; the scaler opens a circuit for it, puts the fallback types first
in the group's mixed-instances policy, the pool grows on t3a.medium, the claim reply says so,
dispatchers are not told that launches fail; after the cool-off t3.medium is first again.

moto never fails a launch (docs/emulators.md), so the fleet does (FLEET_CAPACITY_ERRORS): an
instance of a failing type and zone leaves the group without a decrement and the fleet logs
the failed activity AWS would; the scaler reads that log through ``FleetActivities``, a thin
autoscaling client whose DescribeScalingActivities is the fleet's and whose every other call
is moto's. The scaler runs in-process (its reconcile called by the test), the dispatcher and
the fleet (with real agents) as processes.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from scaler.loop import Scaler
from scaler.metrics import ScalerMetrics
from shared import topology
from shared.asg import Asg
from shared.aws import client
from shared.bootstrap import bootstrap
from shared.broker import RpcClient
from shared.config import Settings
from shared.messages import CapacityStatus
from shared.store import Store
from sim.fleetctl import FleetActivities
from tests.conftest import env_for
from tests.helpers import Proc, unique, wait_for

pytestmark = pytest.mark.timeout(120)

TYPES = "t3.medium,t3a.medium,m5.large"
COOL_OFF = 4.0
TIMINGS = dict(HEARTBEAT_INTERVAL=0.5, HEARTBEAT_TIMEOUT=3, FLEET_BOOT_DELAY=0.2,
               WAIT_POLL_INTERVAL=0.1, LOG_LEVEL="INFO")


@pytest.fixture
def typed(settings: Settings, clean_queues: str) -> Settings:
    """A mixed-instances group of three types (bootstrap against moto), queues empty."""
    s = settings.model_copy(update={
        "worker_instance_types": TYPES, "target_available": 1, "reconcile_interval": 0.2,
        "cooldown_seconds": 0.5, "capacity_cool_off_seconds": COOL_OFF,
        "boot_timeout_seconds": 30, "heartbeat_interval": 0.5})
    bootstrap(s, broker=False)
    return s


@pytest.fixture
def fleet(typed: Settings) -> Iterator[Proc]:
    zone = Asg.from_settings(typed).describe().zones[0]
    proc = Proc("sim.fleet", env_for(typed, **TIMINGS,
                                     FLEET_CAPACITY_ERRORS=f"t3.medium@{zone}"))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def dispatcher(typed: Settings) -> Iterator[Proc]:
    proc = Proc("dispatcher", env_for(typed, **TIMINGS, TARGET_AVAILABLE=1))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def control(fleet: Proc, path: str, method: str = "GET") -> Any:
    port = fleet.wait_ready()["control_port"]
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_a_type_without_capacity_is_put_last_and_the_pool_grows_on_the_next(
        typed: Settings, fleet: Proc, dispatcher: Proc,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="scaler")
    port = fleet.wait_ready()["control_port"]
    real = client("autoscaling", region=typed.aws_region, endpoint_url=typed.aws_endpoint_url)
    asg = Asg(name=typed.asg_name, region=typed.aws_region,
              autoscaling=FleetActivities(real, f"http://127.0.0.1:{port}"))
    published: list[CapacityStatus] = []
    scaler = Scaler(settings=typed, store=Store.from_settings(typed), asg=asg,
                    metrics=ScalerMetrics(CollectorRegistry()), publish_capacity=published.append)

    def reconciled(check: Any) -> Any:
        scaler.reconcile(time.time())
        return check()

    # Given t3.medium lacks capacity: its launches fail (the fleet logs each failure)
    wait_for(lambda: reconciled(lambda: [a for a in control(fleet, "/activities")["Activities"]
                                         if a["StatusCode"] == "Failed"]),
             20, interval=0.2, what="a failed launch of t3.medium")
    # When the scaler reads it: a circuit opens and the fallback types go first
    wait_for(lambda: reconciled(lambda: Asg.from_settings(typed).describe().instance_types ==
                                ("t3a.medium", "m5.large", "t3.medium")),
             20, interval=0.2, what="t3.medium put last")
    opened = [r for r in caplog.records if getattr(r, "event", None) == "circuit_open"]
    assert [(r.instance_type, r.code) for r in opened] == [
        ("t3.medium", "InsufficientInstanceCapacity")]
    # Then the pool grows on t3a.medium, and the claim reply says which type the user got
    store = Store.from_settings(typed)
    wait_for(lambda: reconciled(lambda: store.workers.find_free(limit=5)), 30, interval=0.2,
             what="a free worker")
    rpc = RpcClient(typed.amqp_url, "cli@circuit")
    try:
        reply = json.loads(rpc.call(topology.CLAIMS, json.dumps(
            {"request_id": unique("r"), "user_id": "alice", "wait_seconds": 0}).encode(), 15))
    finally:
        rpc.close()
    assert reply["status"] == "assigned", reply
    assert reply["worker"]["instance_type"] == "t3a.medium"
    # and while another type carries the pool, dispatchers are not told launches fail
    scaler.reconcile(time.time())
    assert published[-1].ok, published[-1]
    assert any(getattr(r, "event", None) == "capacity_fallback" for r in caplog.records)

    # When capacity is back and the cool-off is over, t3.medium is first again
    control(fleet, "/capacity-errors", "DELETE")
    time.sleep(COOL_OFF)
    wait_for(lambda: reconciled(lambda: Asg.from_settings(typed).describe().instance_types[0]
                                == "t3.medium"), 10, interval=0.2, what="t3.medium first again")
    assert any(getattr(r, "event", None) == "circuit_closed" for r in caplog.records)
