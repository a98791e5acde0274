"""Agent messages (PROTOCOL §4): register, heartbeat, deregister.

A registration is believed only for an instance of our Auto Scaling Group
(dispatcher.membership). Heartbeats are the bulk of the traffic (10,000 agents at one per
15 s is 667 msg/s, and a DynamoDB write costs a few ms): they are written by the worker
pool in parallel, and the heartbeats of one instance that queue up behind each other are
written once, with the newest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dispatcher import assign, replies
from dispatcher.attestation import AgentCheck, Refused
from dispatcher.membership import AsgMembers
from dispatcher.metrics import Metrics
from shared.broker import Delivery
from shared.clock import Clock
from shared.errors import AwsUnavailable, ConditionFailed
from shared.messages import Deregister, Heartbeat, Register
from shared.store import KeyMismatch, Store

log = logging.getLogger(__name__)


class AgentService:
    def __init__(self, *, store: Store, members: AsgMembers, asg_name: str, clock: Clock,
                 metrics: Metrics, check: AgentCheck,
                 on_free: Callable[[], None] = lambda: None,
                 dead_after: float | None = None) -> None:
        self.store = store
        #: heartbeats sent longer ago than this are a backlog, not a sign of life
        self.dead_after = dead_after
        self.members = members
        self.asg_name = asg_name
        self.clock = clock
        self.metrics = metrics
        self.check = check  # attestation and signatures (PROTOCOL §4 v2)
        self.on_free = on_free
        # instance id -> heartbeats not yet written: [(sent_at, healthy, delivery)]
        self._pending: dict[str, list[tuple[float, bool, Delivery]]] = {}
        self._lock = threading.Lock()

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
        if worker.status == "free":
            self.on_free()

    def deregister(self, d: Delivery, msg: Deregister) -> None:
        if not self.check.verified(d, msg.instance_id):
            return
        try:
            self.store.workers.deregister(msg.instance_id, now=self.clock.now(),
                                          reason=msg.reason or "deregistered")
            log.info("worker deregistered", extra={"instance_id": msg.instance_id,
                                                    "reason": msg.reason})
        except ConditionFailed:
            log.debug("deregister of an unknown or gone worker",
                      extra={"instance_id": msg.instance_id})
        d.ack()

    # --- heartbeats ----------------------------------------------------------------------
    def queue_heartbeat(self, d: Delivery, msg: Heartbeat) -> bool:
        """Add a heartbeat; True if its instance needs a write job (none is queued yet)."""
        with self._lock:
            beats = self._pending.setdefault(msg.instance_id, [])
            sent = msg.sent_at.timestamp() if msg.sent_at else self.clock.now()
            beats.append((sent, msg.healthy, d))
            return len(beats) == 1

    def write_heartbeats(self, instance_id: str) -> None:
        """One write for every heartbeat of this instance queued so far, then ack them."""
        with self._lock:
            queued = self._pending.pop(instance_id, [])
        if self.check.attested and self.check.keys.get(instance_id) is None:
            # before its (attested) registration landed: nothing to verify them with, and
            # nothing they could change (only a registered worker's heartbeat is written)
            log.debug("heartbeats before the registration ignored",
                      extra={"instance_id": instance_id, "count": len(queued)})
            for _, _, d in queued:
                d.ack()
            return
        beats = [b for b in queued if self.check.verified(b[2], instance_id)]
        if not beats:
            return
        newest, healthy = assign.latest_heartbeat([(t, h) for t, h, _ in beats])
        if self.dead_after is not None and self.clock.now() - newest > self.dead_after:
            # replayed after an outage: writing it would keep a dead worker alive
            log.info("stale heartbeats dropped", extra={"instance_id": instance_id,
                                                         "count": len(beats)})
            for _, _, d in beats:
                d.ack()
            return
        try:
            self.store.workers.heartbeat(instance_id, healthy=healthy, now=self.clock.now())
        except ConditionFailed:
            log.debug("heartbeat of an unknown or draining worker",
                      extra={"instance_id": instance_id})
        except AwsUnavailable as exc:
            # dropped, not requeued: the agent's next heartbeat says the same, newer, and the
            # reaper counts silence from AWS's recovery (our outage reclaims nothing)
            self.metrics.heartbeat_writes_failed.inc()
            log.warning("heartbeats not written: AWS does not answer",
                        extra={"instance_id": instance_id, "error": str(exc)[:200]})
            for _, _, d in queued:
                d.ack()
            return
        except Exception:  # a bug: hand them back to the broker, then say so
            for _, _, d in queued:
                d.nack(requeue=True)
            raise
        self.metrics.heartbeat_writes.inc()
        self.metrics.heartbeats.inc(len(beats))
        for _, _, d in beats:
            d.ack()
