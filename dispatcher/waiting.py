"""The waiting room: claims that found no free worker, held (unacked) in arrival order.

``workerpool.claims.waiting`` is a single-active-consumer queue, so one dispatcher holds the
waiting claims at a time and serves them in the order they arrived. A claim stays unacked
until it is answered; if its dispatcher dies, the broker hands the unacked claims, in
order, to the next dispatcher, and their ``x-workerpool-arrived-at`` header keeps their
place and their deadline. Waits are at most 900 s, well under the broker's 30-min
consumer timeout.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass

from dispatcher import assign
from dispatcher.assign import Assignment
from dispatcher.claims import ClaimService
from shared import topology
from shared.broker import Delivery
from shared.clock import Clock
from shared.config import Settings
from shared.messages import ClaimRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Held:
    delivery: Delivery
    request: ClaimRequest
    waiter: assign.Waiter


class WaitingRoom:
    """Thread-safe: deliveries are added on the consumer thread, served on a worker."""

    def __init__(self, *, settings: Settings, claims: ClaimService, clock: Clock) -> None:
        self.settings = settings
        self.claims = claims
        self.clock = clock
        self._held: dict[int, Held] = {}
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self.outlook: assign.Outlook | None = None  # the scaler's latest count of machines

    def add(self, d: Delivery, req: ClaimRequest) -> None:
        now = self.clock.now()
        wait = (req.wait_seconds if req.wait_seconds is not None
                else self.settings.claim_wait_seconds)
        waiter = assign.Waiter(
            key=next(self._keys), request_id=req.request_id, user_id=req.user_id,
            arrived_at=assign.arrived_at(d.headers.get(topology.ARRIVED_HEADER), now),
            wait_seconds=wait)
        with self._lock:
            self._held[waiter.key] = Held(d, req, waiter)

    def reset(self) -> None:
        """After a reconnect the broker redelivers what we held: forget the old copies."""
        with self._lock:
            self._held.clear()

    def __len__(self) -> int:
        return len(self._held)

    def _take(self, key: int) -> Held | None:
        with self._lock:
            return self._held.pop(key, None)

    def serve(self) -> None:
        """One pass: time out, assign oldest first, then answer the claims beyond what the
        pool can still serve (the newest)."""
        with self._lock:
            held = dict(self._held)
        if not held:
            return
        now = self.clock.now()
        plan = assign.plan_waiting([h.waiter for h in held.values()], now,
                                   self.claims.pool_view())
        for key, reason in plan.expire:
            self._unavailable(key, reason)
        left = list(plan.serve)
        # one cheap look first: with nothing free, do not run a claim path per waiter
        if left and self.claims.any_free():
            while left:
                h = held[left[0]]
                got = self.claims.attempt(h.request, wait_seconds=None)
                if not isinstance(got, Assignment):
                    break
                left.pop(0)
                if self._take(h.waiter.key) is not None:
                    self.claims.deliver(h.delivery, h.request, got, h.waiter.arrived_at)
        refused = assign.refused_waiters([held[k].waiter for k in left], self.outlook,
                                         self.clock.now())
        for key, reason in refused:
            self._unavailable(key, reason)

    def _unavailable(self, key: int, reason: str) -> None:
        h = self._take(key)
        if h is None:
            return
        self.claims.answer_unavailable(h.delivery, h.request, reason, h.waiter.arrived_at)
