"""A launch failure reaches the operator (log, /metrics, /health) and the dispatchers
(CapacityStatus on the fanout) with AWS's own message.

moto cannot fail a launch (DescribeScalingActivities always returns []), so for this case
only the autoscaling client is a thin fake: every call goes to moto's real client except
describe_scaling_activities, which answers what AWS answers when a vCPU quota stops
launches. The store, the broker and every other ASG call are real.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from scaler.loop import Scaler
from scaler.metrics import ScalerMetrics
from shared import topology
from shared.asg import Asg
from shared.aws import client
from shared.broker import Publisher
from shared.config import Settings
from shared.health import HealthServer
from shared.leader import Leadership
from shared.store import Store
from tests.helpers import wait_for
from tests.integration.test_scaler_process import CapacityListener

QUOTA = ("You have requested more vCPU capacity than your current vCPU limit of 32 allows "
         "for the instance bucket that the specified instance type belongs to. Please visit "
         "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this "
         "limit. Launching EC2 instance failed.")


class ActivityLog:
    """moto's autoscaling client, with the activity log AWS would show."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.activities: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def describe_scaling_activities(self, **kwargs: Any) -> dict[str, Any]:
        return {"Activities": list(reversed(self.activities))}

    def add(self, aid: str, code: str, message: str) -> None:
        self.activities.append({
            "ActivityId": aid, "StatusCode": code, "StatusMessage": message,
            "Description": "Launching a new EC2 instance. Status Reason: " + message,
            "StartTime": datetime.now(UTC)})


@pytest.fixture
def rig(pool: Settings) -> Any:
    s = pool.model_copy(update={"target_available": 2, "reconcile_interval": 0.2})
    fake = ActivityLog(client("autoscaling", region=s.aws_region,
                              endpoint_url=s.aws_endpoint_url))
    asg = Asg(name=s.asg_name, region=s.aws_region, autoscaling=fake)
    store = Store.from_settings(s)
    registry = CollectorRegistry()
    metrics = ScalerMetrics(registry)
    capacity = Publisher(s.amqp_url, "scaler@tests")
    scaler = Scaler(settings=s, store=store, asg=asg, metrics=metrics,
                    publish_capacity=lambda st: capacity.publish(
                        "", st.to_json(), exchange=topology.CAPACITY_EXCHANGE, mandatory=False),
                    leadership=Leadership(store, name="scaler", owner="t", ttl=5))
    health = HealthServer(process="scaler", port=0, registry=registry)
    health.info["scaler"] = scaler.status
    yield s, fake, scaler, registry, health
    capacity.close()


def test_a_failed_launch_is_logged_counted_shown_and_published_with_aws_message(
        rig: Any, caplog: pytest.LogCaptureFixture) -> None:
    s, fake, scaler, registry, health = rig
    listener = CapacityListener(s.amqp_url)
    try:
        caplog.set_level(logging.INFO, logger="scaler")
        scaler.reconcile(time.time())  # raises desired 0 -> 2
        fake.add("a-1", "Failed", QUOTA)
        scaler.reconcile(time.time())

        failed = [r for r in caplog.records if getattr(r, "event", None) == "launch_failed"]
        assert len(failed) == 1 and failed[0].aws_message == QUOTA
        assert registry.get_sample_value("workerpool_launch_failures_total") == 1
        assert registry.get_sample_value("workerpool_capacity_ok") == 0
        code, body = health.health()
        assert code == 200  # broker and AWS are fine; capacity is shown, not a 503
        assert QUOTA in body["scaler"]["capacity_reason"]
        statuses = wait_for(lambda: listener.poll(), 5, what="a CapacityStatus")
        assert not statuses[-1].ok and QUOTA in (statuses[-1].reason or "")

        assert statuses[-1].desired == 2 and statuses[-1].free == 0
        scaler.reconcile(time.time())  # the same failure again: published, not re-counted
        assert registry.get_sample_value("workerpool_launch_failures_total") == 1
        wait_for(lambda: len([c for c in listener.poll() if not c.ok]) >= 2, 5,
                 what="status repeated while not ok")

        fake.add("a-2", "Successful", "")  # the quota was raised; AWS launched
        time.sleep(0.01)
        scaler.reconcile(time.time())
        assert registry.get_sample_value("workerpool_capacity_ok") == 1
        wait_for(lambda: listener.poll()[-1].ok, 5, what="a CapacityStatus ok=True")
        launch_lines = [r for r in caplog.records if getattr(r, "event", None) == "capacity"]
        assert [r.ok for r in launch_lines] == [False, True]  # logged when it starts and ends
    finally:
        listener.close()
