"""The free workers a claim may try, kept warm so that a fresh claim makes no read before its
one lease transaction (issue 15).

Fed by what the dispatcher sees anyway: the heartbeats it writes (DynamoDB returns the item:
free and healthy, or not), the registrations it accepts, and, when the set runs low, one
index Query for a page of free workers (in the background; at once only when it is empty,
at most every ``REFILL_SECONDS``). Leases taken and lost take workers out. An entry is a
guess, never a promise: the lease transaction's conditions (free, healthy, heard from within
HEARTBEAT_TIMEOUT) decide, and a worker that fails them is dropped and the next one tried.

Several dispatchers write different agents' heartbeats, so their sets overlap little and
they seldom race for the same worker; the pages a Query brings are shuffled for the same
reason.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from dataclasses import replace

from shared.state import Worker

#: Workers one refill asks for (one Query page: DynamoDB reads up to 1 MB in one request).
PAGE = 32
#: Fewer entries than this: refill in the background.
LOW = PAGE // 4
#: After a refill that found fewer than it asked for (the pool is nearly empty), the
#: shortest time before the next: an empty pool is not queried per claim.
REFILL_SECONDS = 0.5


class FreeSet:
    """Thread-safe."""

    def __init__(self, *, fresh_for: float) -> None:
        self.fresh_for = fresh_for  # HEARTBEAT_TIMEOUT: older entries are no use
        self._workers: dict[str, Worker] = {}
        self._lock = threading.Lock()
        self._refill_done = threading.Condition(self._lock)
        self._refilled_at = float("-inf")
        self._refilling = False  # a refill runs now (one at a time)
        self._last_full = True  # the last refill found all it asked for

    def __len__(self) -> int:
        return len(self._workers)

    def offer(self, worker: Worker) -> None:
        """What we just learnt about a worker: kept if free and healthy, else dropped."""
        with self._lock:
            if worker.status == "free" and worker.healthy:
                self._workers[worker.instance_id] = worker
            else:
                self._workers.pop(worker.instance_id, None)

    def heard(self, instance_id: str, at: float) -> None:
        """A heartbeat of this worker was written at ``at`` (a batch returns no item): an
        entry stays fresh; a worker not in the set waits for a refill to come in."""
        with self._lock:
            w = self._workers.get(instance_id)
            if w is not None:
                self._workers[instance_id] = replace(w, last_heartbeat=max(w.last_heartbeat, at))

    def discard(self, instance_id: str) -> None:
        with self._lock:
            self._workers.pop(instance_id, None)

    def candidates(self, n: int, now: float, skip: frozenset[str] = frozenset()
                   ) -> list[Worker]:
        """Up to ``n`` entries heard from recently enough, in random order (stale ones are
        dropped here)."""
        with self._lock:
            for iid in [i for i, w in self._workers.items()
                        if w.last_heartbeat <= now - self.fresh_for]:
                del self._workers[iid]
            fresh = [w for i, w in self._workers.items() if i not in skip]
        return random.sample(fresh, min(n, len(fresh)))

    def _usable(self, skip: frozenset[str]) -> int:
        """Entries not in ``skip`` (caller holds the lock)."""
        return sum(1 for i in self._workers if i not in skip)

    def refill_due(self, now: float, *, urgent: bool = False,
                   skip: frozenset[str] = frozenset()) -> bool:
        """Whether to refill now: the set is low (``urgent``: empty), and the last refill
        found a full page or was REFILL_SECONDS ago. Entries in ``skip`` (being leased by
        our other threads) do not count: in a burst they are all the set holds. True claims
        the refill (the caller must do it, then call ``refilled``)."""
        with self._lock:
            if self._refilling:
                return False
            if not self._last_full and now - self._refilled_at < REFILL_SECONDS:
                return False
            usable = self._usable(skip)
            due = not usable if urgent else usable < LOW
            if due:
                self._refilled_at, self._refilling = now, True
            return due

    def refilled(self, workers: Iterable[Worker], asked: int) -> None:
        """A Query's page, added to what arrived meanwhile (also after a failed refill:
        ``refilled((), asked)``)."""
        found = list(workers)
        with self._lock:
            self._refilling = False
            self._last_full = len(found) >= asked
            for w in found:
                self._workers.setdefault(w.instance_id, w)
            self._refill_done.notify_all()

    def await_refill(self, timeout: float, skip: frozenset[str] = frozenset()) -> None:
        """While another thread refills a set with nothing usable (all of it in ``skip``),
        wait for its page (not for long: one Query)."""
        with self._lock:
            if self._refilling and not self._usable(skip):
                self._refill_done.wait(timeout)
