"""The dispatcher's pure decisions, as tables (no I/O, no clock)."""

from __future__ import annotations

import pytest

from dispatcher import assign, membership, replies
from dispatcher.assign import ClaimView, Outlook, PoolView, ShortageSent, Waiter
from shared.state import AsgState, Worker

NOW = 1_800_000_000.0


def worker(iid: str = "i-1", **kw: object) -> Worker:
    return Worker(instance_id=iid, status="leased", last_heartbeat=NOW, **kw)  # type: ignore[arg-type]


FREE = (worker("i-3"), worker("i-1"), worker("i-2"))
SEEN = {"status": "assigned", "instance_id": "i-1"}
PLAIN = PoolView(free=0, target=2)

# (name, what was read, busy, max leases, wait_seconds, the plan)
PLANS = [
    ("a repeated request gets its first outcome, whatever else holds",
     ClaimView(SEEN, (worker(),), FREE), frozenset(), 1, 60, assign.Repeat(SEEN)),
    ("a remembered unavailable is repeated too",
     ClaimView({"status": "unavailable", "reason": "x"}), frozenset(), 1, 0,
     assign.Repeat({"status": "unavailable", "reason": "x"})),
    ("a user at the limit gets a held worker back",
     ClaimView(None, (worker("i-7"),), FREE), frozenset(), 1, 60, assign.Existing(worker("i-7"))),
    ("below a higher limit, the user gets another",
     ClaimView(None, (worker("i-7"),), FREE), frozenset(), 2, 60, assign.TryLease(FREE)),
    ("candidates are tried in the order read, minus those our threads are leasing",
     ClaimView(None, (), FREE), frozenset({"i-1"}), 1, 60,
     assign.TryLease((worker("i-3"), worker("i-2")))),
    ("nothing free and the claim may wait: it waits",
     ClaimView(None), frozenset(), 1, 60, assign.Wait()),
    ("only busy candidates count as nothing free",
     ClaimView(None, (), (worker("i-1"),)), frozenset({"i-1"}), 1, 30, assign.Wait()),
    ("wait_seconds 0 means unavailable now (PROTOCOL §3)",
     ClaimView(None), frozenset(), 1, 0,
     assign.Unavailable("no free worker right now (wait_seconds is 0); the pool has 0 free of "
                        "target 2, ASG size unknown; see `workerpool status` and the ASG's "
                        "activity")),
    ("a claim already waiting keeps waiting",
     ClaimView(None), frozenset(), 1, None, assign.Wait()),
]


@pytest.mark.parametrize(("name", "view", "busy", "limit", "wait", "plan"), PLANS,
                         ids=[p[0] for p in PLANS])
def test_a_claim_is_repeated_given_back_leased_waits_or_is_unavailable(
        name: str, view: ClaimView, busy: frozenset[str], limit: int, wait: int | None,
        plan: assign.ClaimPlan) -> None:
    assert assign.claim_plan(view, busy=busy, max_leases=limit, wait_seconds=wait,
                             pool=PLAIN) == plan


@pytest.mark.parametrize(("header", "arrived"), [
    (None, NOW), (NOW - 30, NOW - 30), (int(NOW - 30), NOW - 30), ("garbage", NOW),
    (NOW + 100, NOW), (True, NOW), (-5, NOW),
    (int((NOW - 30.25) * 1_000_000), NOW - 30.25), (int((NOW + 1) * 1_000_000), NOW),
])
def test_the_first_arrival_is_kept_only_when_it_is_a_sane_past_epoch(header, arrived) -> None:
    assert assign.arrived_at(header, NOW) == arrived


def test_waiting_headers_keep_the_clients_drop_the_brokers_and_are_microseconds() -> None:
    got = assign.waiting_headers({"x-delivery-count": 3, "trace": "t"}, NOW + 0.7)
    assert got == {"trace": "t", "x-workerpool-arrived-at": int((NOW + 0.7) * 1_000_000)}
    assert assign.arrived_at(got["x-workerpool-arrived-at"], NOW + 1) == pytest.approx(NOW + 0.7)


POOL = PoolView(free=0, target=2, asg=AsgState(name="g", min_size=0, max_size=10, desired=4))


def test_expired_waiters_time_out_and_the_rest_are_served_oldest_first() -> None:
    waiters = [Waiter(1, "r-1", "u1", NOW - 5, 10), Waiter(2, "r-2", "u2", NOW - 20, 10),
               Waiter(3, "r-3", "u3", NOW - 8, 10), Waiter(4, "r-4", "u4", NOW - 8, 10),
               Waiter(5, "r-5", "u5", NOW - 10, 10)]
    plan = assign.plan_waiting(waiters, NOW, POOL)
    assert [k for k, _ in plan.expire] == [2, 5]
    assert plan.serve == (3, 4, 1)
    reason = plan.expire[0][1]
    assert reason == ("no worker became free within 10 s; the pool has 0 free of target 2, "
                      "ASG desired 4/max 10; see `workerpool status` and the ASG's activity")


def outlook(free: int = 0, booting: int = 0, pending: int = 0, desired: int = 10,
            max_size: int = 10, failure: str | None = None, age: float = 1.0) -> Outlook:
    return Outlook(free=free, booting=booting, pending=pending, desired=desired,
                   max_size=max_size, launch_failure=failure, sent_at=NOW - age)


QUOTA = "instances fail to launch (Failed): You have requested more vCPU capacity"


# Waiters w1..wN arrived in that order (w1 oldest). (name, outlook, waiters, refused keys)
SPLITS = [
    ("no word from the scaler: everybody waits to their deadline",
     None, 5, []),
    ("a count older than a minute is not believed",
     outlook(age=61), 5, []),
    ("at MaxSize, 8 booting serve the 8 oldest of 9; the newest is refused",
     outlook(booting=8), 9, [9]),
    ("the issue's first case: desired 6 of 10, 4 booting + 4 launchable cover 7 waiters",
     outlook(booting=4, desired=6), 7, []),
    ("the issue's third case: 10 launchable machines for 30 waiters; the newest 20 go",
     outlook(desired=30, max_size=40), 30, list(range(11, 31))),
    ("the issue's fourth case: the one machine MaxSize allows is booting for the first",
     outlook(booting=1, desired=1, max_size=1), 2, [2]),
    ("free workers count (a lease may be a moment away), pending launches too",
     outlook(free=2, pending=3, desired=10), 6, [6]),
    ("launches fail: only what did launch is coming; pending and launchable are not",
     outlook(booting=1, pending=4, desired=6, failure=QUOTA), 3, [2, 3]),
    ("launches fail with nothing launched: every waiter is refused",
     outlook(pending=2, desired=2, failure=QUOTA), 2, [1, 2]),
    ("room for everybody: nobody is refused",
     outlook(booting=2, desired=4), 3, []),
]


@pytest.mark.parametrize(("name", "seen", "count", "refused"), SPLITS, ids=[c[0] for c in SPLITS])
def test_waiting_claims_beyond_free_and_coming_machines_are_refused_newest_first(
        name: str, seen: Outlook | None, count: int, refused: list[int]) -> None:
    # keys are deliberately not in arrival order: arrival decides, the key only breaks ties
    waiters = [Waiter(100 - i, f"r-{i}", f"u{i}", NOW - 50 + i, 60) for i in range(1, count + 1)]
    got = assign.refused_waiters(list(reversed(waiters)), seen, NOW)
    assert sorted(100 - key for key, _ in got) == refused


def test_ties_in_arrival_are_broken_by_delivery_order() -> None:
    waiters = [Waiter(2, "r-b", "u", NOW - 5, 60), Waiter(1, "r-a", "u", NOW - 5, 60)]
    got = assign.refused_waiters(waiters, outlook(booting=1, desired=10, max_size=10), NOW)
    assert [key for key, _ in got] == [2]


def test_a_refusal_at_max_size_says_how_many_machines_come_and_how_many_claims_are_ahead() -> None:
    waiters = [Waiter(i, f"r-{i}", "u", NOW - 10 + i, 60) for i in range(4)]
    got = assign.refused_waiters(waiters, outlook(free=1, booting=1, pending=1), NOW)
    assert got == ((3, "no machine for this claim: 3 claims ahead of it and 3 machines free or "
                        "coming (1 free, 1 booting, 1 still to launch); the pool is at its "
                        "limit, ASG MaxSize 10: raise ASG_MAX_SIZE / the group's MaxSize"),)


def test_a_refusal_during_launch_failures_carries_aws_reason() -> None:
    got = assign.refused_waiters([Waiter(1, "r", "u", NOW, 60)],
                                 outlook(pending=2, desired=2, failure=QUOTA), NOW)
    assert got == ((1, "no machine for this claim: 0 claims ahead of it and 0 machines free or "
                        f"coming (0 free, 0 booting); no more can come while {QUOTA} "
                        "(ASG desired 2/max 10)"),)


def test_the_scalers_message_becomes_an_outlook_and_ok_false_is_a_launch_failure() -> None:
    from datetime import UTC, datetime

    from shared.messages import CapacityStatus

    sent = datetime.fromtimestamp(NOW, UTC)
    got = assign.outlook(CapacityStatus(ok=False, reason=QUOTA, desired=4, max_size=10, free=0,
                                        booting=1, pending=3, sent_at=sent))
    assert got == Outlook(free=0, booting=1, pending=3, desired=4, max_size=10,
                          launch_failure=QUOTA, sent_at=NOW)
    assert got.coming == 1
    assert assign.outlook(CapacityStatus(ok=True, desired=4, max_size=10, sent_at=sent)) is None


@pytest.mark.parametrize(("free", "waiting", "last", "due"), [
    (2, 0, None, False),                              # at target, nobody waits
    (1, 0, None, True),                               # below target: first event
    (1, 0, ShortageSent(1, 0, NOW - 1), False),       # same counts, just sent
    (1, 0, ShortageSent(1, 0, NOW - 5), True),        # same counts, a while ago
    (0, 0, ShortageSent(1, 0, NOW - 1), True),        # counts changed
    (5, 3, ShortageSent(5, 2, NOW - 0.5), True),      # plenty free but claims wait
    (5, 0, ShortageSent(0, 1, NOW - 0.5), True),      # recovered: said once (0 waiting)
    (5, 0, ShortageSent(5, 0, NOW - 0.5), False),     # ... then silence
])
def test_shortage_events_go_once_per_change_or_every_few_seconds(free, waiting, last, due
                                                                 ) -> None:
    assert assign.shortage_due(free, waiting, last, NOW, target=2) is due


@pytest.mark.parametrize(("iid", "ids", "refreshed", "seen", "verdict"), [
    ("i-1", frozenset({"i-1"}), 10.0, 5.0, "known"),
    ("i-2", frozenset({"i-1"}), 10.0, 5.0, "unknown"),   # refreshed after it arrived
    ("i-2", frozenset({"i-1"}), 4.0, 5.0, "refresh"),    # cache older than the message
    ("i-2", frozenset(), None, 5.0, "refresh"),          # never looked
])
def test_asg_membership_is_refreshed_only_when_the_cache_may_predate_the_message(
        iid, ids, refreshed, seen, verdict) -> None:
    assert membership.lookup(iid, ids, refreshed, seen) == verdict


@pytest.mark.parametrize(("refreshed", "now", "delay"), [
    (None, 5.0, 0.0), (4.0, 5.0, 0.0), (4.5, 5.0, 0.5), (5.0, 5.0, 1.0)])
def test_describe_is_called_at_most_once_a_second(refreshed, now, delay) -> None:
    assert membership.refresh_delay(refreshed, now) == pytest.approx(delay)


def test_the_newest_of_queued_heartbeats_wins() -> None:
    assert assign.latest_heartbeat([(3.0, True), (5.0, False), (4.0, True)]) == (5.0, False)


@pytest.mark.parametrize(("item", "ours"), [
    ({"status": "draining", "userId": "alice", "reason": "released"}, True),
    ({"status": "draining", "userId": "bob", "reason": "released"}, False),
    ({"status": "draining", "userId": "alice", "reason": "expired"}, False),
    ({"status": "leased", "userId": "alice"}, False),
    (None, False),
])
def test_a_repeated_release_of_ones_own_lease_still_answers_released(item, ours) -> None:
    assert assign.release_was_ours(item, "alice") is ours


def test_a_repeated_claim_gets_the_same_worker_with_its_current_expiry() -> None:
    w = worker("i-9", public_ip=None, private_ip="10.0.0.9", lease_expiry=NOW + 60)
    reply = replies.repeated_claim_reply("r-1", {"status": "assigned", "instance_id": "i-9"},
                                        w, 8080)
    assert reply.status == "assigned" and reply.worker is not None
    assert reply.worker.url == "http://10.0.0.9:8080"
    assert reply.lease_expiry == "2027-01-15T08:01:00Z"
    again = replies.repeated_claim_reply("r-1", {"status": "unavailable", "reason": "why"},
                                        None, 8080)
    assert (again.status, again.reason, again.worker) == ("unavailable", "why", None)


def test_a_lease_request_reusing_a_claims_id_is_rejected_not_misanswered() -> None:
    reply = replies.repeated_lease_reply("r-1", {"status": "assigned", "instance_id": "i-1"})
    assert reply.status == "rejected" and "request_id" in (reply.reason or "")
