"""Status (PROTOCOL v2 §3): the pool's counts and the caller's own leases, for people with
broker credentials only.

The counts cost no read: they come from the scaler's latest ``CapacityStatus`` (it counts
the pool on every reconcile and sends the count to every dispatcher). Without a scaler
running, they are counted from the table, at most once per ``COUNT_SECONDS`` however many
people ask. The caller's leases are read for each request (the user's own set: a GetItem
or two).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.asg import AsgState
from shared.clock import iso
from shared.messages import CapacityStatus, LeaseSummary, PoolCounts, StatusReply, StatusRequest
from shared.state import Worker
from shared.store import Store

#: The oldest table count a status answer may reuse (no scaler running).
COUNT_SECONDS = 5.0
#: A scaler count older than this is not used (its scaler stopped).
CAPACITY_MAX_AGE = 60.0


@dataclass(frozen=True)
class Sources:
    """Where a status answer's numbers come from, newest first."""

    capacity: CapacityStatus | None  # the scaler's latest count
    capacity_age: float  # seconds since it arrived
    waiting_here: int  # claims in this dispatcher's waiting room
    asg: AsgState | None


def pool_counts(src: Sources, table: Callable[[], dict[str, int]]) -> PoolCounts:
    """The counts of a status answer: the scaler's when it is recent and whole, else the
    table's (``table`` is called only then)."""
    c = src.capacity
    if (c is not None and src.capacity_age <= CAPACITY_MAX_AGE and None not in (
            c.free, c.leased, c.draining, c.dead, c.booting, c.waiting, c.desired,
            c.max_size)):
        return PoolCounts(free=c.free or 0, leased=c.leased or 0, booting=c.booting or 0,
                          draining=c.draining or 0, dead=c.dead or 0,
                          waiting=max(c.waiting or 0, src.waiting_here),
                          desired=c.desired or 0, max_size=c.max_size or 0)
    counted = table()
    return PoolCounts(free=counted["free"], leased=counted["leased"],
                      booting=counted["booting"], draining=counted["draining"],
                      dead=counted["dead"], waiting=src.waiting_here,
                      desired=src.asg.desired if src.asg else 0,
                      max_size=src.asg.max_size if src.asg else 0)


def lease_summary(worker: Worker, port: int, *, idle_since: float | None = None,
                  now: float | None = None) -> LeaseSummary:
    """One lease of a status answer; ``idle_seconds`` counts from the user's last sign of
    life (code-server activity, the lease's start, a renew: what IDLE_SECONDS counts)."""
    idle = (max(0, int(now - idle_since)) if idle_since is not None and now is not None
            else None)
    return LeaseSummary(instance_id=worker.instance_id, url=worker.url(port),
                        lease_expiry=iso(worker.lease_expiry) if worker.lease_expiry else None,
                        idle_seconds=idle)


class StatusService:
    def __init__(self, *, store: Store, port: int, sources: Callable[[], Sources]) -> None:
        self.store = store
        self.port = port
        self.sources = sources
        self._counted: tuple[float, dict[str, int]] | None = None
        self._lock = threading.Lock()

    def answer(self, req: StatusRequest) -> StatusReply:
        src = self.sources()
        pool = pool_counts(src, self._table_counts)
        leases = [self._summary(w) for w in self.store.leases.held_by(req.user_id)]
        failing = src.capacity is not None and not src.capacity.ok
        return StatusReply(request_id=req.request_id, status="ok", pool=pool, leases=leases,
                           launch_error=(src.capacity.reason or "launches fail")
                           if failing and src.capacity else None)

    def _summary(self, w: Worker) -> LeaseSummary:
        # one more GetItem per lease (MAX_LEASES_PER_USER, 1 by default): held_by's
        # Worker does not carry the lease's clocks
        clock = self.store.workers.lease_clock(w.instance_id)
        return lease_summary(w, self.port, now=time.time(),
                             idle_since=clock.idle_since if clock else None)

    def _table_counts(self) -> dict[str, int]:
        with self._lock:
            now = time.monotonic()
            if self._counted is None or now - self._counted[0] > COUNT_SECONDS:
                counts = {st: self.store.workers.count(st)  # type: ignore[arg-type]
                          for st in ("free", "leased", "booting", "draining", "dead")}
                self._counted = (now, counts)
            return self._counted[1]
