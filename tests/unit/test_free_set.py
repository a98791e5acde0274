"""The dispatcher's warm set of free workers (dispatcher/free.py): when it refills, and what
a claim may try."""

from __future__ import annotations

import threading
import time

from dispatcher.free import LOW, PAGE, REFILL_SECONDS, FreeSet
from shared.state import Worker

NOW = 1_000.0


def free(n: int, *, at: float = NOW) -> list[Worker]:
    return [Worker(f"i-{k:04x}", "free", last_heartbeat=at, healthy=True) for k in range(n)]


def filled(n: int) -> FreeSet:
    s = FreeSet(fresh_for=45)
    assert s.refill_due(NOW, urgent=True)
    s.refilled(free(n), n)  # a full page: the next refill may come at once
    return s


def test_an_empty_set_is_refilled_at_once_and_one_refill_runs_at_a_time() -> None:
    s = FreeSet(fresh_for=45)
    assert s.refill_due(NOW, urgent=True)
    assert not s.refill_due(NOW, urgent=True)  # the first caller's refill runs
    s.refilled(free(PAGE), PAGE)
    assert len(s) == PAGE and not s.refill_due(NOW, urgent=True)


def test_entries_our_other_threads_are_leasing_do_not_count() -> None:
    """In a burst every entry left may be in another thread's hands: a claim that counted
    them would find nothing to try and go to wait while the pool has free workers."""
    s = filled(3)
    taken = frozenset(w.instance_id for w in free(3))
    assert not s.refill_due(NOW, urgent=True)
    assert s.refill_due(NOW, urgent=True, skip=taken)
    s.refilled(free(3), 3)
    s2 = filled(LOW)
    assert not s2.refill_due(NOW)
    assert s2.refill_due(NOW, skip=frozenset({"i-0000"}))  # below LOW once one is taken


def test_a_short_page_holds_the_next_refill_back() -> None:
    """An empty pool is not queried per claim: after a page that found fewer than asked,
    the next refill waits REFILL_SECONDS."""
    s = FreeSet(fresh_for=45)
    assert s.refill_due(NOW, urgent=True)
    s.refilled([], PAGE)
    assert not s.refill_due(NOW + REFILL_SECONDS / 2, urgent=True)
    assert s.refill_due(NOW + REFILL_SECONDS, urgent=True)


def test_a_claim_waits_for_a_running_refill_only_when_nothing_is_usable() -> None:
    s = filled(2)
    both = frozenset(w.instance_id for w in free(2))
    assert s.refill_due(NOW, urgent=True, skip=both)  # another thread refills now
    began = time.monotonic()
    s.await_refill(5.0, frozenset({"i-0000"}))  # one usable: no wait
    assert time.monotonic() - began < 1.0
    threading.Timer(0.2, s.refilled, (free(PAGE), PAGE)).start()
    s.await_refill(5.0, both)
    waited = time.monotonic() - began
    assert 0.15 < waited < 4.0, waited
    assert len(s.candidates(PAGE, NOW, both)) == PAGE - 2


def test_candidates_skip_the_busy_and_drop_the_silent() -> None:
    s = FreeSet(fresh_for=45)
    assert s.refill_due(NOW, urgent=True)
    s.refilled(free(3) + [Worker("i-old", "free", last_heartbeat=NOW - 60, healthy=True)],
               PAGE)
    got = s.candidates(10, NOW, frozenset({"i-0001"}))
    assert sorted(w.instance_id for w in got) == ["i-0000", "i-0002"]
    assert len(s) == 3  # the silent one is gone for good
