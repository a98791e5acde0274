"""Claims (PROTOCOL §3): answer each on its reply_to, exactly once, with a conditional lease.

A claim's story, on one of the dispatcher's worker threads:

1. ``attempt``: read what the claim needs (its remembered outcome, the user's leases, free
   workers), ask ``assign.claim_plan`` what to do, do it: answer a repeat with its first
   outcome, give a user at the limit their worker back, or lease the first candidate still
   free (a round lost to other dispatchers is read and planned again, up to ROUNDS).
2. ``handle`` (a new claim) then delivers the answer, answers ``unavailable`` at once
   (``wait_seconds: 0``), or sends the claim to the waiting room (waiting.py), which
   calls ``attempt`` again whenever a worker may be free.

Every answer is stored (the lease transaction, or a remembered outcome), then published
(with a confirm), and only then acked: a crash before the ack means a redelivery, which
finds the stored outcome and answers the same thing again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from dispatcher import assign, replies
from dispatcher.assign import Assignment, ClaimView, Existing, Repeat, TryLease, Unavailable, Wait
from dispatcher.busy import Busy
from dispatcher.metrics import Metrics
from dispatcher.passwords import Passwords
from shared import topology
from shared.broker import BrokerLike, Delivery
from shared.clock import Clock
from shared.config import Settings
from shared.errors import AwsUnavailable, ConditionFailed, Unroutable
from shared.messages import ClaimReply, ClaimRequest, LeasedEvent, now_sent_at
from shared.state import Worker
from shared.store import RequestSeen, Store, UserAtLimit

log = logging.getLogger(__name__)

#: Free workers read per index query (a page of 25 is still one read request). A round
#: lost entirely to other dispatchers is read again (the index no longer lists the workers
#: just leased), up to ROUNDS times.
CANDIDATES = 25
ROUNDS = 5
#: The longest a lease recheck waits (LEASE_RECHECK_SECONDS), however slow the writes are.
RECHECK_MAX_SECONDS = 2.0
#: With LEASE_PASSWORDS, workers a claim may try in one go whose agent does not confirm (each
#: wait is PASSWORD_CONFIRM_SECONDS: the claim's deadline comes first).
PASSWORD_TRIES = 2


class ClaimService:
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

    # --- a new claim --------------------------------------------------------------------
    def handle(self, d: Delivery, req: ClaimRequest, received: float) -> None:
        """Assign now, answer ``unavailable`` now, or send the claim to wait."""
        arrived = assign.arrived_at(d.headers.get(topology.ARRIVED_HEADER), received)
        wait = (req.wait_seconds if req.wait_seconds is not None
                else self.settings.claim_wait_seconds)
        try:
            got = self.attempt(req, wait_seconds=wait)
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
    def attempt(self, req: ClaimRequest, *, wait_seconds: int | None
                ) -> Assignment | Wait | Unavailable:
        """The answer this claim can have now, or Wait / Unavailable when no worker is free
        (``wait_seconds=None``: the claim is already waiting)."""
        view = ClaimView(recalled=None)
        tries = [PASSWORD_TRIES]  # workers whose agent may fail to confirm a password
        for _ in range(ROUNDS):
            if tries[0] <= 0:
                break  # two workers failed us already: try again on the next pass
            view = self._read(req)
            plan = self._plan(view, wait_seconds)
            if isinstance(plan, Repeat):
                return Assignment(self._repeat(req, plan.outcome))
            if isinstance(plan, Existing):
                return Assignment(self._existing(req, plan.worker))
            if not isinstance(plan, TryLease):
                return plan
            got = self._lease_first(req, plan.order, tries)
            if got is not None:
                return got
        # every round lost to other dispatchers: as if nothing were free
        nothing_free = self._plan(ClaimView(recalled=None), wait_seconds)
        assert isinstance(nothing_free, (Wait, Unavailable))
        return nothing_free

    def _plan(self, view: ClaimView, wait_seconds: int | None) -> assign.ClaimPlan:
        return assign.claim_plan(view, busy=self._busy.snapshot(self.clock.now()),
                                 max_leases=self.settings.max_leases_per_user,
                                 wait_seconds=wait_seconds, pool=self.pool_view())

    def _read(self, req: ClaimRequest) -> ClaimView:
        """What the plan needs, and no more: a repeat needs nothing else; a user at the limit
        needs no candidates. Candidates are shuffled: several dispatchers read one page."""
        recalled = self.store.requests.recall(req.user_id, req.request_id)
        if recalled is not None:
            return ClaimView(recalled)
        held = tuple(self.store.leases.held_by(req.user_id))
        if len(held) >= self.settings.max_leases_per_user:
            return ClaimView(None, held)
        # a worker silent for HEARTBEAT_TIMEOUT is dead even before the reaper says so
        found = self.store.workers.find_free(
            limit=CANDIDATES, fresh_after=self.clock.now() - self.settings.dead_after)
        random.shuffle(found)
        return ClaimView(None, held, tuple(found))

    def any_free(self) -> bool:
        """One cheap look (a Limit-1 index query) before trying every waiting claim."""
        return bool(self.store.workers.find_free(
            limit=1, fresh_after=self.clock.now() - self.settings.dead_after))

    def _lease_first(self, req: ClaimRequest, order: tuple[Worker, ...], tries: list[int]
                     ) -> Assignment | None:
        """Lease the first worker of ``order`` that is still free; None when the round is
        lost (all taken meanwhile, or a duplicate or the user's other claim won: the next
        read shows which). ``tries``: password confirmations this claim may still wait for
        (each one can take PASSWORD_CONFIRM_SECONDS)."""
        for worker in order:
            if tries[0] <= 0:
                return None
            if not self._busy.take(worker.instance_id, self.clock.now()):
                continue  # another thread of ours picked it a moment ago
            taken = True  # whether the worker is no longer free after this try
            began = time.monotonic()
            try:
                leased = self.store.leases.grant(
                    worker, user_id=req.user_id, request_id=req.request_id,
                    lease_seconds=req.lease_seconds or self.settings.lease_seconds,
                    now=self.clock.now(), max_leases=self.settings.max_leases_per_user,
                    remember_seconds=self.settings.request_memory_seconds,
                    fresh_after=self.clock.now() - self.settings.dead_after)
            except (RequestSeen, UserAtLimit):
                taken = False
                return None
            except ConditionFailed:  # another dispatcher took it: next candidate
                continue
            finally:
                self._busy.done(worker.instance_id, self.clock.now(), taken)
            if not self._still_ours(req, leased, time.monotonic() - began):
                continue
            got = self._with_password(req, leased)
            if got is not None:
                return got
            tries[0] -= 1
        return None

    def _still_ours(self, req: ClaimRequest, leased: Worker, took: float) -> bool:
        """With LEASE_RECHECK_SECONDS (an emulator whose conditional writes are not atomic,
        docs/emulators.md): re-read the lease after a moment, at least twice what our own
        write took; if another write overtook ours, forget ours and try the next worker."""
        if not self.settings.lease_recheck_seconds:
            return True
        time.sleep(min(max(self.settings.lease_recheck_seconds, 2 * took), RECHECK_MAX_SECONDS))
        if self.store.leases.holds(leased.instance_id, user_id=req.user_id,
                                   request_id=req.request_id):
            return True
        self.metrics.leases_lost.inc()
        log.warning("lease lost on recheck: another write overtook ours; trying the next "
                    "worker", extra={"instance_id": leased.instance_id,
                                     "request_id": req.request_id, "user_id": req.user_id})
        self.store.leases.forget(leased.instance_id, user_id=req.user_id,
                                 request_id=req.request_id)
        return False

    def _with_password(self, req: ClaimRequest, leased: Worker) -> Assignment | None:
        """The new lease's reply; with LEASE_PASSWORDS, carrying a password the worker's
        agent confirmed, or None after taking the worker out (draining: the reaper recycles
        it) and undoing the lease, so that the claim tries the next worker."""
        reply = replies.assigned_reply(req.request_id, leased, self.settings.code_server_port)
        if self.passwords is None:
            return Assignment(reply, new_lease=leased)
        ids = {"request_id": req.request_id, "user_id": req.user_id,
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

    def _existing(self, req: ClaimRequest, worker: Worker) -> ClaimReply:
        """The user's held worker, remembered as this request's outcome (unless a duplicate
        of this request stored another meanwhile: that one stands)."""
        stands = self.store.requests.remember(
            req.user_id, req.request_id, {"status": "assigned", "instance_id": worker.instance_id},
            now=self.clock.now(), remember_seconds=self.settings.request_memory_seconds)
        if stands.get("instance_id") != worker.instance_id:
            return self._repeat(req, stands)
        return self._noted(replies.assigned_reply(req.request_id, worker,
                                                  self.settings.code_server_port))

    def _noted(self, reply: ClaimReply) -> ClaimReply:
        """With LEASE_PASSWORDS, an assigned reply without its password says why."""
        return reply if self.passwords is None else replies.password_note(reply)

    # --- answering ------------------------------------------------------------------------
    def deliver(self, d: Delivery, req: ClaimRequest, got: Assignment, arrived: float
                ) -> None:
        """Reply with an assignment, then ack. A new lease whose reply cannot be routed (the
        client's exclusive reply queue is gone) is undone: nobody would ever use it."""
        ids = {"request_id": req.request_id, "user_id": req.user_id,
               "instance_id": got.reply.worker.instance_id if got.reply.worker else None}
        sent = self.send(d, got.reply)
        if got.new_lease is not None and not sent:
            self._undo(req, got.new_lease, ids)
        elif got.new_lease is not None:
            log.info("worker assigned", extra=ids)
            self._tell_scaler(got.new_lease.instance_id, ids)
        self.finish(d, got.reply, arrived, already_sent=True)

    def _undo(self, req: ClaimRequest, leased: Worker, ids: dict[str, Any]) -> None:
        """Nobody can use a lease whose reply could not be routed: its worker is recycled
        (never freed: a repeat may have been told ``assigned`` meanwhile), and a repeat of
        the request is told why."""
        try:
            self.store.leases.undo(
                leased.instance_id, user_id=req.user_id, request_id=req.request_id,
                now=self.clock.now(), outcome=replies.unavailable_outcome(
                    replies.UNDELIVERABLE), remember_seconds=self.settings.request_memory_seconds)
        except ConditionFailed:
            return  # released or reaped meanwhile: nothing left to undo
        log.warning("reply undeliverable; lease given up and its worker recycled", extra=ids)

    def _tell_scaler(self, instance_id: str, ids: dict[str, Any]) -> None:
        """A leased event: the scaler protects the instance at once (a lost one costs
        seconds: it reconciles protection on its own too)."""
        try:
            self.broker.publish(topology.SCALING, LeasedEvent(
                type="leased", instance_id=instance_id, sent_at=now_sent_at()).to_json())
        except Exception as exc:
            log.warning("could not publish leased event", extra={**ids, "error": repr(exc)})

    def answer_unavailable(self, d: Delivery, req: ClaimRequest, reason: str,
                           arrived: float) -> None:
        """Store ``unavailable`` (unless another outcome already stands), reply, ack. With
        DynamoDB unreachable the reply goes out all the same, unstored (one short try: the
        claim's deadline comes first)."""
        store = self.store.quick() if self.store.reachability.down else self.store
        try:
            stands = store.requests.remember(
                req.user_id, req.request_id, replies.unavailable_outcome(reason),
                now=self.clock.now(), remember_seconds=self.settings.request_memory_seconds)
        except AwsUnavailable as exc:
            log.warning("unavailable answered without being remembered: DynamoDB does not "
                        "answer", extra={"request_id": req.request_id, "user_id": req.user_id,
                                         "error": str(exc)[:300]})
            stands = replies.unavailable_outcome(reason)
        if stands.get("status") == "unavailable":
            reply = ClaimReply(request_id=req.request_id, status="unavailable",
                               reason=stands.get("reason"))
        else:
            reply = self._repeat(req, stands)
        log.info("claim unavailable", extra={"request_id": req.request_id,
                                             "user_id": req.user_id, "reason": reply.reason})
        self.finish(d, reply, arrived)

    def finish(self, d: Delivery, reply: ClaimReply, arrived: float,
               already_sent: bool = False) -> None:
        """Reply (unless sent already), count it, ack."""
        if not already_sent:
            self.send(d, reply)
        self.metrics.claims.labels(outcome=reply.status).inc()
        self.metrics.claim_latency.observe(max(0.0, self.clock.now() - arrived))
        d.ack()

    def send(self, d: Delivery, reply: ClaimReply) -> bool:
        """Publish a reply with the request's correlation_id; False if nobody can get it."""
        if not d.reply_to:
            return False
        try:
            self.broker.publish(d.reply_to, reply.to_json(), correlation_id=d.correlation_id)
        except Unroutable:
            log.warning("reply queue is gone", extra={"request_id": reply.request_id})
            return False
        return True
