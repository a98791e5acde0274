"""When a lease ends and what its user is told (reaper/ending.py, and its place in
reaper.rules.plan), as tables: a lease's clocks and a `now` in, actions out. No I/O."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reaper.ending import (
    End,
    ExpireIdle,
    Notify,
    ended_event,
    lease_actions,
    lease_end,
    notice_event,
    notice_key,
    parse_notice,
)
from reaper.rules import MarkDead, Recycle, Snapshot, instance_of, plan
from shared.config import parse_settings
from shared.messages import LeaseEnding, LeaseExtended, UserEvent, decode, event_text
from shared.state import AsgInstance, AsgState, LeaseClock, Worker

NOW = 1_800_000_000.0
HOUR = 3600.0


def settings(idle: float = 0, warn: float = 300):
    return parse_settings(amqp_url="amqp://guest:guest@localhost:5672/x", idle_seconds=idle,
                          warn_before_seconds=warn, heartbeat_interval=10,
                          heartbeat_timeout=30)


def lease(iid: str = "i-1", *, expiry: float = NOW + HOUR, activity: float | None = None,
          leased_at: float = NOW - HOUR, renewed_at: float | None = None,
          notice: str | None = None, hb: float = NOW - 1) -> LeaseClock:
    w = Worker(iid, "leased", last_heartbeat=hb, lease_expiry=expiry, user_id="alice",
               healthy=True)
    return LeaseClock(w, last_activity=activity, leased_at=leased_at, renewed_at=renewed_at,
                      notice=notice)


def what(actions: list) -> list[tuple]:
    out = []
    for a in actions:
        if isinstance(a, Notify):
            out.append((a.kind, a.end.reason, a.end.at))
        elif isinstance(a, ExpireIdle):
            out.append(("expire_idle", a.end.at))
        else:
            out.append((type(a).__name__,))
    return out


# --- the end of a lease -------------------------------------------------------------------
END_CASES = [
    ("idle off: the expiry", lease(activity=NOW - 3 * HOUR), 0, End(NOW + HOUR, "expiry")),
    ("idle on, recent activity: the expiry comes first",
     lease(activity=NOW - 60), 2 * HOUR, End(NOW + HOUR, "expiry")),
    ("idle on, old activity: activity + IDLE_SECONDS",
     lease(activity=NOW - 90 * 60, leased_at=NOW - 3 * HOUR, expiry=NOW + 5 * HOUR), 2 * HOUR,
     End(NOW + 30 * 60, "idle")),
    ("no activity ever: counted from the lease's start",
     lease(leased_at=NOW - 100, expiry=NOW + 5 * HOUR), 600, End(NOW + 500, "idle")),
    ("a renew counts as a sign of life",
     lease(activity=NOW - 5000, renewed_at=NOW - 100, expiry=NOW + 5 * HOUR), 600,
     End(NOW + 500, "idle")),
    ("nothing known: no idle end",
     replace(lease(), leased_at=None), 600, End(NOW + HOUR, "expiry")),
]


@pytest.mark.parametrize(("name", "clock", "idle", "end"), END_CASES,
                         ids=[c[0] for c in END_CASES])
def test_a_lease_ends_at_the_earlier_of_its_expiry_and_its_idle_end(
        name: str, clock: LeaseClock, idle: float, end: End) -> None:
    assert lease_end(clock, idle) == end


# --- what the reaper does about one lease ---------------------------------------------------
ENDING = notice_key("lease_ending", End(NOW + 200, "expiry"))
ACTION_CASES = [
    ("far from its end: nothing", lease(), settings(), []),
    ("WARN_BEFORE_SECONDS from its expiry: warned",
     lease(expiry=NOW + 200), settings(), [("lease_ending", "expiry", NOW + 200)]),
    ("already warned for this end: nothing more",
     lease(expiry=NOW + 200, notice=ENDING), settings(), []),
    ("warnings off: nothing", lease(expiry=NOW + 200), settings(warn=0), []),
    ("the expiry has passed: rule 1's (expired leases), not ours",
     lease(expiry=NOW - 1), settings(idle=600), []),
    ("renewed after the warning: extended",
     lease(expiry=NOW + HOUR, notice=ENDING), settings(), [("lease_extended", "expiry",
                                                           NOW + HOUR)]),
    ("renewed into the window again: warned for the new end",
     lease(expiry=NOW + 250, notice=ENDING), settings(), [("lease_ending", "expiry",
                                                           NOW + 250)]),
    ("extended already said: nothing until the new end comes close",
     lease(notice=notice_key("lease_extended", End(NOW + HOUR, "expiry"))), settings(), []),
    ("idle, WARN_BEFORE_SECONDS from the idle end: warned",
     lease(activity=NOW - 500, expiry=NOW + 5 * HOUR), settings(idle=600),
     [("lease_ending", "idle", NOW + 100)]),
    ("idle too long: reclaimed", lease(activity=NOW - 601, expiry=NOW + 5 * HOUR),
     settings(idle=600), [("expire_idle", NOW - 1)]),
    ("IDLE_SECONDS=0: never reclaimed for idleness",
     lease(activity=NOW - 10 * HOUR, expiry=NOW + 5 * HOUR), settings(idle=0), []),
    ("activity after an idle warning: extended, to the expiry that now comes first",
     lease(activity=NOW - 5, expiry=NOW + 200 * 60,
           notice=notice_key("lease_ending", End(NOW + 100, "idle"))), settings(idle=HOUR),
     [("lease_extended", "idle", NOW - 5 + HOUR)]),
]


@pytest.mark.parametrize(("name", "clock", "s", "expected"), ACTION_CASES,
                         ids=[c[0] for c in ACTION_CASES])
def test_what_the_reaper_does_about_a_lease(name: str, clock: LeaseClock, s, expected) -> None:
    assert what(lease_actions(clock, NOW, s)) == expected


def test_a_warning_is_sent_once_per_end_whatever_the_passes() -> None:
    s, clock, sent = settings(), lease(expiry=NOW + 400), []
    for t in range(0, 400, 5):  # a pass every 5 s until the end
        for a in lease_actions(clock, NOW + t, s):
            sent.append((t, a.kind))
            clock = replace(clock, notice=a.key)  # what set_notice writes
    assert sent == [(100, "lease_ending")]


def test_a_moved_end_warns_again() -> None:
    s = settings()
    clock = lease(expiry=NOW + 200)
    (first,) = lease_actions(clock, NOW, s)
    clock = replace(clock, notice=first.key, worker=replace(clock.worker,
                                                            lease_expiry=NOW + 1000))
    (moved,) = lease_actions(clock, NOW + 1, s)
    assert moved.kind == "lease_extended" and moved.previous_at == NOW + 200
    clock = replace(clock, notice=moved.key)
    assert lease_actions(clock, NOW + 600, s) == []
    (again,) = lease_actions(clock, NOW + 701, s)
    assert again.kind == "lease_ending" and again.end.at == NOW + 1000


def test_notice_keys_round_trip_and_garbage_is_no_key() -> None:
    assert parse_notice(notice_key("lease_ending", End(NOW + 0.7, "idle"))) == (
        "ending", "idle", int(NOW))
    assert parse_notice(None) is None and parse_notice("nonsense") is None


# --- in the plan --------------------------------------------------------------------------
def group(*ids: str) -> AsgState:
    return AsgState(name="g", min_size=0, max_size=10, desired=len(ids),
                    instances=tuple(AsgInstance(i, "InService") for i in ids))


def test_an_idle_lease_is_reclaimed_like_an_expired_one() -> None:
    idle = lease("i-1", activity=NOW - 700, expiry=NOW + HOUR)
    actions = plan(Snapshot(asg=group("i-1"), leases=(idle,)), NOW, settings(idle=600))
    assert [(type(a).__name__, instance_of(a)) for a in actions] == [
        ("ExpireIdle", "i-1"), ("Recycle", "i-1")]
    assert isinstance(actions[1], Recycle) and actions[1].reason == "idle"
    assert actions[1].decrement and actions[1].in_group


def test_a_dead_worker_is_not_also_warned_and_notices_come_last() -> None:
    dying = lease("i-1", expiry=NOW + 100, hb=NOW - 60)
    warned = lease("i-2", expiry=NOW + 100)
    snap = Snapshot(asg=group("i-1", "i-2"), stale=(dying.worker,), leases=(dying, warned),
                    live_workers=10)
    actions = plan(snap, NOW, settings())
    assert [type(a).__name__ for a in actions] == ["MarkDead", "Recycle", "Notify"]
    assert isinstance(actions[0], MarkDead) and instance_of(actions[2]) == "i-2"


def test_leases_read_for_notices_are_known_to_the_table() -> None:
    snap = Snapshot(asg=group("i-1"), leases=(lease("i-1"),))
    assert plan(snap, NOW, settings()) == []  # no TrackBooting for a lease we just read


# --- the events ---------------------------------------------------------------------------
def test_the_events_carry_the_contract_fields_and_read_well() -> None:
    (n,) = lease_actions(lease(activity=NOW - 500, expiry=NOW + 5 * HOUR), NOW,
                         settings(idle=600))
    event = notice_event(n, NOW)
    assert isinstance(event, LeaseEnding)
    body = event.model_dump(mode="json")
    assert body == {"type": "lease_ending", "user_id": "alice", "instance_id": "i-1",
                    "reason": "idle", "ends_at": "2027-01-15T08:01:40Z",
                    "sent_at": "2027-01-15T08:00:00Z"}
    assert decode(UserEvent, event.to_json()) == event
    assert "idle" in event_text(event) and "in 100 s" in event_text(event)
    extended = notice_event(Notify(n.clock, "lease_extended", End(NOW + HOUR, "expiry"),
                                   previous_at=NOW + 100), NOW)
    assert isinstance(extended, LeaseExtended)
    assert extended.previous_ends_at is not None and "now ends at" in event_text(extended)
    ended = ended_event(n.worker, "idle", NOW, NOW)
    assert ended is not None and ended.type == "lease_ended" and "recycled" in event_text(ended)
    assert ended_event(replace(n.worker, user_id=None), "idle", NOW, NOW) is None
