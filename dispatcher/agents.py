"""Agent messages (PROTOCOL §4): register and deregister (heartbeats, the bulk of the
traffic, are dispatcher/heartbeats.py's).

A registration is believed only for an instance of our Auto Scaling Group
(dispatcher.membership).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dispatcher import replies
from dispatcher.attestation import AgentCheck, Refused
from dispatcher.membership import AsgMembers
from dispatcher.metrics import Metrics
from shared.broker import Delivery
from shared.clock import Clock
from shared.errors import ConditionFailed
from shared.messages import Deregister, Register
from shared.state import Worker
from shared.store import KeyMismatch, Store

log = logging.getLogger(__name__)


class AgentService:
    def __init__(self, *, store: Store, members: AsgMembers, asg_name: str, clock: Clock,
                 metrics: Metrics, check: AgentCheck,
                 on_seen: Callable[[Worker], None] = lambda w: None) -> None:
        self.store = store
        self.members = members
        self.asg_name = asg_name
        self.clock = clock
        self.metrics = metrics
        self.check = check  # attestation and signatures (PROTOCOL §4 v2)
        #: told what a write returned (the claim path's warm set of free workers)
        self.on_seen = on_seen

    # --- register / deregister -----------------------------------------------------------
    def register(self, d: Delivery, msg: Register, seen_at: float) -> None:
        ids = {"instance_id": msg.instance_id}
        if not self.members.contains(msg.instance_id, seen_at):
            self.metrics.registrations.labels(result="refused").inc()
            self.check.refuse(d, "not in asg",
                              replies.not_in_asg_reason(msg.instance_id, self.asg_name))
            return
        try:
            key = self.check.register_key(d, msg)
            worker = self.store.workers.register(
                msg.instance_id, now=self.clock.now(), private_ip=msg.private_ip,
                public_ip=msg.public_ip, instance_type=msg.instance_type,
                availability_zone=msg.availability_zone, agent_version=msg.agent_version,
                agent_key=key, tls_fingerprint=msg.tls_fingerprint)
        except (Refused, KeyMismatch) as exc:
            self.metrics.registrations.labels(result="refused").inc()
            kind = "unattested" if isinstance(exc, Refused) else "agent key"
            self.check.refuse(d, kind, f"{exc} (instance {msg.instance_id})")
            return
        except ConditionFailed:
            log.warning("registration of a draining or dead worker ignored", extra=ids)
            self.metrics.registrations.labels(result="stale").inc()
            d.ack()
            return
        self.check.keys.remember(msg.instance_id, key or "")
        log.info("worker registered", extra={**ids, "status": worker.status,
                                             "attested": self.check.attested})
        self.metrics.registrations.labels(result="registered").inc()
        d.ack()
        self.on_seen(worker)

    def deregister(self, d: Delivery, msg: Deregister) -> None:
        if not self.check.verified(d, msg.instance_id):
            return
        try:
            self.on_seen(self.store.workers.deregister(msg.instance_id, now=self.clock.now(),
                                                       reason=msg.reason or "deregistered"))
            log.info("worker deregistered", extra={"instance_id": msg.instance_id,
                                                    "reason": msg.reason})
        except ConditionFailed:
            log.debug("deregister of an unknown or gone worker",
                      extra={"instance_id": msg.instance_id})
        d.ack()
