"""Release and renew (PROTOCOL §3), only by the lease's holder.

A stranger, a lease that expired or a worker that does not exist all get ``not_found``:
the reply never tells whether the lease exists for someone else. The outcome is stored
under the request_id before the reply, so a repeated request gets the same answer.
"""

from __future__ import annotations

import logging

from dispatcher import assign, replies
from dispatcher.metrics import Metrics
from shared.broker import BrokerLike, Delivery
from shared.clock import Clock, iso
from shared.config import Settings
from shared.errors import ConditionFailed, Unroutable
from shared.messages import LeaseReply, ReleaseRequest, RenewRequest
from shared.store import Store

log = logging.getLogger(__name__)


class LeaseService:
    def __init__(self, *, settings: Settings, store: Store, broker: BrokerLike, clock: Clock,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.clock = clock
        self.metrics = metrics

    def handle(self, d: Delivery, req: ReleaseRequest | RenewRequest) -> None:
        recalled = self.store.requests.recall(req.user_id, req.request_id)
        if recalled is not None:
            reply = replies.repeated_lease_reply(req.request_id, recalled)
        else:
            reply = self._apply(req)
            stands = self.store.requests.remember(req.user_id, req.request_id,
                                         replies.lease_reply_outcome(reply),
                                         now=self.clock.now(),
                                         remember_seconds=self.settings.request_memory_seconds)
            reply = replies.repeated_lease_reply(req.request_id, stands)
        log.info("lease request answered",
                 extra={"request_id": req.request_id, "user_id": req.user_id,
                        "instance_id": req.instance_id, "type": req.type,
                        "status": reply.status})
        self.reply(d, reply)
        self.metrics.leases.labels(status=reply.status).inc()
        d.ack()

    def _apply(self, req: ReleaseRequest | RenewRequest) -> LeaseReply:
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

    def reply(self, d: Delivery, reply: LeaseReply) -> None:
        if not d.reply_to:
            return
        try:
            self.broker.publish(d.reply_to, reply.to_json(), correlation_id=d.correlation_id)
        except Unroutable:
            log.warning("reply queue is gone", extra={"request_id": reply.request_id})
