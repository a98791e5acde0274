"""Claims (PROTOCOL §3): answer each on its reply_to, exactly once, with a conditional lease.

Runs on the dispatcher's worker threads. Every answer follows the same order: the outcome
is stored (the lease transaction, or ``store.remember``), then the reply is published (with
a confirm), and only then is the delivery acked. A crash anywhere before the ack means a
redelivery, which finds the stored outcome and answers the same thing again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dispatcher import assign
from dispatcher.metrics import Metrics
from dispatcher.passwords import Passwords
from shared import topology
from shared.broker import Broker, Delivery
from shared.clock import Clock
from shared.config import Settings
from shared.errors import ConditionFailed, Unroutable
from shared.messages import ClaimReply, ClaimRequest, LeasedEvent, now_sent_at
from shared.state import Worker
from shared.store import RequestSeen, Store, UserAtLimit

log = logging.getLogger("workerpool.dispatcher")

#: Free workers asked for per index query (a page of 25 is still one read request).
#: Several dispatchers ask the same index at once, so each shuffles its candidates; a round lost
#: entirely to races is followed by a fresh
#: query (the index no longer lists the workers just leased), up to ROUNDS times.
CANDIDATES = 25
ROUNDS = 5
#: The longest a lease recheck waits, however slow the emulator's writes are.
RECHECK_MAX_SECONDS = 2.0


@dataclass(frozen=True)
class Assignment:
    """A claim's answer, and the worker if it was leased just now (not a repeat)."""

    reply: ClaimReply
    new_lease: Worker | None = None


class Busy:
    """Workers this process is leasing now or leased a moment ago (thread-safe).

    Our own threads skip them: without this, 8 threads reading the same index page race
    each other for the same few workers, and every lost race is a wasted transaction. The
    "moment ago" part covers the index lag of DynamoDB (a GSI is eventually consistent: a
    worker leased just now may still be listed as free for a fraction of a second).
    """

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def snapshot(self, now: float) -> frozenset[str]:
        with self._lock:
            for iid in [i for i, t in self._until.items() if t <= now]:
                del self._until[iid]
            return frozenset(self._until)

    def take(self, instance_id: str, now: float) -> bool:
        with self._lock:
            if self._until.get(instance_id, 0.0) > now:
                return False
            self._until[instance_id] = float("inf")
            return True

    def done(self, instance_id: str, now: float, taken: bool) -> None:
        with self._lock:
            if taken:
                self._until[instance_id] = now + assign.RECENTLY_TRIED_SECONDS
            else:
                self._until.pop(instance_id, None)


class ClaimService:
    def __init__(self, *, settings: Settings, store: Store, broker: Broker, clock: Clock,
                 metrics: Metrics, pool_view: Callable[[], assign.PoolView],
                 passwords: Passwords | None = None) -> None:
        self.s = settings
        self.passwords = passwords  # set: LEASE_PASSWORDS is on
        self.store = store
        self.broker = broker
        self.clock = clock
        self.metrics = metrics
        self.pool_view = pool_view
        self._busy = Busy()

    # --- the claim path -------------------------------------------------------------------
    def handle(self, d: Delivery, req: ClaimRequest, received: float) -> None:
        """A new claim: assign now, or answer ``unavailable`` now, or send it to wait."""
        arrived = assign.arrived_at(d.headers.get(topology.ARRIVED_HEADER), received)
        wait = req.wait_seconds if req.wait_seconds is not None else self.s.claim_wait_seconds
        got = self.try_assign(req)
        if got is not None:
            self.deliver(d, req, got, arrived)
            return
        if assign.no_free_worker(wait) == "unavailable":
            self.answer_unavailable(d, req, assign.timeout_reason(0, self.pool_view()),
                                    arrived)
            return
        # wait in the single-active-consumer queue, keeping the client's reply address
        self.broker.publish(topology.WAITING, d.body, reply_to=d.reply_to,
                            correlation_id=d.correlation_id,
                            headers=assign.waiting_headers(d.headers, arrived))
        log.info("claim waits for a free worker",
                 extra={"request_id": req.request_id, "user_id": req.user_id,
                        "wait_seconds": wait})
        d.ack()

    def try_assign(self, req: ClaimRequest) -> Assignment | None:
        """What to answer if this claim can be answered now (a new lease, the user's
        existing worker, or the first outcome of a repeated request); None when no worker
        is free."""
        recalled = self.store.recall(req.user_id, req.request_id)
        held = [] if recalled is not None else self.store.user_leases(req.user_id)
        step = assign.claim_step(recalled, held, self.s.max_leases_per_user)
        if step == "repeat":
            assert recalled is not None
            return Assignment(self._repeat(req, recalled))
        if step == "existing":
            return Assignment(self._existing(req, held))
        for _ in range(ROUNDS):
            # a worker silent for HEARTBEAT_TIMEOUT is dead even before the reaper says so
            fresh_after = self.clock.now() - self.s.dead_after
            found = self.store.find_free(limit=CANDIDATES, fresh_after=fresh_after)
            if not found:
                return None
            random.shuffle(found)
            for worker in assign.untried(found, self._busy.snapshot(self.clock.now())):
                if not self._busy.take(worker.instance_id, self.clock.now()):
                    continue  # another thread of ours picked it a moment ago
                taken = True  # whether the worker is no longer free after this try
                began = time.monotonic()
                try:
                    leased = self.store.lease(
                        worker, user_id=req.user_id, request_id=req.request_id,
                        lease_seconds=req.lease_seconds or self.s.lease_seconds,
                        now=self.clock.now(), max_leases=self.s.max_leases_per_user,
                        remember_seconds=self.s.request_memory_seconds,
                        fresh_after=fresh_after)
                except RequestSeen as exc:  # a duplicate was answered meanwhile
                    taken = False
                    return Assignment(self._repeat(req, exc.outcome))
                except UserAtLimit:  # the user's other claim won meanwhile
                    taken = False
                    held = self.store.user_leases(req.user_id)
                    if held:
                        return Assignment(self._existing(req, held))
                    continue
                except ConditionFailed:  # another dispatcher took it: next candidate
                    continue
                finally:
                    self._busy.done(worker.instance_id, self.clock.now(), taken)
                if not self._still_ours(req, leased, time.monotonic() - began):
                    continue
                reply = assign.assigned_reply(req.request_id, leased, self.s.code_server_port)
                if self.passwords is None:
                    return Assignment(reply, new_lease=leased)
                password = self._password(req, leased)
                if password is not None:
                    return Assignment(assign.with_password(reply, password), new_lease=leased)
                # its code-server's password is unknown now: nobody gets it; next candidate
        return None

    def _still_ours(self, req: ClaimRequest, leased: Worker, took: float) -> bool:
        """With LEASE_RECHECK_SECONDS (an emulator's non-atomic writes): re-read the lease
        after a moment; if another write overtook ours, forget ours and try the next worker.
        The moment is at least twice what our own lease took, since a competing write that
        began before ours lands about as late (on moto a transaction copies the whole
        table, so it grows with the pool). Real DynamoDB never fails this check: off there."""
        if not self.s.lease_recheck_seconds:
            return True
        time.sleep(min(max(self.s.lease_recheck_seconds, 2 * took), RECHECK_MAX_SECONDS))
        if self.store.holds(leased.instance_id, user_id=req.user_id,
                            request_id=req.request_id):
            return True
        self.metrics.leases_lost.inc()
        log.warning("lease lost on recheck: another write overtook ours (the AWS endpoint's "
                    "conditional writes are not atomic); trying the next worker",
                    extra={"instance_id": leased.instance_id, "request_id": req.request_id,
                           "user_id": req.user_id})
        self.store.forget_lease(leased.instance_id, user_id=req.user_id,
                                request_id=req.request_id)
        return False

    def _password(self, req: ClaimRequest, leased: Worker) -> str | None:
        """A per-lease password confirmed by the worker's agent, or None after taking the
        worker out (draining, so the reaper recycles it) and undoing the lease."""
        assert self.passwords is not None
        ids = {"request_id": req.request_id, "user_id": req.user_id,
               "instance_id": leased.instance_id}
        password = self.passwords.set_for(leased.instance_id, ids)
        if password is not None:
            self.metrics.passwords.labels(result="set").inc()
            return password
        try:
            self.store.abandon(leased.instance_id, user_id=req.user_id,
                               request_id=req.request_id, now=self.clock.now(),
                               reason=assign.PASSWORD_NOT_CONFIRMED)
        except ConditionFailed:  # taken out meanwhile (deregistered, reaped): fine
            pass
        self.metrics.passwords.labels(result="not_confirmed").inc()
        log.warning("worker taken out: %s", assign.PASSWORD_NOT_CONFIRMED, extra=ids)
        return None

    def deliver(self, d: Delivery, req: ClaimRequest, got: Assignment, arrived: float
                ) -> None:
        """Reply with an assignment, then ack. A new lease whose reply cannot be routed (the
        client's exclusive reply queue is gone) is undone: nobody would ever use it."""
        ids = {"request_id": req.request_id, "user_id": req.user_id,
               "instance_id": got.reply.worker.instance_id if got.reply.worker else None}
        sent = self.send(d, got.reply)
        if got.new_lease is not None and not sent:
            self.store.unlease(got.new_lease.instance_id, user_id=req.user_id,
                               request_id=req.request_id)
            log.warning("reply undeliverable; lease undone", extra=ids)
        elif got.new_lease is not None:
            log.info("worker assigned", extra=ids)
            try:
                self.broker.publish(topology.SCALING, LeasedEvent(
                    type="leased", instance_id=got.new_lease.instance_id,
                    sent_at=now_sent_at()).to_json())
            except Exception as exc:  # the scaler reconciles protection on its own too
                log.warning("could not publish leased event",
                            extra={**ids, "error": repr(exc)})
        self.finish(d, got.reply, arrived, already_sent=True)

    def _repeat(self, req: ClaimRequest, outcome: dict[str, Any]) -> ClaimReply:
        worker = None
        if outcome.get("status") == "assigned" and outcome.get("instance_id"):
            worker = self.store.get(str(outcome["instance_id"]))
        log.info("repeated claim answered with its first outcome",
                 extra={"request_id": req.request_id, "user_id": req.user_id,
                        "status": outcome.get("status")})
        return self._noted(assign.repeated_claim_reply(req.request_id, outcome, worker,
                                                       self.s.code_server_port))

    def _noted(self, reply: ClaimReply) -> ClaimReply:
        """With LEASE_PASSWORDS, an assigned reply without its password says why."""
        return reply if self.passwords is None else assign.password_note(reply)

    def _existing(self, req: ClaimRequest, held: list[Worker]) -> ClaimReply:
        worker = held[0]
        stands = self.store.remember(
            req.user_id, req.request_id, {"status": "assigned", "instance_id": worker.instance_id},
            now=self.clock.now(), remember_seconds=self.s.request_memory_seconds)
        if stands.get("instance_id") != worker.instance_id:
            return self._repeat(req, stands)
        return self._noted(assign.assigned_reply(req.request_id, worker,
                                                 self.s.code_server_port))

    # --- answering ------------------------------------------------------------------------
    def answer_unavailable(self, d: Delivery, req: ClaimRequest, reason: str,
                           arrived: float) -> None:
        """Store ``unavailable`` (unless another outcome already stands), reply, ack."""
        stands = self.store.remember(req.user_id, req.request_id,
                                     assign.unavailable_outcome(reason), now=self.clock.now(),
                                     remember_seconds=self.s.request_memory_seconds)
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
