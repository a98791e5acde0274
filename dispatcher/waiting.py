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

from dispatcher import assign, replies
from dispatcher.assign import Assignment
from dispatcher.claims import ClaimService
from shared import topology
from shared.broker import Delivery
from shared.clock import Clock
from shared.config import Settings
from shared.errors import AwsUnavailable
from shared.messages import ClaimReply, ClaimRequest

log = logging.getLogger(__name__)

#: How long a cancel that found no claim here is kept in mind: the claim may still be on its
#: way (in flight from workerpool.claims), and is then answered ``cancelled`` on arrival.
CANCEL_MEMORY_SECONDS = 120.0


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
        self._aws_down = False  # the last serve pass found AWS unreachable
        #: (user_id, request_id) of claims cancelled while not held here -> until when
        self._cancelled: dict[tuple[str, str], float] = {}

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

    def withdraw(self, user_id: str, request_id: str) -> bool:
        """A cancel (cancel.py): answer this user's waiting claim ``cancelled`` and let it
        go; False if no such claim is held here (one that arrives later is answered
        ``cancelled`` then)."""
        now = self.clock.now()
        with self._lock:
            self._cancelled = {k: t for k, t in self._cancelled.items() if t > now}
            keys = [k for k, h in self._held.items()
                    if (h.request.user_id, h.request.request_id) == (user_id, request_id)]
            if not keys:
                self._cancelled[(user_id, request_id)] = now + CANCEL_MEMORY_SECONDS
        for key in keys:
            self._cancel(key)
        return bool(keys)

    def _cancel(self, key: int) -> None:
        h = self._take(key)
        if h is None:
            return
        reply = ClaimReply(request_id=h.request.request_id, status="cancelled",
                           reason=replies.CANCELLED)
        log.info("waiting claim cancelled", extra={"request_id": h.request.request_id,
                                                    "user_id": h.request.user_id})
        try:
            self.claims.finish(h.delivery, reply, h.waiter.arrived_at)
        except Exception:
            self._put_back(h)  # its outcome is stored: the next pass answers the same
            raise

    def expire(self) -> None:
        """Answer the claims whose wait is over, and those cancelled before they got here.
        A job of its own, which needs no AWS call to decide: a serve pass stuck on an
        unreachable AWS never holds a deadline back."""
        held = self._snapshot()
        if self._cancelled:
            for key, h in held.items():
                if (h.request.user_id, h.request.request_id) in self._cancelled:
                    self._cancel(key)
            held = self._snapshot()
        if held:
            plan = assign.plan_waiting([h.waiter for h in held.values()], self.clock.now(),
                                       self.claims.pool_view())
            for key, reason in plan.expire:
                self._answer(key, reason)

    def serve(self) -> None:
        """One pass: assign oldest first, then answer the claims beyond what the pool can
        still serve (the newest). With AWS unreachable the claims keep waiting (expire
        answers them at their deadline)."""
        held = self._snapshot()
        if not held:
            return
        plan = assign.plan_waiting([h.waiter for h in held.values()], self.clock.now(),
                                   self.claims.pool_view())
        left = [k for k in plan.serve if k in held]
        try:
            # one cheap look first: with nothing free, do not run a claim path per waiter
            if left and self.claims.any_free():
                while left:
                    h = held[left[0]]
                    where = assign.reply_key(h.delivery.reply_to, h.delivery.correlation_id)
                    got = self.claims.attempt(h.request, wait_seconds=None, reply_key=where)
                    if not isinstance(got, Assignment):
                        break
                    left.pop(0)
                    self._give(h, got)
        except AwsUnavailable as exc:
            # said once per outage (every pass tries again: it is how we see AWS come back)
            (log.debug if self._aws_down else log.warning)(
                "waiting claims not served: AWS does not answer",
                extra={"error": str(exc)[:300], "waiting": len(left)})
            self._aws_down = True
            return
        self._aws_down = False
        refused = assign.refused_waiters([held[k].waiter for k in left], self.outlook,
                                         self.clock.now())
        for key, reason in refused:
            self._answer(key, reason)

    def _snapshot(self) -> dict[int, Held]:
        with self._lock:
            return dict(self._held)

    def _give(self, h: Held, got: Assignment) -> None:
        """Deliver an assignment; if that fails, the claim goes back to the room (its
        outcome is stored: the next pass answers the same), never lost."""
        if self._take(h.waiter.key) is None:
            return
        try:
            self.claims.deliver(h.delivery, h.request, got, h.waiter.arrived_at)
        except Exception:
            self._put_back(h)
            raise

    def _answer(self, key: int, reason: str) -> None:
        h = self._take(key)
        if h is None:
            return
        try:
            self.claims.answer_unavailable(h.delivery, h.request, reason, h.waiter.arrived_at)
        except Exception:
            self._put_back(h)
            raise

    def _put_back(self, h: Held) -> None:
        with self._lock:
            if not h.delivery._settled:
                self._held[h.waiter.key] = h
