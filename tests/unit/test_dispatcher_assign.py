"""The dispatcher's pure decisions, as tables (no I/O, no clock)."""

from __future__ import annotations

import pytest

from dispatcher import assign
from dispatcher.assign import Capacity, PoolView, ShortageSent, Waiter
from shared.state import AsgState, Worker

NOW = 1_800_000_000.0


def worker(iid: str = "i-1", **kw: object) -> Worker:
    return Worker(instance_id=iid, status="leased", last_heartbeat=NOW, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("recalled", "held", "limit", "step"), [
    (None, [], 1, "lease"),
    ({"status": "assigned", "instance_id": "i-1"}, [], 1, "repeat"),
    ({"status": "unavailable", "reason": "x"}, [worker()], 1, "repeat"),
    (None, [worker()], 1, "existing"),
    (None, [worker()], 2, "lease"),
    (None, [worker("i-1"), worker("i-2")], 2, "existing"),
])
def test_a_claim_repeats_returns_the_held_worker_or_leases(recalled, held, limit, step) -> None:
    assert assign.claim_step(recalled, held, limit) == step


@pytest.mark.parametrize(("wait", "answer"), [(0, "unavailable"), (1, "wait"), (900, "wait")])
def test_wait_seconds_zero_means_unavailable_now(wait: int, answer: str) -> None:
    assert assign.no_free_worker(wait) == answer


@pytest.mark.parametrize(("header", "arrived"), [
    (None, NOW), (NOW - 30, NOW - 30), (int(NOW - 30), NOW - 30), ("garbage", NOW),
    (NOW + 100, NOW), (True, NOW), (-5, NOW),
])
def test_the_first_arrival_is_kept_only_when_it_is_a_sane_past_epoch(header, arrived) -> None:
    assert assign.arrived_at(header, NOW) == arrived


def test_waiting_headers_keep_the_clients_drop_the_brokers_and_are_whole_seconds() -> None:
    got = assign.waiting_headers({"x-delivery-count": 3, "trace": "t"}, NOW + 0.7)
    assert got == {"trace": "t", "x-workerpool-arrived-at": int(NOW)}


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


@pytest.mark.parametrize(("capacity", "blocked"), [
    (None, False),
    (Capacity(ok=True, reason=None, desired=4, max_size=10, sent_at=NOW), False),
    (Capacity(ok=False, reason="at MaxSize", desired=10, max_size=10, sent_at=NOW - 5), True),
    (Capacity(ok=False, reason="stale", desired=10, max_size=10, sent_at=NOW - 61), False),
])
def test_leftover_waiters_are_answered_now_only_on_a_recent_cannot_grow(capacity, blocked
                                                                         ) -> None:
    got = assign.blocked_waiters([Waiter(1, "r", "u", NOW, 60)], capacity, NOW)
    assert bool(got) == blocked
    if blocked:
        assert got[0][1] == ("no worker free and the pool cannot grow: at MaxSize "
                             "(ASG desired 10/max 10)")


@pytest.mark.parametrize(("free", "waiting", "last", "due"), [
    (2, 0, None, False),                              # at target, nobody waits
    (1, 0, None, True),                               # below target: first event
    (1, 0, ShortageSent(1, 0, NOW - 1), False),       # same counts, just sent
    (1, 0, ShortageSent(1, 0, NOW - 5), True),        # same counts, a while ago
    (0, 0, ShortageSent(1, 0, NOW - 1), True),        # counts changed
    (5, 3, ShortageSent(5, 2, NOW - 0.5), True),      # plenty free but claims wait
    (5, 0, ShortageSent(0, 1, NOW - 0.5), False),     # recovered: silence
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
    assert assign.asg_lookup(iid, ids, refreshed, seen) == verdict


@pytest.mark.parametrize(("refreshed", "now", "delay"), [
    (None, 5.0, 0.0), (4.0, 5.0, 0.0), (4.5, 5.0, 0.5), (5.0, 5.0, 1.0)])
def test_describe_is_called_at_most_once_a_second(refreshed, now, delay) -> None:
    assert assign.refresh_delay(refreshed, now) == pytest.approx(delay)


def test_the_newest_of_queued_heartbeats_wins() -> None:
    assert assign.latest_heartbeat([(3.0, True), (5.0, False), (4.0, True)]) == (5.0, False)


def test_candidates_our_threads_are_trying_are_skipped_in_the_given_order() -> None:
    ws = [worker("i-3"), worker("i-1"), worker("i-2")]
    assert [w.instance_id for w in assign.untried(ws, frozenset({"i-1"}))] == ["i-3", "i-2"]


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
    reply = assign.repeated_claim_reply("r-1", {"status": "assigned", "instance_id": "i-9"},
                                        w, 8080)
    assert reply.status == "assigned" and reply.worker is not None
    assert reply.worker.url == "http://10.0.0.9:8080"
    assert reply.lease_expiry == "2027-01-15T08:01:00Z"
    again = assign.repeated_claim_reply("r-1", {"status": "unavailable", "reason": "why"},
                                        None, 8080)
    assert (again.status, again.reason, again.worker) == ("unavailable", "why", None)


def test_a_lease_request_reusing_a_claims_id_is_rejected_not_misanswered() -> None:
    reply = assign.repeated_lease_reply("r-1", {"status": "assigned", "instance_id": "i-1"})
    assert reply.status == "rejected" and "request_id" in (reply.reason or "")
