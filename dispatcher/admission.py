"""What the dispatcher accepts, before anything acts: a body no larger than
``topology.MAX_BODY_BYTES`` (checked before decoding: parsing is the cost a flood would
buy), a message that decodes (unknown fields ignored and counted: rolling upgrades), and,
for a client's request, a sender who may act for its ``user_id`` (CLIENT_AUTH, PROTOCOL v2
§3). A refused request gets a dead-letter entry with its reason, then a ``rejected`` reply;
every refusal is counted by reason."""

from __future__ import annotations

import logging
from typing import Any

from dispatcher import assign, replies
from dispatcher.metrics import Metrics
from shared import topology
from shared.broker import Delivery
from shared.config import Settings
from shared.errors import InvalidMessage
from shared.messages import ClaimReply, LeaseReply, decode, unknown_fields

log = logging.getLogger(__name__)


def too_large(body: bytes, limit: int = topology.MAX_BODY_BYTES) -> str | None:
    """The refusal reason for a body over ``limit`` bytes, else None."""
    if len(body) > limit:
        return f"body too large: {len(body)} bytes (limit {limit})"
    return None


class Admission:
    def __init__(self, *, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics

    def admit(self, d: Delivery, kind: Any, reply: type[ClaimReply] | type[LeaseReply]
              ) -> Any:
        """The decoded request, if valid and its sender may act for its user_id
        (CLIENT_AUTH); else None, after a dead-letter entry and a ``rejected`` reply."""
        oversized = too_large(d.body)
        if oversized:  # request_id unknown: the body is not even looked at
            self.reject(d, reply(request_id=None, status="rejected", reason=oversized),
                        "too large")
            return None
        try:
            req = decode(kind, d.body)
        except InvalidMessage as exc:
            self.reject(d, reply(request_id=exc.request_id, status="rejected",
                                 reason=exc.reason), "invalid")
            return None
        self.count_unknown(req, getattr(req, "type", "claim"))
        s = self.settings
        sender = assign.sender_of(d.user_id, d.headers, s.service_user_names)
        if not assign.acts_for(s.client_auth, sender, req.user_id,
                               s.service_user_names | s.gateway_user_names):
            self.reject(d, reply(request_id=req.request_id, status="rejected",
                                 reason=replies.USER_ID_NOT_SENDER), "user_id")
            return None
        return req

    def count_unknown(self, msg: Any, kind: str) -> None:
        extra = unknown_fields(msg)
        if extra:
            self.metrics.unknown_fields.labels(type=kind).inc(len(extra))
            log.debug("unknown fields ignored", extra={"type": kind, "fields": extra})

    def reject(self, d: Delivery, reply: ClaimReply | LeaseReply, kind: str) -> None:
        """A refused request: a dead-letter entry, then a ``rejected`` reply."""
        log.warning("request rejected", extra={"request_id": reply.request_id,
                                               "reason": reply.reason, "queue": d.queue})
        self.metrics.count_refused(d.queue, kind)
        d.dead_letter(reply.reason or "invalid request", reply=reply.to_json())

    def decode(self, d: Delivery, kind: Any) -> Any:
        """A message that needs no reply: InvalidMessage (an oversized body included) is
        counted here and dead-lettered with its reason by the consumer."""
        oversized = too_large(d.body)
        if oversized:
            self.metrics.count_refused(d.queue, "too large")
            raise InvalidMessage(oversized)
        try:
            return decode(kind, d.body)
        except InvalidMessage:
            self.metrics.count_refused(d.queue, "invalid")
            raise
