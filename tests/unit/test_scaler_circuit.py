"""Memory of capacity errors (scaler/circuit.py), as tables of cases: which failed launches
open a circuit, for which type and zone, when it closes, and the order of instance types the
group is given."""

from __future__ import annotations

import json

import pytest

from scaler.circuit import (
    ANY_ZONE,
    CAPACITY,
    QUOTA,
    Circuit,
    classify,
    closed,
    from_notes,
    growing_on,
    opened,
    priority,
    to_notes,
)
from scaler.memory import PoolMemory
from shared.state import Activity
from sim.fleetplan import aws_message

NOW = 1_800_000_000.0
TYPES = ("t3.medium", "t3a.medium", "m5.large")
ICE = aws_message(CAPACITY, "t3.medium", "us-east-1b")
VCPU = aws_message(QUOTA, "t3.medium", "us-east-1a")


def act(code: str, message: str, details: str = "", aid: str = "a-1") -> Activity:
    return Activity(aid, code, message, "Launching a new EC2 instance.  Status Reason: "
                    + message if message else "Launching a new EC2 instance: i-1", NOW,
                    details)


# (case, activity, the type the group launches first, expected (type, zone, code) or None)
CLASSIFY = [
    ("no capacity: the type and zone AWS names", act("Failed", ICE), "m5.large",
     ("t3.medium", "us-east-1b", CAPACITY)),
    ("the zone from the activity's Details wins",
     act("Failed", ICE, json.dumps({"Availability Zone": "us-east-1c"})), None,
     ("t3.medium", "us-east-1c", CAPACITY)),
    ("the error code alone, no type named: the type launched first, any zone",
     act("Failed", "InsufficientInstanceCapacity"), "t3a.medium",
     ("t3a.medium", ANY_ZONE, CAPACITY)),
    ("a vCPU quota names no type: charged to the type launched first, in every zone",
     act("Failed", VCPU, json.dumps({"Availability Zone": "us-east-1a"})), "t3.medium",
     ("t3.medium", ANY_ZONE, QUOTA)),
    ("VcpuLimitExceeded by its code", act("Cancelled", "VcpuLimitExceeded: no"), "m5.large",
     ("m5.large", ANY_ZONE, QUOTA)),
    ("any other failure is no capacity error",
     act("Failed", "The image id '[ami-1]' does not exist. Launching EC2 instance failed."),
     "t3.medium", None),
    ("a success is none", act("Successful", ""), "t3.medium", None),
    ("a quota with no type to charge it to is none", act("Failed", VCPU), None, None),
]


@pytest.mark.parametrize(("case", "activity", "first", "expected"), CLASSIFY,
                         ids=[c[0] for c in CLASSIFY])
def test_which_failed_launches_are_capacity_errors(
        case: str, activity: Activity, first: str | None,
        expected: tuple[str, str, str] | None) -> None:
    got = classify(activity, first)
    assert (None if got is None else (got.instance_type, got.zone, got.code)) == expected
    if got is not None:
        assert got.message == activity.status_message


def test_a_circuit_opens_once_is_extended_by_another_failure_and_cools_off() -> None:
    f = classify(act("Failed", ICE), None)
    assert f is not None
    circuits, new = opened((), [f], NOW, cool_off=600)
    assert [(c.instance_type, c.zone, c.until) for c in new] == [
        ("t3.medium", "us-east-1b", NOW + 600)]
    circuits, new = opened(circuits, [f], NOW + 100, cool_off=600)
    assert new == [] and circuits[0].until == NOW + 700  # extended, not reopened
    still, gone = closed(circuits, NOW + 699)
    assert still == circuits and gone == []
    still, gone = closed(circuits, NOW + 700)
    assert still == () and gone == list(circuits)


def c(itype: str, zone: str) -> Circuit:
    return Circuit(itype, zone, NOW + 60, CAPACITY, "")


# (case, open circuits, the group's zones, expected order, what the pool grows on)
ORDERS = [
    ("nothing open: the configured order", (), ("us-east-1a",), TYPES, "t3.medium"),
    ("the first type out in the only zone goes last", (c("t3.medium", "us-east-1a"),),
     ("us-east-1a",), ("t3a.medium", "m5.large", "t3.medium"), "t3a.medium"),
    ("out in one of two zones: behind the clear types, ahead of the blocked ones",
     (c("t3.medium", "us-east-1a"), c("t3a.medium", "us-east-1a"),
      c("t3a.medium", "us-east-1b")), ("us-east-1a", "us-east-1b"),
     ("m5.large", "t3.medium", "t3a.medium"), "m5.large"),
    ("a quota blocks a type everywhere", (c("m5.large", ANY_ZONE),), ("us-east-1a", "b"),
     ("t3.medium", "t3a.medium", "m5.large"), "t3.medium"),
    ("every type out: the configured order, nothing to grow on",
     tuple(c(t, ANY_ZONE) for t in TYPES), ("us-east-1a",), TYPES, None),
    ("only partly blocked types left: the pool still grows on the first",
     (c("t3.medium", ANY_ZONE), c("t3a.medium", "us-east-1a"), c("m5.large", "us-east-1a")),
     ("us-east-1a", "us-east-1b"), ("t3a.medium", "m5.large", "t3.medium"), "t3a.medium"),
]


@pytest.mark.parametrize(("case", "circuits", "zones", "order", "grows_on"), ORDERS,
                         ids=[o[0] for o in ORDERS])
def test_the_order_of_instance_types(case: str, circuits: tuple[Circuit, ...],
                                     zones: tuple[str, ...], order: tuple[str, ...],
                                     grows_on: str | None) -> None:
    assert priority(TYPES, circuits, zones) == order
    assert growing_on(order, circuits, zones) == grows_on


def test_open_circuits_survive_a_failover_and_closed_ones_do_not() -> None:
    circuits = (c("t3.medium", "us-east-1a"), Circuit("m5.large", ANY_ZONE, NOW - 1, QUOTA, "x"))
    assert from_notes(json.loads(json.dumps(to_notes(circuits))), NOW) == circuits[:1]
    assert from_notes("garbage", NOW) == () and from_notes(None, NOW) == ()
    heir = PoolMemory()
    assert heir.restore(PoolMemory(circuits=circuits).notes(), NOW)
    assert heir.circuits == circuits[:1]


def test_a_failure_on_a_type_with_an_open_circuit_leaves_launches_working_on_another() -> None:
    mem = PoolMemory()
    failed = act("Failed", ICE.replace("us-east-1b", "us-east-1a"))
    assert [x.instance_type for x in mem.failed([failed], "t3.medium", NOW, 600)] == [
        "t3.medium"]
    order = mem.order(TYPES, ("us-east-1a",))
    assert mem.covered(failed, "t3.medium", order, ("us-east-1a",)) == "t3a.medium"
    # a failure nobody opened a circuit for (not capacity) stays a failure
    other = act("Failed", "Invalid IAM instance profile. Launching EC2 instance failed.")
    assert mem.covered(other, "t3.medium", order, ("us-east-1a",)) is None
    # every type out: nothing to grow on, launches fail
    for t in TYPES[1:]:
        mem.failed([act("Failed", aws_message(CAPACITY, t, "us-east-1a"), aid=t)], t, NOW, 600)
    assert mem.covered(failed, "t3.medium", mem.order(TYPES, ("us-east-1a",)),
                       ("us-east-1a",)) is None
    assert mem.cooled(NOW + 600) and mem.circuits == ()
