"""The scaler's pure decisions, as tables of cases (no I/O, time passed in)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from scaler.policy import (
    Arriving,
    AsgView,
    Counts,
    LastScale,
    WaitingBook,
    arriving,
    booting,
    decide,
    launch_status,
    missing_workers,
    protection_plan,
)
from shared.state import Activity, AsgInstance, AsgState, Worker

NOW = 1_800_000_000.0


@dataclass
class S:
    target_available: int = 2
    cooldown_seconds: float = 30
    scale_strategy: str = "missing"
    scale_in_idle_seconds: float = 600


# (name, counts, asg view, last scale, settings, expected set_desired, expected capacity_ok)
CASES = [
    ("an empty pool is filled to target in one call",
     Counts(free=0), AsgView(0, 0, 10), None, S(), 2, True),
    ("a full pool needs nothing",
     Counts(free=2), AsgView(2, 0, 10), None, S(), None, True),
    ("a burst of 100 waiting claims against an empty pool is one call for all of them",
     Counts(free=0, waiting=100), AsgView(0, 0, 200), None, S(), 102, True),
    ("booting machines are not counted twice: desired already holds them",
     Counts(free=0, booting=2), AsgView(2, 0, 10), None, S(), None, True),
    ("booting machines cover part of a burst, the rest is added on top of desired",
     Counts(free=0, booting=2, waiting=3), AsgView(2, 0, 10), None, S(), 5, True),
    ("leased and draining machines stay in desired; only free ones count toward target",
     Counts(free=1, leased=5, draining=1), AsgView(7, 0, 10), None, S(), 8, True),
    ("a need above MaxSize is clamped to MaxSize and capacity is reported not ok",
     Counts(free=0, waiting=20), AsgView(0, 0, 10), None, S(), 10, False),
    ("at MaxSize already: no call, capacity not ok",
     Counts(free=0, leased=10, waiting=3), AsgView(10, 0, 10), None, S(), None, False),
    ("inside the cooldown a replacement for a recycled worker waits",
     Counts(free=1, booting=0), AsgView(1, 0, 10), LastScale(NOW - 5, 2, 2), S(), None, True),
    ("inside the cooldown the ASG catching up with our last call is no reason to call",
     Counts(free=0, booting=2), AsgView(2, 0, 10), LastScale(NOW - 5, 2, 2), S(), None, True),
    ("inside the cooldown even one more claim than we provided for waits (PROTOCOL §1)",
     Counts(free=1, leased=1, booting=1, waiting=1), AsgView(3, 0, 10),
     LastScale(NOW - 5, 3, 2), S(), None, True),
    ("inside the cooldown a larger shortage waits too; the call after it covers it all",
     Counts(free=0, booting=2, waiting=4), AsgView(2, 0, 10), LastScale(NOW - 5, 2, 2), S(),
     None, True),
    ("just after the cooldown the larger shortage is met by one call",
     Counts(free=0, booting=2, waiting=4), AsgView(2, 0, 10), LastScale(NOW - 30, 2, 2), S(),
     6, True),
    ("after the cooldown the same need acts again",
     Counts(free=1), AsgView(1, 0, 10), LastScale(NOW - 31, 2, 2), S(), 2, True),
    ("the scaler never lowers desired, even with free workers far above target",
     Counts(free=8), AsgView(8, 0, 10), None, S(), None, True),
    ("a minimum size above what we need is left to the ASG",
     Counts(free=0, booting=3), AsgView(3, 3, 10), None, S(), None, True),
    ("target 0 and nothing waiting: nothing to do",
     Counts(free=0), AsgView(0, 0, 10), None, S(target_available=0), None, True),
]


@pytest.mark.parametrize("name,counts,asg,last,settings,want,ok", CASES,
                         ids=[c[0] for c in CASES])
def test_scale_out_decision(name, counts, asg, last, settings, want, ok):
    d = decide(counts, asg, last, NOW, settings)
    assert d.set_desired == want, d.reason
    assert d.capacity_ok is ok
    if not ok:
        assert f"MaxSize {asg.max_size}" in (d.capacity_reason or "")


def test_missing_never_goes_below_zero():
    assert missing_workers(Counts(free=9, booting=4), 2) == 0
    assert missing_workers(Counts(free=1, booting=1, waiting=3), 2) == 3


@pytest.mark.parametrize("trigger,counts,desired,want", [
    ("event", Counts(free=0, booting=5), 5, 6),   # ignores booting: +1 anyway
    ("event", Counts(free=2), 2, None),           # not short
    ("reconcile", Counts(free=0), 0, None),       # naive acts on events only
    ("event", Counts(free=0, waiting=4), 10, None),  # never above MaxSize
])
def test_naive_strategy_adds_one_per_shortage_event(trigger, counts, desired, want):
    d = decide(counts, AsgView(desired, 0, 10), LastScale(NOW - 1, desired), NOW,
               S(scale_strategy="naive"), trigger=trigger)
    assert d.set_desired == want


def _free(iid: str, hb: float, healthy: bool = True) -> Worker:
    return Worker(instance_id=iid, status="free", last_heartbeat=hb, healthy=healthy)


def test_surplus_starts_a_clock_and_drains_nothing_before_the_idle_time():
    ws = [_free("i-a", NOW), _free("i-b", NOW), _free("i-c", NOW)]
    d = decide(Counts(free=3), AsgView(3, 0, 10), None, NOW, S(scale_in_idle_seconds=60),
               free_workers=ws)
    assert (d.drain, d.surplus_since) == (None, NOW)


def test_sustained_surplus_drains_the_worker_heard_from_least_recently():
    ws = [_free("i-a", NOW - 1), _free("i-b", NOW - 9), _free("i-c", NOW - 3)]
    d = decide(Counts(free=3), AsgView(3, 0, 10), None, NOW, S(scale_in_idle_seconds=60),
               free_workers=ws, surplus_since=NOW - 61)
    assert d.drain == "i-b"
    assert d.set_desired is None


def test_surplus_ends_when_claims_wait_and_its_clock_restarts():
    ws = [_free("i-a", NOW), _free("i-b", NOW), _free("i-c", NOW)]
    d = decide(Counts(free=3, waiting=1), AsgView(3, 0, 10), None, NOW,
               S(scale_in_idle_seconds=60), free_workers=ws, surplus_since=NOW - 600)
    assert (d.drain, d.surplus_since) == (None, None)


def test_booting_counts_unregistered_live_instances_and_launches_not_started():
    asg = AsgState("g", 0, 10, desired=5, instances=(
        AsgInstance("i-1", "InService"), AsgInstance("i-2", "InService"),
        AsgInstance("i-3", "Pending"), AsgInstance("i-4", "Terminating")))
    # i-1 registered; i-2 and i-3 live but not registered; 5 desired - 3 live = 2 pending
    assert booting(asg, ["i-1", "i-4"]) == 4
    assert arriving(asg, ["i-1", "i-4"]) == Arriving(booting=2, pending=2)


def test_protection_follows_the_lease_and_ignores_leaving_instances():
    asg = AsgState("g", 0, 10, 4, instances=(
        AsgInstance("i-1", "InService", protected=False),
        AsgInstance("i-2", "InService", protected=True),
        AsgInstance("i-3", "InService", protected=True),
        AsgInstance("i-4", "Terminating", protected=True)))
    assert protection_plan(asg, ["i-1", "i-3"]) == (["i-1"], ["i-2"])


def _act(aid: str, code: str, t: float, msg: str = "") -> Activity:
    return Activity(aid, code, msg, "Launching a new EC2 instance", t)


@pytest.mark.parametrize("acts,ok,in_reason", [
    ([], True, None),
    ([_act("a", "Failed", NOW + 1, "You have requested more vCPU capacity")], False,
     "You have requested more vCPU capacity"),
    ([_act("a", "Failed", NOW + 1, "quota"), _act("b", "Successful", NOW + 2)], True, None),
    ([_act("a", "Failed", NOW - 100, "old failure, before our raise")], True, None),
    ([_act("a", "Cancelled", NOW + 1, "InsufficientInstanceCapacity")], False,
     "InsufficientInstanceCapacity"),
])
def test_launch_status_is_decided_by_the_newest_activity_since_our_raise(acts, ok, in_reason):
    st = launch_status(acts, since=NOW)
    assert st.ok is ok
    if in_reason:
        assert in_reason in (st.reason or "")


def test_waiting_count_drops_with_each_later_lease_and_expires():
    book = WaitingBook().reported(3, sent_at=NOW, now=NOW, reporter="d1")
    book = book.leased(NOW + 1).leased(NOW - 5)  # the second lease predates the report
    assert book.current(NOW + 2, memory=300) == 2
    stale = book.reported(7, sent_at=NOW - 1, now=NOW + 2, reporter="d1")
    assert stale.current(NOW + 2, memory=300) == 2  # an older report changes nothing
    assert book.current(NOW + 301, memory=300) == 0


def test_one_dispatchers_zero_never_erases_anothers_count():
    """Issue 14: only the dispatcher holding the waiting queue has waiting claims, but every
    dispatcher reports; the scaler kept the last report only, so a 0 erased a 50."""
    book = (WaitingBook().reported(50, sent_at=NOW, now=NOW, reporter="holder")
            .reported(0, sent_at=NOW + 1, now=NOW + 1, reporter="other"))
    assert book.current(NOW + 2, memory=300) == 50
    book = book.leased(NOW + 3)  # a lease serves the holder's oldest waiter
    assert dict(book.counts)["holder"].waiting == 49
    assert book.reported(0, sent_at=NOW + 4, now=NOW + 4,
                         reporter="holder").current(NOW + 5, memory=300) == 0
