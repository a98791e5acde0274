"""What a reconcile does besides raising desired capacity: protect leased instances from
scale-in, hand a surplus worker back, watch launches, tell dispatchers what is coming, and
record what it saw. Each step is its own AWS or table call; a failed one is retried on the
next pass (the loop's ``guarded``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from scaler.demand import WarmTarget
from scaler.memory import PoolMemory
from scaler.metrics import ScalerMetrics
from scaler.policy import (
    Arriving,
    Counts,
    Decision,
    LastScale,
    LaunchStatus,
    launch_status,
    protection_plan,
)
from shared.asg import Asg
from shared.errors import AwsError, ConditionFailed
from shared.messages import CapacityStatus, now_sent_at
from shared.state import Activity, AsgState, Worker
from shared.store import Store

log = logging.getLogger(__name__)

#: AWS's answers to a reorder that no retry will change (a missing permission, a group
#: without a mixed-instances policy): the scaler stops trying until it restarts
STOP_STEERING = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
                           "NotMixed"})


class Actions:
    def __init__(self, *, store: Store, asg: Asg, metrics: ScalerMetrics,
                 publish_capacity: Callable[[CapacityStatus], None],
                 boot_timeout: float) -> None:
        self.store, self.asg, self.metrics = store, asg, metrics
        self.publish_capacity = publish_capacity
        self.boot_timeout = boot_timeout
        self.launch = LaunchStatus(ok=True)
        self.seen_failures: set[str] = set()
        self.published_ok = True  # whether launches worked when dispatchers last heard
        self.steering = True  # False once AWS refused to reorder the group's types

    def protect_now(self, instance_ids: list[str]) -> None:
        """Workers were just leased: protect their instances at once, in one call (the
        reconcile would, but seconds later)."""
        try:
            self.asg.set_protection(instance_ids, True)
            self.metrics.protection.labels("true").inc(len(instance_ids))
            log.info("protected leased instances from scale-in",
                     extra={"instance_ids": instance_ids})
        except AwsError as exc:  # e.g. one no longer in the group: the reconcile sorts it out
            log.warning("could not protect leased instances",
                        extra={"instance_ids": instance_ids, "error": str(exc)})

    def protect(self, state: AsgState, leased: list[str]) -> None:
        """Protected exactly while leased. The index may lag a lease that just happened:
        confirm with a consistent read before taking protection away (never unprotect a VM
        someone was just given)."""
        protect, unprotect = protection_plan(state, leased)
        if protect:
            self.asg.set_protection(protect, True)
            self.metrics.protection.labels("true").inc(len(protect))
            log.info("protected leased instances", extra={"instance_ids": protect})
        unprotect = [i for i in unprotect
                     if (w := self.store.workers.get(i)) is None or w.status != "leased"]
        if unprotect:
            self.asg.set_protection(unprotect, False)
            self.metrics.protection.labels("false").inc(len(unprotect))
            log.info("unprotected instances no longer leased", extra={"instance_ids": unprotect})

    def drain(self, worker: Worker, now: float) -> None:
        """A surplus free worker → draining (the reaper recycles it with decrement)."""
        try:
            self.store.workers.drain_free(worker, now=now, reason="surplus")
        except ConditionFailed:  # leased meanwhile: good, it is not surplus any more
            log.debug("surplus worker taken meanwhile", extra={"instance_id": worker.instance_id})
            return
        self.metrics.drained.inc()
        log.info("surplus worker handed back to the reaper", extra={
            "event": "surplus_drain", "instance_id": worker.instance_id})

    def watch_launches(self, last: LastScale | None, now: float) -> list[Activity]:
        """After a raise (for BOOT_TIMEOUT_SECONDS) and while launches fail, read the ASG's
        activity log: the only place AWS says why instances do not come. Returns the failed
        activities seen for the first time."""
        if last is None or (self.launch.ok and now - last.at > self.boot_timeout):
            return []
        self.launch = launch_status(self.asg.activities(), last.at)
        new = []
        for act in self.launch.failed:
            if act.activity_id in self.seen_failures:
                continue
            self.seen_failures.add(act.activity_id)
            new.append(act)
            self.metrics.launch_failures.inc()
            log.error("instances fail to launch", extra={
                "event": "launch_failed", "activity_id": act.activity_id,
                "status_code": act.status_code, "aws_message": act.status_message,
                "description": act.description})
        return new

    def steer(self, memory: PoolMemory, state: AsgState, failed: list[Activity],
              configured: tuple[str, ...], now: float, cool_off: float) -> None:
        """Capacity circuits: open them for new capacity/quota failures, close the cooled
        ones, order the group's instance types accordingly (scaler/circuit.py), and while
        another type is there to grow on, do not report launches as failing."""
        first = state.instance_types[0] if state.instance_types else configured[0]
        for c in memory.failed(failed, first, now, cool_off):
            self.metrics.circuits_opened.labels(c.instance_type, c.zone).inc()
            log.warning("capacity circuit opened", extra={
                "event": "circuit_open", "instance_type": c.instance_type, "zone": c.zone,
                "code": c.code, "until": c.until, "aws_message": c.message})
        for c in memory.cooled(now):
            log.info("capacity circuit closed", extra={
                "event": "circuit_closed", "instance_type": c.instance_type, "zone": c.zone})
        self.metrics.circuits_open.set(len(memory.circuits))
        order = memory.order(configured, state.zones)
        group = state.instance_types
        want = tuple(t for t in order if t in group) + tuple(t for t in group if t not in order)
        if len(configured) > 1 and want != group and self.steering:
            try:
                self.asg.set_instance_types(want)
                log.info("instance types reordered", extra={
                    "event": "instance_types", "order": list(want), "was": list(group)})
            except AwsError as exc:  # e.g. AccessDenied: circuits still guide the status
                self.steering = exc.code not in STOP_STEERING
                log.warning("could not reorder the group's instance types", extra={
                    "error": str(exc), "order": list(want)})
        newest = self.launch.failed[0] if self.launch.failed else None
        if not self.launch.ok and (on := memory.covered(newest, first, order, state.zones)):
            log.info("launches fail for capacity; growing on another type", extra={
                "event": "capacity_fallback", "instance_type": on,
                "reason": self.launch.reason})
            self.launch = LaunchStatus(ok=True, failed=self.launch.failed)

    def tell_capacity(self, c: Counts, coming: Arriving, desired: int, max_size: int) -> None:
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
            self.publish_capacity(CapacityStatus(
                ok=ok, reason=self.launch.reason, desired=desired, max_size=max_size,
                free=c.free, booting=coming.booting, pending=coming.pending,
                leased=c.leased, draining=c.draining, dead=c.dead, waiting=c.waiting,
                sent_at=now_sent_at()))
            self.published_ok = ok
        except Exception as exc:  # the broker is down: the next pass publishes again
            log.warning("could not publish capacity status", extra={"error": repr(exc)})

    def record(self, c: Counts, d: Decision, desired: int, max_size: int, seconds: float,
               status: dict[str, Any], last: LastScale | None) -> None:
        """Metrics and the /health ``scaler`` section."""
        m = self.metrics
        m.desired.set(desired)
        m.max_size.set(max_size)
        m.missing.set(d.missing)
        m.waiting.set(c.waiting)
        for st in ("free", "leased", "draining", "dead", "booting"):
            m.workers.labels(st).set(getattr(c, st))
        ok = d.capacity_ok and self.launch.ok
        m.capacity_ok.set(1 if ok else 0)
        m.reconcile_seconds.observe(seconds)
        status.update(
            desired=desired, max_size=max_size, missing=d.missing, decision=d.reason,
            capacity_ok=ok, capacity_reason=self.launch.reason or d.capacity_reason,
            counts=c.__dict__, last_scale=None if last is None else last.__dict__)

    def record_memory(self, warm: WarmTarget, memory: PoolMemory, status: dict[str, Any],
                      now: float) -> None:
        """The warm target and the circuits: metrics and the /health ``scaler`` section."""
        self.metrics.warm_target.set(warm.target)
        if warm.per_minute is not None:
            self.metrics.claims_per_minute.set(warm.per_minute)
        if warm.p90_ready_seconds is not None:
            self.metrics.ready_p90.set(warm.p90_ready_seconds)
        status.update(warm_target=warm.target, warm_target_reason=warm.reason,
                      **memory.status(now))
