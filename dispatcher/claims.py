"""Claims (PROTOCOL §3): answer each on its reply_to, exactly once, with a conditional lease.

A claim's story, on one of the dispatcher's worker threads:

1. ``attempt``: take a candidate from the warm set of free workers (free.py) and lease it:
   one transaction, whose conditions also say whether the request was answered before and
   whether the user is at MAX_LEASES_PER_USER. Only when it is cancelled is anything read,
   to say why: a repeat gets its first outcome, a user at the limit their worker back, a
   worker taken meanwhile is dropped and the next tried. With no candidate at all, the
   request's outcome and the user's leases are read and ``assign.claim_plan`` decides.
2. ``handle`` (a new claim) then delivers the answer, answers ``unavailable`` at once
   (``wait_seconds: 0``), or sends the claim to the waiting room (waiting.py), which
   calls ``attempt`` again whenever a worker may be free.

Every answer is stored (the lease transaction, or a remembered outcome), then published
(with a confirm), and only then acked: a crash before the ack means a redelivery, which
finds the stored outcome and answers the same thing again. The bookkeeping an answer does
not need (the scaler's leased event, metrics) comes after the reply.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from dispatcher import assign, replies
from dispatcher.answering import Answering
from dispatcher.assign import Assignment, ClaimView, Existing, Repeat, Unavailable, Wait
from dispatcher.busy import Busy
from dispatcher.free import PAGE, FreeSet
from dispatcher.metrics import Metrics
from dispatcher.passwords import Passwords
from shared import topology
from shared.broker import BrokerLike, Delivery
from shared.clock import Clock
from shared.config import Settings
from shared.errors import AwsUnavailable, ConditionFailed
from shared.messages import ClaimReply, ClaimRequest
from shared.state import Worker
from shared.store import RequestSeen, Store, UserAtLimit

log = logging.getLogger(__name__)

#: Candidates a claim tries per round; a round lost entirely to other dispatchers (every
#: candidate taken meanwhile) is followed by another, up to ROUNDS.
CANDIDATES = 5
ROUNDS = 5
#: The longest a claim waits for another thread's refill of the empty warm set.
REFILL_WAIT_SECONDS = 2.0
#: With LEASE_PASSWORDS, workers a claim may try in one go whose agent does not confirm (each
#: wait is PASSWORD_CONFIRM_SECONDS: the claim's deadline comes first).
PASSWORD_TRIES = 2


class ClaimService(Answering):
    def __init__(self, *, settings: Settings, store: Store, broker: BrokerLike, clock: Clock,
                 metrics: Metrics, pool_view: Callable[[], assign.PoolView],
                 passwords: Passwords | None = None) -> None:
        self.settings = settings
        self.passwords = passwords  # set: LEASE_PASSWORDS is on
        self.store = store
        self.broker = broker
        self.clock = clock
        self.metrics = metrics
        self.pool_view = pool_view
        self._busy = Busy()
        self.free = FreeSet(fresh_for=settings.dead_after)
        self._leased: list[str] = []
        self._leased_lock = threading.Lock()

    # --- a new claim --------------------------------------------------------------------
    def handle(self, d: Delivery, req: ClaimRequest, received: float) -> None:
        """Assign now, answer ``unavailable`` now, or send the claim to wait."""
        arrived = assign.arrived_at(d.headers.get(topology.ARRIVED_HEADER), received)
        wait = (req.wait_seconds if req.wait_seconds is not None
                else self.settings.claim_wait_seconds)
        try:
            if self.store.reachability.down:  # known down: no call to find out again
                raise AwsUnavailable(self.store.reachability.reason or "AWS does not answer")
            got = self.attempt(req, wait_seconds=wait,
                               reply_key=assign.reply_key(d.reply_to, d.correlation_id))
        except AwsUnavailable as exc:  # no worker can be had now: wait (or not) as if none
            got = Wait() if wait > 0 else Unavailable(replies.aws_down_reason(0, str(exc)))
        if isinstance(got, Assignment):
            self.deliver(d, req, got, arrived)
        elif isinstance(got, Unavailable):
            self.answer_unavailable(d, req, got.reason, arrived)
        else:
            self._send_to_wait(d, req, arrived, wait)

    def _send_to_wait(self, d: Delivery, req: ClaimRequest, arrived: float, wait: int
                      ) -> None:
        """To the single-active-consumer waiting queue, keeping the client's reply address
        and the claim's first arrival (its place in line and its deadline)."""
        self.broker.publish(topology.WAITING, d.body, reply_to=d.reply_to,
                            correlation_id=d.correlation_id,
                            headers=assign.waiting_headers(d.headers, arrived))
        log.info("claim waits for a free worker",
                 extra={"request_id": req.request_id, "user_id": req.user_id,
                        "wait_seconds": wait})
        d.ack()

    # --- read, plan, apply ----------------------------------------------------------------
    def attempt(self, req: ClaimRequest, *, wait_seconds: int | None,
                reply_key: str | None = None) -> Assignment | Wait | Unavailable:
        """The answer this claim can have now, or Wait / Unavailable when no worker is free
        (``wait_seconds=None``: the claim is already waiting). ``reply_key``: where its
        answer goes (assign.reply_key), remembered with the outcome."""
        tries = [PASSWORD_TRIES]  # workers whose agent may fail to confirm a password
        for _ in range(ROUNDS):
            if tries[0] <= 0:
                break  # two workers failed us already: try again on the next pass
            order = self._candidates()
            if not order:
                break
            got = self._lease_first(req, order, tries, reply_key)
            if got is not None:
                return got
        # nothing free (or every round lost): what decides the answer is read now
        plan = self._plan(self._read(req), wait_seconds)
        if isinstance(plan, Repeat):
            return self._repeated(req, plan.outcome)
        if isinstance(plan, Existing):
            return self._existing(req, plan.worker, reply_key)
        assert isinstance(plan, (Wait, Unavailable))  # no candidates were read
        return plan

    def _plan(self, view: ClaimView, wait_seconds: int | None) -> assign.ClaimPlan:
        return assign.claim_plan(view, busy=self._busy.snapshot(self.clock.now()),
                                 max_leases=self.settings.max_leases_per_user,
                                 wait_seconds=wait_seconds, pool=self.pool_view())

    def _read(self, req: ClaimRequest) -> ClaimView:
        """With nothing to lease: the request's outcome (a repeat), else the user's leases
        (one at the limit gets a held worker back, even with nothing free)."""
        recalled = self.store.requests.recall(req.user_id, req.request_id)
        if recalled is not None:
            return ClaimView(recalled)
        return ClaimView(None, tuple(self.store.leases.held_by(req.user_id)))

    def _candidates(self) -> list[Worker]:
        """From the warm set; an empty one is refilled at once (at most every
        REFILL_SECONDS: an empty pool is not queried per claim)."""
        now = self.clock.now()
        busy = self._busy.snapshot(now)
        if self.free.refill_due(now, urgent=True, skip=busy):
            self.refill()
        else:
            self.free.await_refill(REFILL_WAIT_SECONDS, busy)  # another thread's, if it runs
        return self.free.candidates(CANDIDATES, now, self._busy.snapshot(now))

    def refill(self) -> None:
        """One index Query for a page of free workers (a worker silent for
        HEARTBEAT_TIMEOUT is dead even before the reaper says so: not listed)."""
        found: list[Worker] = []
        now = self.clock.now()
        # from a random point of the last heartbeat interval (over which live workers'
        # heartbeats spread): another dispatcher's page is another part of the pool
        split = now - random.uniform(0, self.settings.heartbeat_interval)
        try:
            found = self.store.workers.find_free(
                limit=PAGE, fresh_after=now - self.settings.dead_after, split=split)
        finally:
            self.free.refilled(found, PAGE)

    def refill_if_low(self) -> None:
        """The ticker's job: keep the warm set from running dry between claims."""
        now = self.clock.now()
        if self.free.refill_due(now, skip=self._busy.snapshot(now)):
            self.refill()

    def any_free(self) -> bool:
        """Whether trying every waiting claim is worth it (no read while the warm set has
        workers; an empty one is refilled, at most every REFILL_SECONDS)."""
        return bool(self._candidates())

    def _lease_first(self, req: ClaimRequest, order: list[Worker], tries: list[int],
                     reply_key: str | None) -> Assignment | None:
        """Lease the first worker of ``order`` that is still free. The transaction also
        says when the request was answered before (its outcome, read now) or the user is at
        the limit (their leases, read now). None when every candidate was taken meanwhile.
        ``tries``: password confirmations this claim may still wait for (each one can take
        PASSWORD_CONFIRM_SECONDS)."""
        for worker in order:
            if tries[0] <= 0:
                return None
            if not self._busy.take(worker.instance_id, self.clock.now()):
                continue  # another thread of ours picked it a moment ago
            taken = True  # whether the worker is no longer free after this try
            try:
                leased = self.store.leases.grant(
                    worker, user_id=req.user_id, request_id=req.request_id,
                    lease_seconds=req.lease_seconds or self.settings.lease_seconds,
                    now=self.clock.now(), max_leases=self.settings.max_leases_per_user,
                    remember_seconds=self.settings.request_memory_seconds,
                    fresh_after=self.clock.now() - self.settings.dead_after,
                    reply_key=reply_key)
            except RequestSeen as seen:
                taken = False
                return self._repeated(req, seen.outcome)
            except UserAtLimit:
                taken = False
                held = self.store.leases.held_by(req.user_id)
                if not held:  # released meanwhile: try again with the next worker
                    continue
                return self._existing(req, held[0], reply_key)
            except ConditionFailed:  # taken by another dispatcher, or silent: next one
                self.metrics.lease_attempts.labels(result="taken").inc()
                continue
            finally:
                self._busy.done(worker.instance_id, self.clock.now(), taken)
                if taken:
                    self.free.discard(worker.instance_id)
            self.metrics.lease_attempts.labels(result="won").inc()
            got = self._with_password(req, leased)
            if got is not None:
                return got
            tries[0] -= 1
        return None

    def _with_password(self, req: ClaimRequest, leased: Worker) -> Assignment | None:
        """The new lease's reply; with LEASE_PASSWORDS, carrying a password the worker's
        agent confirmed, or None after taking the worker out (draining: the reaper recycles
        it) and undoing the lease, so that the claim tries the next worker."""
        reply = replies.assigned_reply(req.request_id, leased, self.settings.code_server_port)
        if self.passwords is None:
            return Assignment(reply, new_lease=leased)
        ids: dict[str, str | None] = {"request_id": req.request_id, "user_id": req.user_id,
               "instance_id": leased.instance_id}
        password = self.passwords.set_for(leased.instance_id, ids)
        if password is not None:
            self.metrics.passwords.labels(result="set").inc()
            return Assignment(replies.with_password(reply, password), new_lease=leased)
        try:
            self.store.leases.abandon(leased.instance_id, user_id=req.user_id,
                                      request_id=req.request_id, now=self.clock.now(),
                                      reason=replies.PASSWORD_NOT_CONFIRMED)
        except ConditionFailed:  # taken out meanwhile (deregistered, reaped): fine
            pass
        self.metrics.passwords.labels(result="not_confirmed").inc()
        log.warning("worker taken out: %s", replies.PASSWORD_NOT_CONFIRMED, extra=ids)
        return None

    def _repeat(self, req: ClaimRequest, outcome: dict[str, Any]) -> ClaimReply:
        worker = None
        if outcome.get("status") == "assigned" and outcome.get("instance_id"):
            worker = self.store.workers.get(str(outcome["instance_id"]))
        log.info("repeated claim answered with its first outcome",
                 extra={"request_id": req.request_id, "user_id": req.user_id,
                        "status": outcome.get("status")})
        return self._noted(replies.repeated_claim_reply(req.request_id, outcome, worker,
                                                        self.settings.code_server_port))

    def _repeated(self, req: ClaimRequest, outcome: dict[str, Any]) -> Assignment:
        return Assignment(self._repeat(req, outcome), answered_to=outcome.get("reply"))

    def _existing(self, req: ClaimRequest, worker: Worker, reply_key: str | None
                  ) -> Assignment:
        """The user's held worker, remembered as this request's outcome (unless a duplicate
        of this request stored another meanwhile: that one stands)."""
        won, stands = self.store.requests.settle(
            req.user_id, req.request_id, {"status": "assigned", "reply": reply_key,
                                          "instance_id": worker.instance_id},
            now=self.clock.now(), remember_seconds=self.settings.request_memory_seconds)
        if not won:
            return self._repeated(req, stands)
        reply = replies.assigned_reply(req.request_id, worker, self.settings.code_server_port)
        return Assignment(self._noted(reply.model_copy(update={"existing": True})))

    def _noted(self, reply: ClaimReply) -> ClaimReply:
        """With LEASE_PASSWORDS, an assigned reply without its password says why."""
        return reply if self.passwords is None else replies.password_note(reply)
