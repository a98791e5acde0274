"""The reaper's pure rules as tables: a snapshot and a `now` in, actions out. No I/O."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reaper.rules import (
    Expire,
    MarkDead,
    Recycle,
    RemoveOrphan,
    ReplaceNeverBooted,
    Retire,
    Snapshot,
    TrackBooting,
    instance_of,
    plan,
)
from shared.config import parse_settings
from shared.state import AsgInstance, AsgState, Worker

NOW = 1_800_000_000.0
SETTINGS = parse_settings(heartbeat_interval=10, heartbeat_timeout=30, boot_timeout_seconds=600,
                          amqp_url="amqp://guest:guest@localhost:5672/x")


def group(*ids: str, leaving: tuple[str, ...] = ()) -> AsgState:
    instances = tuple(AsgInstance(i, "InService") for i in ids)
    instances += tuple(AsgInstance(i, "Terminating") for i in leaving)
    return AsgState(name="g", min_size=0, max_size=10, desired=len(ids), instances=instances)


def leased(iid: str = "i-1", *, expiry: float, hb: float = NOW - 1, user: str = "alice"
           ) -> Worker:
    return Worker(iid, "leased", last_heartbeat=hb, lease_expiry=expiry, user_id=user,
                  healthy=True)


def free(iid: str = "i-1", *, hb: float = NOW - 1) -> Worker:
    return Worker(iid, "free", last_heartbeat=hb, healthy=True)


def sick(iid: str = "i-1", *, since: float) -> Worker:
    return Worker(iid, "free", NOW - 1, healthy=False, unhealthy_since=since)


def booting(iid: str = "i-1", *, since: float) -> Worker:
    return Worker(iid, "booting", last_heartbeat=since, first_seen=since)


def kinds(actions: list) -> list[tuple[str, str]]:
    return [(type(a).__name__, instance_of(a)) for a in actions]


CASES = [
    # (name, snapshot, expected [(action, instance)])
    ("an expired lease is expired then recycled",
     Snapshot(asg=group("i-1"), expired=(leased(expiry=NOW - 5),), known_ids=frozenset({"i-1"})),
     [("Expire", "i-1"), ("Recycle", "i-1")]),
    ("a lease expiring exactly now is expired",
     Snapshot(asg=group("i-1"), expired=(leased(expiry=NOW),), known_ids=frozenset({"i-1"})),
     [("Expire", "i-1"), ("Recycle", "i-1")]),
    ("a lease not yet expired is left alone even if the index returned it",
     Snapshot(asg=group("i-1"), expired=(leased(expiry=NOW + 1),),
              known_ids=frozenset({"i-1"})),
     []),
    ("a lease renewed meanwhile (no longer in the expired query) is left alone",
     Snapshot(asg=group("i-1"), known_ids=frozenset({"i-1"})),
     []),
    ("a free worker silent for HEARTBEAT_TIMEOUT is marked dead then recycled",
     Snapshot(asg=group("i-1"), stale=(free(hb=NOW - 30),), known_ids=frozenset({"i-1"})),
     [("MarkDead", "i-1"), ("Recycle", "i-1")]),
    ("a leased worker silent for HEARTBEAT_TIMEOUT is marked dead then recycled",
     Snapshot(asg=group("i-1"), stale=(leased(expiry=NOW + 999, hb=NOW - 31),),
              known_ids=frozenset({"i-1"})),
     [("MarkDead", "i-1"), ("Recycle", "i-1")]),
    ("a worker that heartbeat within HEARTBEAT_TIMEOUT is healthy",
     Snapshot(asg=group("i-1"), stale=(free(hb=NOW - 29.9),), known_ids=frozenset({"i-1"})),
     []),
    ("an expired lease that is also silent is expired, not reported lost",
     Snapshot(asg=group("i-1"), expired=(leased(expiry=NOW - 1, hb=NOW - 100),),
              stale=(leased(expiry=NOW - 1, hb=NOW - 100),), known_ids=frozenset({"i-1"})),
     [("Expire", "i-1"), ("Recycle", "i-1")]),
    ("a draining worker is recycled",
     Snapshot(asg=group("i-1"), draining=(Worker("i-1", "draining", NOW, reason="released"),)),
     [("Recycle", "i-1")]),
    ("a dead worker is recycled",
     Snapshot(asg=group("i-1"), dead=(Worker("i-1", "dead", NOW, reason="was free"),)),
     [("Recycle", "i-1")]),
    ("a booting instance within BOOT_TIMEOUT is left to boot",
     Snapshot(asg=group("i-1"), booting=(booting(since=NOW - 599),)),
     []),
    ("a booting instance past BOOT_TIMEOUT is replaced",
     Snapshot(asg=group("i-1"), booting=(booting(since=NOW - 600),)),
     [("ReplaceNeverBooted", "i-1")]),
    ("a booting item whose instance left the ASG is an orphan",
     Snapshot(asg=group(), booting=(booting(since=NOW - 5),)),
     [("RemoveOrphan", "i-1")]),
    ("on a sweep, a free item whose instance is gone is retired and recycled (tombstone)",
     Snapshot(asg=group("i-2"), everything=(free("i-1"), free("i-2"))),
     [("Retire", "i-1"), ("Recycle", "i-1")]),
    ("on a sweep, a leased item whose instance went to Standby is retired and recycled",
     Snapshot(asg=group(leaving=("i-1",)), everything=(leased(expiry=NOW + 99),)),
     [("Retire", "i-1"), ("Recycle", "i-1")]),
    ("on a sweep, a booting item whose instance is gone is only removed",
     Snapshot(asg=group(), everything=(booting(since=NOW - 5),)),
     [("RemoveOrphan", "i-1")]),
    ("a free worker unhealthy for UNHEALTHY_GRACE_SECONDS is retired and replaced",
     Snapshot(asg=group("i-1"), everything=(sick(since=NOW - 300),)),
     [("Retire", "i-1"), ("Recycle", "i-1")]),
    ("a free worker unhealthy for less is kept (it may recover)",
     Snapshot(asg=group("i-1"), everything=(sick(since=NOW - 299),)),
     []),
    ("a silent worker is not dead when AWS answers again only since less than the timeout",
     Snapshot(asg=group("i-1"), stale=(free(hb=NOW - 300),), known_ids=frozenset({"i-1"}),
              recovered_at=NOW - 29),
     []),
    ("... and is, the timeout after the recovery",
     Snapshot(asg=group("i-1"), stale=(free(hb=NOW - 300),), known_ids=frozenset({"i-1"}),
              recovered_at=NOW - 30),
     [("MarkDead", "i-1"), ("Recycle", "i-1")]),
    ("most of the pool silent at once is our outage: nobody is marked dead",
     Snapshot(asg=group("i-1", "i-2", "i-3", "i-4"), live_workers=4,
              known_ids=frozenset({"i-1", "i-2", "i-3", "i-4"}),
              stale=(free("i-1", hb=NOW - 60), free("i-2", hb=NOW - 60),
                     leased("i-3", expiry=NOW + 99, hb=NOW - 60))),
     []),
    ("a few silent among many are dead",
     Snapshot(asg=group("i-1", "i-2", "i-3"), live_workers=10,
              known_ids=frozenset({"i-1", "i-2", "i-3"}),
              stale=(free("i-1", hb=NOW - 60), free("i-2", hb=NOW - 60))),
     [("MarkDead", "i-1"), ("Recycle", "i-1"), ("MarkDead", "i-2"), ("Recycle", "i-2")]),
    ("an ASG instance unknown to the table is tracked as booting",
     Snapshot(asg=group("i-1", "i-2"), known_ids=frozenset({"i-1"})),
     [("TrackBooting", "i-2")]),
    ("on a sweep, the table itself says which instances are unknown",
     Snapshot(asg=group("i-1", "i-2"), everything=(free("i-1"),),
              known_ids=frozenset({"i-2"})),
     [("TrackBooting", "i-2")]),
    ("a terminating ASG instance is never tracked",
     Snapshot(asg=group(leaving=("i-9",))),
     []),
    ("an instance seen in this pass's queries is not tracked again",
     Snapshot(asg=group("i-1"), booting=(booting(since=NOW - 5),)),
     []),
    ("a healthy pool produces no actions",
     Snapshot(asg=group("i-1", "i-2"), everything=(free("i-1"), leased("i-2", expiry=NOW + 9))),
     []),
]


@pytest.mark.parametrize(("snapshot", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_each_rule_decides_as_the_table_says(snapshot: Snapshot, expected: list) -> None:
    assert kinds(plan(snapshot, NOW, SETTINGS)) == expected


def test_an_expire_is_conditional_on_the_exact_lease_expiry_seen() -> None:
    w = leased(expiry=NOW - 5)
    actions = plan(Snapshot(asg=group("i-1"), expired=(w,)), NOW, SETTINGS)
    assert actions[0] == Expire(w)
    assert actions[1] == Recycle("i-1", "alice", "expired", decrement=True, in_group=True)


def test_a_worker_out_of_the_group_is_recycled_without_a_terminate_and_an_unhealthy_one_is_replaced(
        ) -> None:
    gone = leased(expiry=NOW + 99)
    actions = plan(Snapshot(asg=group(), everything=(gone,)), NOW, SETTINGS)
    assert actions == [Retire(gone, "left the group"),
                       Recycle("i-1", "alice", "left the group", in_group=False)]
    ill = sick(since=NOW - 301)
    actions = plan(Snapshot(asg=group("i-1"), everything=(ill,)), NOW, SETTINGS)
    assert actions == [Retire(ill, "unhealthy"),
                       Recycle("i-1", None, "unhealthy", decrement=False)]


def test_a_dead_worker_carries_the_heartbeat_seen_for_its_conditional_write() -> None:
    w = leased(expiry=NOW + 999, hb=NOW - 31)
    actions = plan(Snapshot(asg=group("i-1"), stale=(w,)), NOW, SETTINGS)
    assert isinstance(actions[0], MarkDead) and actions[0].worker.last_heartbeat == NOW - 31
    assert actions[1] == Recycle("i-1", "alice", "dead", decrement=True, in_group=True)


def test_a_recycle_decrements_desired_capacity_except_for_a_never_booted_instance() -> None:
    released = Worker("i-1", "draining", NOW, reason="released")
    never = Worker("i-2", "dead", NOW, reason="was booting")
    actions = plan(Snapshot(asg=group("i-1", "i-2"), draining=(released,), dead=(never,)),
                   NOW, SETTINGS)
    assert [(a.instance_id, a.decrement) for a in actions if isinstance(a, Recycle)] == [
        ("i-1", True), ("i-2", False)]


def test_a_recycle_of_an_instance_already_gone_only_removes_the_item() -> None:
    gone = Worker("i-1", "draining", NOW, reason="expired")
    (action,) = plan(Snapshot(asg=group(), draining=(gone,)), NOW, SETTINGS)
    assert isinstance(action, Recycle) and action.in_group is False


def test_a_live_worker_is_never_recycled_or_orphaned_while_its_instance_is_in_the_asg() -> None:
    live = (free("i-1"), leased("i-2", expiry=NOW + 60), replace(free("i-3"), healthy=False))
    snap = Snapshot(asg=group("i-1", "i-2", "i-3"), everything=live, stale=(), expired=())
    assert plan(snap, NOW, SETTINGS) == []


def test_a_worker_appears_in_at_most_one_rule_per_pass() -> None:
    w = booting(since=NOW - 9999)
    snap = Snapshot(asg=group(), booting=(w,), everything=(w,))
    assert kinds(plan(snap, NOW, SETTINGS)) == [("RemoveOrphan", "i-1")]


def test_the_same_snapshot_always_gives_the_same_plan() -> None:
    snap = Snapshot(asg=group("i-1", "i-3"), expired=(leased(expiry=NOW - 5),),
                    booting=(booting("i-3", since=NOW - 700),), known_ids=frozenset({"i-1"}))
    assert plan(snap, NOW, SETTINGS) == plan(snap, NOW, SETTINGS)
    assert isinstance(plan(snap, NOW, SETTINGS)[-1], ReplaceNeverBooted)


def test_unknown_instances_are_tracked_after_every_reclaim() -> None:
    snap = Snapshot(asg=group("i-1", "i-5"), expired=(leased(expiry=NOW - 5),))
    actions = plan(snap, NOW, SETTINGS)
    assert actions[-1] == TrackBooting("i-5")
    assert not any(isinstance(a, RemoveOrphan) for a in actions)
