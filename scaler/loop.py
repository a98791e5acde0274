"""The scaler's loop: read the pool, ask scaler.policy, apply.

``Engine`` holds what one active scaler remembers (its last raise, the waiting count, when
surplus began) and does the I/O around the pure decisions: one ``reconcile`` reads the ASG
and the table, decides, and applies (raise desired, (un)protect, drain one surplus worker,
watch launches, tell dispatchers whether capacity can grow). ``handle`` takes dispatcher
events; ``tick`` runs a reconcile when one is due. Which replica runs the Engine, and how
events reach it, is scaler.service's business.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from scaler.metrics import ScalerMetrics
from scaler.observe import (
    Arriving,
    LaunchStatus,
    WaitingBook,
    arriving,
    launch_status,
    protection_plan,
)
from scaler.policy import AsgView, Counts, Decision, LastScale, decide
from shared.asg import Asg
from shared.config import Settings
from shared.errors import AwsError, AwsUnavailable, ConditionFailed
from shared.messages import CapacityStatus, LeasedEvent, ShortageEvent, now_sent_at
from shared.state import STATUSES, Worker
from shared.store import Store

log = logging.getLogger("workerpool.scaler")

#: A burst of shortage events (one per claim that had to wait) is answered by one call sized
#: for all of them: the reconcile waits until no event came for BURST_QUIET_SECONDS, but never
#: longer than BURST_MAX_SECONDS after the first one.
BURST_QUIET_SECONDS = 0.2
BURST_MAX_SECONDS = 1.0


class Engine:
    def __init__(self, *, settings: Settings, store: Store, asg: Asg, metrics: ScalerMetrics,
                 publish: Callable[[CapacityStatus], None]) -> None:
        self.s, self.store, self.asg, self.m, self.publish = settings, store, asg, metrics, publish
        self.last: LastScale | None = None
        self.book = WaitingBook()
        self.surplus_since: float | None = None
        self.due_at = 0.0  # next scheduled reconcile
        self.burst: tuple[float, float] | None = None  # (first event, reconcile due) of a burst
        self.launch = LaunchStatus(ok=True)
        self.seen_failures: set[str] = set()
        self.published_ok = True  # what dispatchers last heard from us
        self.status: dict[str, Any] = {"active": False}
        #: Called with each raise, so that a successor replica keeps our cooldown
        #: (scaler.service leaves it on the lock item).
        self.remember: Callable[[LastScale], None] = lambda last: None

    def resume(self, last: LastScale | None) -> None:
        """Take over a predecessor's last raise (if newer than ours): the cooldown holds
        across a failover."""
        if last is not None and (self.last is None or last.at > self.last.at):
            self.last = last
            log.info("took over the last raise", extra={
                "event": "resumed", "last_scale_at": last.at, "desired": last.desired})

    # --- events -----------------------------------------------------------------------
    def handle(self, event: ShortageEvent | LeasedEvent, now: float) -> None:
        """Apply one dispatcher event (idempotent enough: a redelivery changes nothing new
        beyond a lease decrement, which the next report corrects)."""
        self.m.events.labels(event.type).inc()
        sent = event.sent_at.timestamp()
        if isinstance(event, ShortageEvent):
            self.book = self.book.reported(event.waiting, sent, now)
            if self.s.scale_strategy == "naive":
                self.reconcile(now, trigger="event")
            else:
                first = now if self.burst is None else self.burst[0]
                self.burst = (first, min(first + BURST_MAX_SECONDS, now + BURST_QUIET_SECONDS))
            return
        self.book = self.book.leased(sent)
        try:  # protect at once: the next reconcile would also do it, but seconds later
            self.asg.set_protection([event.instance_id], True)
            self.m.protection.labels("true").inc()
            log.info("protected leased instance from scale-in",
                     extra={"instance_id": event.instance_id})
        except AwsError as exc:  # e.g. no longer in the group: the reconcile sorts it out
            log.warning("could not protect leased instance",
                        extra={"instance_id": event.instance_id, "error": str(exc)})

    def tick(self, now: float) -> None:
        """Reconcile when a burst has settled, or on schedule (held while a burst arrives,
        so that half a burst is never answered on its own)."""
        if self.burst is not None:
            if now >= self.burst[1]:
                self.reconcile(now)
        elif now >= self.due_at:
            self.reconcile(now)

    # --- one pass ---------------------------------------------------------------------
    def reconcile(self, now: float, *, trigger: str = "reconcile") -> Decision:
        started = time.monotonic()
        self.due_at, self.burst = now + self.s.reconcile_interval, None
        state = self.asg.describe()
        workers = {st: self.store.by_status(st) for st in STATUSES}
        registered = [w.instance_id for st in ("free", "leased", "draining", "dead")
                      for w in workers[st]]
        free = [w for w in workers["free"] if w.healthy]
        coming = arriving(state, registered)
        counts = Counts(free=len(free), leased=len(workers["leased"]),
                        draining=len(workers["draining"]), dead=len(workers["dead"]),
                        booting=coming.total,
                        waiting=self.book.current(now, self.s.claim_wait_seconds))
        d = decide(counts, AsgView(state.desired, state.min_size, state.max_size), self.last,
                   now, self.s, trigger=trigger,  # type: ignore[arg-type]
                   free_workers=free, surplus_since=self.surplus_since)
        self.surplus_since = d.surplus_since
        desired = state.desired
        if d.set_desired is not None:
            self.asg.set_desired(d.set_desired)
            self.last = LastScale(at=now, desired=d.set_desired, missing=d.missing)
            self.remember(self.last)
            desired = d.set_desired
            self.m.scale_calls.inc()
            log.info("desired capacity raised", extra={
                "event": "scale", "decided_at": now, "desired": d.set_desired,
                "was": state.desired,
                "missing": d.missing, "reason": d.reason, **counts.__dict__})
        self._protect(state, [w.instance_id for w in workers["leased"]])
        if d.drain is not None:
            self._drain([w for w in free if w.instance_id == d.drain][0], now)
        self._watch_launches(now)
        if d.set_desired is not None:  # the raise is on its way too, not launched yet
            coming = Arriving(coming.booting, coming.pending + d.set_desired - state.desired)
        self._tell_capacity(counts, coming, desired, state.max_size)
        self._record(counts, d, desired, state.max_size, time.monotonic() - started)
        return d

    def _protect(self, state: Any, leased: list[str]) -> None:
        protect, unprotect = protection_plan(state, leased)
        if protect:
            self.asg.set_protection(protect, True)
            self.m.protection.labels("true").inc(len(protect))
            log.info("protected leased instances", extra={"instance_ids": protect})
        # The index may lag a lease that just happened: confirm with a consistent read
        # before taking protection away (never unprotect a VM someone was just given).
        unprotect = [i for i in unprotect
                     if (w := self.store.get(i)) is None or w.status != "leased"]
        if unprotect:
            self.asg.set_protection(unprotect, False)
            self.m.protection.labels("false").inc(len(unprotect))
            log.info("unprotected instances no longer leased", extra={"instance_ids": unprotect})

    def _drain(self, worker: Worker, now: float) -> None:
        try:
            self.store.drain_free(worker, now=now, reason="surplus")
        except ConditionFailed:  # leased meanwhile: good, it is not surplus any more
            log.debug("surplus worker taken meanwhile", extra={"instance_id": worker.instance_id})
            return
        self.m.drained.inc()
        log.info("surplus worker handed back to the reaper", extra={
            "event": "surplus_drain", "instance_id": worker.instance_id})

    def _watch_launches(self, now: float) -> None:
        """After a raise (for BOOT_TIMEOUT_SECONDS) and while launches fail, read the ASG's
        activity log: the only place AWS says why instances do not come."""
        if self.last is None:
            return
        if self.launch.ok and now - self.last.at > self.s.boot_timeout_seconds:
            return
        self.launch = launch_status(self.asg.activities(), self.last.at)
        for act in self.launch.failed:
            if act.activity_id in self.seen_failures:
                continue
            self.seen_failures.add(act.activity_id)
            self.m.launch_failures.inc()
            log.error("instances fail to launch", extra={
                "event": "launch_failed", "activity_id": act.activity_id,
                "status_code": act.status_code, "aws_message": act.status_message,
                "description": act.description})

    def _tell_capacity(self, c: Counts, coming: Arriving, desired: int, max_size: int
                       ) -> None:
        """Every pass: tell every dispatcher what is free and what is coming, so that each
        waiting claim the pool cannot serve is answered at once, and the others wait
        (dispatcher.assign.refused_waiters). A launch failure is logged when it starts and
        when it ends."""
        ok = self.launch.ok
        if ok != self.published_ok:
            (log.info if ok else log.warning)(
                "launches work again" if ok else "instances fail to launch",
                extra={"event": "capacity", "ok": ok, "reason": self.launch.reason})
        try:
            self.publish(CapacityStatus(ok=ok, reason=self.launch.reason, desired=desired,
                                        max_size=max_size, free=c.free,
                                        booting=coming.booting, pending=coming.pending,
                                        sent_at=now_sent_at()))
            self.published_ok = ok
        except Exception as exc:  # the broker is down: the next pass publishes again
            log.warning("could not publish capacity status", extra={"error": repr(exc)})

    def _record(self, c: Counts, d: Decision, desired: int, max_size: int,
                seconds: float) -> None:
        m = self.m
        m.desired.set(desired)
        m.max_size.set(max_size)
        m.missing.set(d.missing)
        m.waiting.set(c.waiting)
        for st in ("free", "leased", "draining", "dead", "booting"):
            m.workers.labels(st).set(getattr(c, st))
        ok = d.capacity_ok and self.launch.ok
        m.capacity_ok.set(1 if ok else 0)
        m.reconcile_seconds.observe(seconds)
        self.status.update(
            desired=desired, max_size=max_size, missing=d.missing, decision=d.reason,
            capacity_ok=ok, capacity_reason=self.launch.reason or d.capacity_reason,
            counts=c.__dict__, last_scale=None if self.last is None else self.last.__dict__)


def guarded(fn: Callable[[], Any], what: str, metrics: ScalerMetrics) -> None:
    """Run one pass; AWS trouble is logged and retried next pass, never fatal."""
    try:
        fn()
    except (AwsError, AwsUnavailable) as exc:
        metrics.errors.inc()
        log.warning("%s failed; retrying next pass", what, extra={"error": str(exc)})
    except Exception:
        metrics.errors.inc()
        log.exception("%s failed", what)
