"""How a claim is answered (ClaimService's, claims.py): reply, then ack; a lease whose reply
cannot be delivered is undone by recycling its worker; ``unavailable`` is stored before it is
sent; a redelivery of a claim already answered (an ack lost with a broker node) is not
answered twice."""

from __future__ import annotations

import logging
import threading
from typing import Any

from dispatcher import assign, replies
from dispatcher.assign import Assignment
from dispatcher.metrics import Metrics
from shared import topology
from shared.broker import BrokerLike, Delivery
from shared.clock import Clock
from shared.config import Settings
from shared.errors import AwsUnavailable, ConditionFailed, Unroutable
from shared.messages import ClaimReply, ClaimRequest, LeasedEvent, now_sent_at
from shared.state import Worker
from shared.store import Store

log = logging.getLogger(__name__)


class Answering:
    """Expects ClaimService's ``settings``, ``store``, ``broker``, ``clock``, ``metrics``
    and ``_repeated``."""

    settings: Settings
    store: Store
    broker: BrokerLike
    clock: Clock
    metrics: Metrics
    _leased: list[str]  # leased since the last leased event (tell_scaler)
    _leased_lock: threading.Lock

    def _repeated(self, req: ClaimRequest, outcome: dict[str, Any]) -> Assignment:
        raise NotImplementedError

    # --- answering ------------------------------------------------------------------------
    def deliver(self, d: Delivery, req: ClaimRequest, got: Assignment, arrived: float
                ) -> None:
        """Reply with an assignment, then ack. A new lease whose reply cannot be routed (the
        client's exclusive reply queue is gone) is undone: nobody would ever use it."""
        ids = {"request_id": req.request_id, "user_id": req.user_id,
               "instance_id": got.reply.worker.instance_id if got.reply.worker else None}
        if assign.answered_already(maybe_a_copy(d), assign.reply_key(d.reply_to, d.correlation_id),
                                   got.answered_to):
            log.info("redelivered claim was answered already: not answered twice", extra=ids)
            self.finish(d, got.reply, arrived, already_sent=True)
            return
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
        """Noted for the next leased event (``tell_scaler``, after the reply and off the
        claim's thread: one event per batch of leases)."""
        with self._leased_lock:
            self._leased.append(instance_id)

    def tell_scaler(self) -> None:
        """The ticker's job: one leased event for every lease since the last one. The
        scaler protects those instances at once, and counts them off its free workers (a
        lost event costs seconds: it reconciles protection and counts on its own too)."""
        with self._leased_lock:
            leased, self._leased = self._leased, []
        if not leased:
            return
        try:
            self.broker.publish(topology.SCALING, LeasedEvent(
                type="leased", instance_id=leased[0], instance_ids=leased,
                sent_at=now_sent_at()).to_json())
        except Exception as exc:
            log.warning("could not publish leased event", extra={"instance_ids": leased,
                                                                 "error": repr(exc)})

    def answer_unavailable(self, d: Delivery, req: ClaimRequest, reason: str,
                           arrived: float) -> None:
        """Store ``unavailable`` (unless another outcome already stands: one short try, the
        claim's deadline comes first), reply, ack. With DynamoDB unreachable the reply goes
        out at once, unstored. A redelivery of a claim answered already is not answered
        twice."""
        ids = {"request_id": req.request_id, "user_id": req.user_id}
        key = assign.reply_key(d.reply_to, d.correlation_id)
        won, stands = True, replies.unavailable_outcome(reason)
        try:
            if self.store.reachability.down:  # the deadline first: no call that would hang
                raise AwsUnavailable(self.store.reachability.reason or "AWS does not answer")
            won, stands = self.store.quick().requests.settle(
                req.user_id, req.request_id, {**stands, "reply": key},
                now=self.clock.now(), remember_seconds=self.settings.request_memory_seconds)
        except AwsUnavailable as exc:
            log.warning("unavailable answered without being remembered: DynamoDB does not "
                        "answer", extra={**ids, "error": str(exc)[:300]})
        if won:
            reply = ClaimReply(request_id=req.request_id, status="unavailable", reason=reason)
        else:
            got = self._repeated(req, stands)
            if assign.answered_already(maybe_a_copy(d), key, got.answered_to):
                log.info("redelivered claim was answered already: not answered twice",
                         extra=ids)
                self.finish(d, got.reply, arrived, already_sent=True)
                return
            reply = got.reply
        log.info("claim unavailable" if reply.status == "unavailable" else "claim answered",
                 extra={**ids, "status": reply.status, "reason": reply.reason})
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


def maybe_a_copy(d: Delivery) -> bool:
    """Whether this claim may have been answered through another delivery: a redelivery, or
    a waiting-room copy (a claim moved there whose ack on ``workerpool.claims`` was lost,
    e.g. with a broker node, comes back there too)."""
    return d.redelivered or d.queue == topology.WAITING
