"""Release and renew (PROTOCOL §3), only by the lease's holder; v2: cancel (cancel.py) and
status (status.py), which come on the same queue.

A stranger, a lease that expired or a worker that does not exist all get ``not_found``:
the reply never tells whether the lease exists for someone else. The outcome is stored
under the request_id before the reply, so a repeated request gets the same answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dispatcher import assign, cancel, replies
from dispatcher.metrics import Metrics
from dispatcher.status import StatusService
from shared import topology
from shared.broker import BrokerLike, Delivery
from shared.clock import Clock, iso
from shared.config import Settings
from shared.errors import ConditionFailed, Unroutable
from shared.messages import (
    CancelRequest,
    LeaseReply,
    ReleaseRequest,
    RenewRequest,
    StatusReply,
    StatusRequest,
)
from shared.store import Store

Request = ReleaseRequest | RenewRequest | CancelRequest

log = logging.getLogger(__name__)


class LeaseService:
    def __init__(self, *, settings: Settings, store: Store, broker: BrokerLike, clock: Clock,
                 metrics: Metrics, status: StatusService) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.clock = clock
        self.metrics = metrics
        self.status = status

    def handle(self, d: Delivery, req: Request | StatusRequest) -> None:
        if isinstance(req, StatusRequest):  # nothing to remember: it changes nothing
            self.reply(d, self.status.answer(req))
            self.metrics.leases.labels(status="status").inc()
            d.ack()
            return
        recalled = self.store.requests.recall(req.user_id, req.request_id)
        if recalled is not None:
            reply = replies.repeated_lease_reply(req.request_id, recalled)
        else:
            got = self._apply(d, req)
            if got is None:
                d.ack()  # forwarded to the waiting room, which answers it (finish_cancel)
                return
            reply = self._remember(req, got)
        self._answer(d, req, reply)

    def _remember(self, req: Request, reply: LeaseReply) -> LeaseReply:
        """Store the outcome under the request_id (unless one stands: that one is sent)."""
        stands = self.store.requests.remember(
            req.user_id, req.request_id, replies.lease_reply_outcome(reply),
            now=self.clock.now(), remember_seconds=self.settings.request_memory_seconds)
        return replies.repeated_lease_reply(req.request_id, stands)

    def _answer(self, d: Delivery, req: Request, reply: LeaseReply) -> None:
        log.info("lease request answered",
                 extra={"request_id": req.request_id, "user_id": req.user_id, "type": req.type,
                        "instance_id": reply.instance_id, "status": reply.status})
        self.reply(d, reply)
        self.metrics.leases.labels(status=reply.status).inc()
        d.ack()

    # --- cancel ------------------------------------------------------------------------------
    def _cancel(self, d: Delivery, req: CancelRequest) -> LeaseReply | None:
        """Settle the claim as cancelled; None when the waiting room is to answer."""
        won, stands = self.store.requests.settle(
            req.user_id, req.claim_request_id, replies.cancelled_outcome(),
            now=self.clock.now(), remember_seconds=self.settings.request_memory_seconds)
        plan = cancel.cancel_plan(req, won, stands)
        if isinstance(plan, cancel.Forward):
            # behind the claim in the waiting queue: its holder answers both
            self.broker.publish(topology.WAITING, d.body, reply_to=d.reply_to,
                                correlation_id=d.correlation_id,
                                headers=cancel.forwarded_headers())
            return None
        if isinstance(plan, cancel.Release):
            return self._apply(d, ReleaseRequest(type="release", request_id=req.request_id,
                                                 user_id=req.user_id,
                                                 instance_id=plan.instance_id))
        return plan

    def finish_cancel(self, d: Delivery, req: CancelRequest,
                      withdraw: Callable[[str, str], bool]) -> None:
        """A cancel forwarded to the waiting room: ``withdraw`` answers the claim
        ``cancelled`` if the room holds it; the cancel is answered and remembered."""
        if withdraw(req.user_id, req.claim_request_id):
            reply = LeaseReply(request_id=req.request_id, status="cancelled",
                               reason=replies.CANCELLED)
        else:
            reply = LeaseReply(request_id=req.request_id, status="not_found",
                               reason=replies.not_waiting_reason(req.user_id,
                                                                 req.claim_request_id))
        self._answer(d, req, self._remember(req, reply))

    # --- release and renew -------------------------------------------------------------------
    def _apply(self, d: Delivery, req: Request) -> LeaseReply | None:
        if isinstance(req, CancelRequest):
            return self._cancel(d, req)
        now = self.clock.now()
        try:
            if isinstance(req, ReleaseRequest):
                self.store.leases.release(req.instance_id, user_id=req.user_id, now=now)
                return LeaseReply(request_id=req.request_id, status="released",
                                  instance_id=req.instance_id)
            worker = self.store.leases.renew(
                req.instance_id, user_id=req.user_id,
                lease_seconds=req.lease_seconds or self.settings.lease_seconds, now=now)
            return LeaseReply(request_id=req.request_id, status="renewed",
                              instance_id=req.instance_id,
                              lease_expiry=iso(worker.lease_expiry))
        except ConditionFailed as exc:
            if isinstance(req, ReleaseRequest) and assign.release_was_ours(exc.item,
                                                                             req.user_id):
                return LeaseReply(request_id=req.request_id, status="released",
                                  instance_id=req.instance_id)
            return LeaseReply(request_id=req.request_id, status="not_found",
                              instance_id=req.instance_id)

    def reply(self, d: Delivery, reply: LeaseReply | StatusReply) -> None:
        if not d.reply_to:
            return
        try:
            self.broker.publish(d.reply_to, reply.to_json(), correlation_id=d.correlation_id)
        except Unroutable:
            log.warning("reply queue is gone", extra={"request_id": reply.request_id})
