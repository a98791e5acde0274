"""The simulated fleet's pure parts for boot times and capacity errors (sim/fleetplan.py): the
delays it draws per instance type, which launches it fails, and the activities it logs in
AWS's shape (what the scaler's circuit reads)."""

from __future__ import annotations

import json
import random
from datetime import datetime

import pytest

from scaler.circuit import classify
from scaler.demand import percentile
from shared.state import Activity
from sim.fleetctl import FleetActivities
from sim.fleetplan import (
    FleetAction,
    MemberView,
    activity,
    boot_delay,
    launch_error,
    options,
    parse_boot_times,
    parse_capacity_errors,
    plan,
)


def test_boot_times_parse_per_type_with_a_default() -> None:
    assert parse_boot_times("t3.medium=40:70, *=30") == {"t3.medium": (40.0, 70.0),
                                                         "*": (30.0, 30.0)}
    assert parse_boot_times("") == {}
    with pytest.raises(ValueError, match="p90 >= median"):
        parse_boot_times("t3.medium=70:40")


def test_boot_delays_follow_each_types_median_and_p90() -> None:
    spec = parse_boot_times("t3.medium=40:70,m5.large=20:25")
    rng = random.Random(7)
    draws = [boot_delay("t3.medium", spec, 2.0, rng.random()) for _ in range(4000)]
    assert percentile(draws, 50) == pytest.approx(40, rel=0.06)
    assert percentile(draws, 90) == pytest.approx(70, rel=0.06)
    assert boot_delay("m5.large", spec, 2.0, 0.5) == pytest.approx(20)
    assert boot_delay("c5.large", spec, 2.0, 0.99) == 2.0  # no spec, no star: the default
    assert boot_delay("c5.large", {"*": (5.0, 5.0)}, 2.0, 0.99) == 5.0  # no spread


def test_a_member_boots_for_its_own_delay() -> None:
    members = {"i-a": MemberView("i-a", "booting", 10.0, boot_delay=5.0),
               "i-b": MemberView("i-b", "booting", 10.0)}
    assert plan(members, {"i-a", "i-b"}, 12.5, boot_delay=2.0, fail_boot=()) == [
        FleetAction("start", "i-b")]
    assert plan(members, {"i-a", "i-b"}, 15.0, boot_delay=2.0, fail_boot=())[0] == \
        FleetAction("start", "i-a")


def test_capacity_errors_by_type_and_zone() -> None:
    errors = parse_capacity_errors("t3.medium@us-east-1a, m5.large=VcpuLimitExceeded")
    assert errors == {("t3.medium", "us-east-1a"): "InsufficientInstanceCapacity",
                      ("m5.large", "*"): "VcpuLimitExceeded"}
    assert launch_error("t3.medium", "us-east-1a", errors) == "InsufficientInstanceCapacity"
    assert launch_error("t3.medium", "us-east-1b", errors) is None
    assert launch_error("m5.large", "us-east-1b", errors) == "VcpuLimitExceeded"
    with pytest.raises(ValueError, match="code must be one of"):
        parse_capacity_errors("t3.medium=Teapot")


def test_the_fleets_variables() -> None:
    got = options({"FLEET_FAIL_BOOT": "2", "FLEET_SEED": "3",
                   "FLEET_CAPACITY_ERRORS": "t3.medium", "FLEET_BOOT_TIMES": "*=1:2"})
    assert got == {"fail_boot": set(), "fail_next": 2, "seed": 3,
                   "capacity_errors": {("t3.medium", "*"): "InsufficientInstanceCapacity"},
                   "boot_times": {"*": (1.0, 2.0)}}


class Recorded:
    """The real autoscaling client, never reached: only activities are asked for."""

    def describe_auto_scaling_groups(self, **kwargs: object) -> str:
        return "the real one"


def test_the_logged_activities_read_as_aws_would_answer_and_classify_as_the_scaler_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    started = "2026-12-01T09:00:00+00:00"
    log = {"Activities": [
        activity("i-2", "us-east-1a", started, "InsufficientInstanceCapacity", "t3.medium"),
        activity("i-1", "us-east-1a", started)]}

    class Answer:
        def __enter__(self) -> Answer:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def read(self) -> bytes:
            return json.dumps(log).encode()

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Answer())
    client = FleetActivities(Recorded(), "http://127.0.0.1:1/")
    assert client.describe_auto_scaling_groups() == "the real one"
    acts = client.describe_scaling_activities(AutoScalingGroupName="g", MaxRecords=20)[
        "Activities"]
    assert [a["StatusCode"] for a in acts] == ["Failed", "Successful"]
    assert acts[0]["StartTime"] == datetime.fromisoformat(started)
    failed = Activity(acts[0]["ActivityId"], acts[0]["StatusCode"], acts[0]["StatusMessage"],
                      acts[0]["Description"], acts[0]["StartTime"].timestamp(),
                      acts[0]["Details"])
    got = classify(failed, None)
    assert got is not None and (got.instance_type, got.zone) == ("t3.medium", "us-east-1a")
    assert classify(failed.__class__(**{**failed.__dict__, "status_code": "Successful"}),
                    None) is None
