"""Heartbeats (PROTOCOL §4): the pool's bulk traffic, written in batches.

10,000 agents at one per 15 s are 667 heartbeats a second, and one UpdateItem through boto3
costs more CPU than all the rest of a heartbeat's handling. So heartbeats queue up by
instance; a write job takes up to 25 instances' heartbeats (a job as soon as 25 instances
wait, and every FLUSH_SECONDS one for whatever waits: a heartbeat waits 0.1 s at most), writes
the newest of each instance (and the newest user activity they report, v2), and the healthy
ones go in one BatchExecuteStatement (shared/store/heartbeats.py). An unhealthy heartbeat,
or a table that does not apply PartiQL (moto), is one UpdateItem, as before.

A heartbeat never fails a claim and is never retried by us: if DynamoDB refuses or does not
answer, it is acknowledged and dropped (the agent's next one says the same, newer, and the
reaper counts silence from AWS's recovery).
"""

from __future__ import annotations

import logging
import threading
from itertools import islice
from typing import NamedTuple

from dispatcher import assign
from dispatcher.attestation import AgentCheck
from dispatcher.free import FreeSet
from dispatcher.metrics import Metrics
from shared.broker import Delivery
from shared.clock import Clock
from shared.errors import AwsUnavailable, ConditionFailed
from shared.messages import Heartbeat
from shared.store import Store
from shared.store.heartbeats import BATCH, Beat, Result

log = logging.getLogger(__name__)

#: How long a heartbeat may wait for others to share its write (agents beat every 15 s).
FLUSH_SECONDS = 0.1

class _Queued(NamedTuple):
    """A heartbeat waiting to be written."""

    sent: float
    healthy: bool
    delivery: Delivery
    activity: float | None  # v2 last_activity (epoch seconds), None: not reported

class HeartbeatService:
    def __init__(self, *, store: Store, clock: Clock, metrics: Metrics, check: AgentCheck,
                 free: FreeSet, dead_after: float | None = None) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.check = check  # signatures (PROTOCOL §4 v2)
        self.free = free  # the claim path's warm set: told what each write found
        #: heartbeats sent longer ago than this are a backlog, not a sign of life
        self.dead_after = dead_after
        self._pending: dict[str, list[_Queued]] = {}  # instance id -> not yet written
        self._jobs = 0  # write jobs submitted and not started (each takes up to BATCH)
        self._lock = threading.Lock()

    def queue(self, d: Delivery, msg: Heartbeat) -> bool:
        """Add a heartbeat; True if a write job must be submitted now (a full batch of
        instances waits that no job is yet for; the rest wait for ``flush``)."""
        sent = msg.sent_at.timestamp() if msg.sent_at else self.clock.now()
        # last_activity: v2, absent from a v1 agent's heartbeat
        activity = msg.last_activity.timestamp() if msg.last_activity else None
        with self._lock:
            beats = self._pending.setdefault(msg.instance_id, [])
            beats.append(_Queued(sent, msg.healthy, d, activity))
            return len(beats) == 1 and self._claim_job(full=True)

    def flush(self) -> bool:
        """Every FLUSH_SECONDS: True if a write job must be submitted for what waits."""
        with self._lock:
            return self._claim_job(full=False)

    def _claim_job(self, *, full: bool) -> bool:
        waiting = len(self._pending) - self._jobs * BATCH  # instances no job will take
        if waiting >= (BATCH if full else 1):
            self._jobs += 1
            return True
        return False

    def write(self) -> None:
        """One write job: up to BATCH instances' heartbeats, then acknowledge them."""
        with self._lock:
            self._jobs -= 1
            taken = {iid: self._pending.pop(iid) for iid in list(islice(self._pending, BATCH))}
        beats = [b for b in (self._newest(iid, queued) for iid, queued in taken.items()) if b]
        deliveries = [b.delivery for queued in taken.values() for b in queued]
        try:
            batched = [b for b in beats if b.healthy] if self.store.heartbeats.available() \
                else []
            outcomes = self._batch(batched) if batched else {}
            for b in beats:
                if b.instance_id not in outcomes:
                    outcomes[b.instance_id] = self._single(b)
        except AwsUnavailable as exc:
            self.metrics.heartbeat_writes_failed.inc()
            log.warning("heartbeats not written: AWS does not answer",
                        extra={"instances": len(beats), "error": str(exc)[:200]})
            outcomes = {}
        except Exception:  # a bug: hand them back to the broker, then say so
            for d in deliveries:
                d.nack(requeue=True)
            raise
        for d in deliveries:
            d.ack()  # a refused signature was dead-lettered (settled) already: ack is a no-op
        written = [iid for iid, r in outcomes.items() if r == "written"]
        self.metrics.heartbeats.inc(sum(len(taken[iid]) for iid in written))

    # --- steps ----------------------------------------------------------------------------
    def _newest(self, instance_id: str, queued: list[_Queued]) -> Beat | None:
        """The one write these heartbeats make, if any (verified, not a stale backlog)."""
        if self.check.attested and self.check.keys.get(instance_id) is None:
            # before its (attested) registration landed: nothing to verify them with, and
            # nothing they could change (only a registered worker's heartbeat is written)
            log.debug("heartbeats before the registration ignored",
                      extra={"instance_id": instance_id, "count": len(queued)})
            return None
        verified = [b for b in queued if self.check.verified(b.delivery, instance_id)]
        if not verified:
            return None
        newest, healthy = assign.latest_heartbeat([(b.sent, b.healthy) for b in verified])
        now = self.clock.now()
        if self.dead_after is not None and now - newest > self.dead_after:
            # replayed after an outage: writing it would keep a dead worker alive
            log.info("stale heartbeats dropped", extra={"instance_id": instance_id,
                                                         "count": len(verified)})
            return None
        activity = max((b.activity for b in verified if b.activity is not None), default=None)
        return Beat(instance_id, healthy, now,
                    None if activity is None else min(activity, now))

    def _batch(self, beats: list[Beat]) -> dict[str, Result]:
        results = self.store.heartbeats.write(beats)
        self.metrics.heartbeat_writes.inc()
        for b, r in zip(beats, results, strict=True):
            if r == "written":
                self.free.heard(b.instance_id, b.at)
            else:  # not free or leased any more (or throttled): not a candidate for now
                self.free.discard(b.instance_id)
                if r == "failed":
                    self.metrics.heartbeat_writes_failed.inc()
        return dict(zip((b.instance_id for b in beats), results, strict=True))

    def _single(self, b: Beat) -> Result:
        try:
            worker = self.store.workers.heartbeat(b.instance_id, healthy=b.healthy, now=b.at,
                                                  last_activity=b.last_activity)
        except ConditionFailed:
            log.debug("heartbeat of an unknown or draining worker",
                      extra={"instance_id": b.instance_id})
            self.free.discard(b.instance_id)
            return "refused"
        finally:
            self.metrics.heartbeat_writes.inc()
        self.free.offer(worker)
        return "written"
