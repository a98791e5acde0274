"""The reaper's loop: read a snapshot, ``rules.plan`` it, apply the actions one by one.

Every write is conditional (shared/store.py), so a pass that races a dispatcher, another
reaper or its own earlier crashed self either wins cleanly or loses and changes nothing.
A lost race on an instance skips that instance's remaining actions for this pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from reaper.metrics import ReaperMetrics
from reaper.rules import (
    Action,
    Expire,
    MarkDead,
    Recycle,
    RemoveOrphan,
    ReplaceNeverBooted,
    Snapshot,
    TrackBooting,
    instance_of,
    plan,
)
from shared.asg import Asg
from shared.clock import Clock, SystemClock
from shared.config import Settings
from shared.errors import AwsError, AwsUnavailable, ConditionFailed
from shared.leader import Leadership
from shared.state import Worker
from shared.store import Store

log = logging.getLogger(__name__)

DONE, LOST, GONE, FAILED = "done", "lost", "gone", "failed"
RECYCLABLE = ("draining", "dead")


class Stopper(Protocol):
    @property
    def stopping(self) -> bool: ...

    def wait(self, seconds: float) -> bool: ...


def _ids(w: Worker) -> dict[str, object]:
    return {"instance_id": w.instance_id, "user_id": w.user_id}


class Reaper:
    """One reaper replica. ``run_pass`` is one read → plan → apply; ``run`` repeats it
    every REAP_INTERVAL while this replica holds the lock."""

    def __init__(self, *, store: Store, asg: Asg, settings: Settings,
                 metrics: ReaperMetrics | None = None, leadership: Leadership | None = None,
                 clock: Clock | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store, self.asg, self.settings = store, asg, settings
        self.metrics = metrics or ReaperMetrics()
        self.leadership = leadership
        self.clock = clock or SystemClock()
        self.monotonic = monotonic
        self.known: set[str] = set()
        self._next_sweep = 0.0  # the first pass (after start or takeover) sweeps
        self._refreshed_at = 0.0

    # --- read ---------------------------------------------------------------------------
    def read(self, now: float, *, sweep: bool) -> Snapshot:
        """The table first, then the ASG: an instance can only register while it is in the
        ASG, so an item read before the describe whose instance the describe lacks is
        really gone (the reverse order could call a just-registered worker an orphan)."""
        workers = self.store.workers
        expired = self.store.leases.expired(now)
        silent_since = now - self.settings.dead_after
        stale = [*workers.by_status("free", heartbeat_before=silent_since),
                 *workers.by_status("leased", heartbeat_before=silent_since)]
        draining, dead, booting = (workers.by_status("draining"), workers.by_status("dead"),
                                   workers.by_status("booting"))
        everything = tuple(workers.all()) if sweep else None
        asg = self.asg.describe()
        return Snapshot(asg=asg, expired=tuple(expired), stale=tuple(stale),
                        draining=tuple(draining), dead=tuple(dead), booting=tuple(booting),
                        everything=everything, known_ids=frozenset(self.known))

    # --- one pass ----------------------------------------------------------------------
    def run_pass(self, now: float | None = None,
                 stopping: Callable[[], bool] = lambda: False) -> list[tuple[Action, str]]:
        """Read, plan, apply. Returns each action with its outcome (done/lost/gone/failed)."""
        started = self.monotonic()
        now = self.clock.now() if now is None else now
        sweep = started >= self._next_sweep
        snapshot = self.read(now, sweep=sweep)
        if snapshot.everything is not None:
            self.known = {w.instance_id for w in snapshot.everything}
            self._next_sweep = started + self.settings.orphan_sweep_interval
        self.known |= {w.instance_id for w in (*snapshot.expired, *snapshot.stale,
                                                *snapshot.draining, *snapshot.dead,
                                                *snapshot.booting)}
        actions = plan(snapshot, now, self.settings)
        done: list[tuple[Action, str]] = []
        skip: set[str] = set()
        for action in actions:
            if stopping() or not self._still_active(now):
                break
            iid = instance_of(action)
            if iid in skip:
                continue
            try:
                outcome = self.apply(action, now)
            except (AwsError, AwsUnavailable) as exc:
                log.warning("reaper action failed; retried next pass",
                            extra={"instance_id": iid, "action": type(action).__name__,
                                   "error": str(exc)})
                outcome = FAILED
            if outcome in (LOST, FAILED):
                skip.add(iid)
            done.append((action, outcome))
        seconds = self.monotonic() - started
        self.metrics.pass_seconds.observe(seconds)
        level = logging.INFO if actions else logging.DEBUG
        log.log(level, "reap pass", extra={"event": "reap_pass", "actions": len(actions),
                                           "sweep": sweep, "seconds": round(seconds, 4)})
        return done

    def _still_active(self, now: float) -> bool:
        """Re-take the lock during a long pass, so two replicas never act at length."""
        if self.leadership is None:
            return True
        if self.monotonic() - self._refreshed_at < self.leadership.ttl / 3:
            return True
        self._refreshed_at = self.monotonic()
        return self.leadership.refresh(self.clock.now())

    # --- apply ---------------------------------------------------------------------------
    def apply(self, action: Action, now: float) -> str:
        """Carry out one action; ``lost`` when a conditional write lost its race."""
        if isinstance(action, Expire):
            return self._expire(action.worker, now)
        if isinstance(action, MarkDead):
            return self._mark_dead(action.worker, now)
        if isinstance(action, Recycle):
            return self._recycle(action, now)
        if isinstance(action, ReplaceNeverBooted):
            return self._replace(action.worker, now)
        if isinstance(action, RemoveOrphan):
            return self._remove_orphan(action.worker)
        return self._track(action, now)

    def _expire(self, w: Worker, now: float) -> str:
        try:
            self.store.leases.expire(w, now=now)
        except ConditionFailed:
            self.metrics.races_lost.inc()
            log.info("lease renewed or released meanwhile; not expired",
                     extra={**_ids(w), "event": "expire_lost"})
            return LOST
        self.metrics.leases_expired.inc()
        log.info("lease expired", extra={**_ids(w), "event": "lease_expired",
                                         "lease_expiry": w.lease_expiry})
        return DONE

    def _mark_dead(self, w: Worker, now: float) -> str:
        try:
            self.store.workers.mark_dead(w, now=now)
        except ConditionFailed:
            self.metrics.races_lost.inc()
            log.info("heartbeat or status changed meanwhile; not dead",
                     extra={**_ids(w), "event": "mark_dead_lost"})
            return LOST
        self.store.leases.forget_user(w.user_id, w.instance_id)
        self.metrics.workers_dead.inc()
        fields = {**_ids(w), "silent_seconds": round(now - w.last_heartbeat, 3)}
        if w.status == "leased":
            self.metrics.leased_lost.inc()
            log.warning("leased worker died: its user lost their machine",
                        extra={**fields, "event": "leased_worker_lost"})
        else:
            log.info("worker dead", extra={**fields, "event": "worker_dead"})
        return DONE

    def _recycle(self, a: Recycle, now: float) -> str:
        """confirm_recyclable is the LAST write before the terminate: it fails if the worker
        is free or leased, so nothing live is terminated (terraform-aws-github-runner #5085)."""
        ids = {"instance_id": a.instance_id, "user_id": a.user_id}
        try:
            self.store.workers.confirm_recyclable(a.instance_id, now=now)
        except ConditionFailed as exc:
            if exc.item is None:  # the item is gone: an earlier pass finished this one
                return GONE
            self.metrics.races_lost.inc()
            log.warning("not recycled: worker is live",
                        extra={**ids, "status": exc.item.get("status"),
                               "event": "recycle_refused"})
            return LOST
        self.store.workers.tombstone(a.instance_id, now=now)  # its agent may not register again
        terminated = False
        if a.in_group:
            try:
                self.asg.set_protection([a.instance_id], False)
            except AwsError as exc:  # e.g. it left the group since the describe
                log.info("could not clear scale-in protection",
                         extra={**ids, "error": str(exc)})
            terminated = self.asg.terminate(a.instance_id, decrement=a.decrement)
        try:
            self.store.workers.remove(a.instance_id, only_if_status=RECYCLABLE)
        except ConditionFailed:  # cannot happen: draining and dead are final
            log.error("item changed after terminate", extra=ids)
            return LOST
        self.known.discard(a.instance_id)
        self.metrics.recycled.inc()
        log.info("recycled", extra={**ids, "event": "recycled", "reason": a.reason,
                                    "terminated": terminated, "decrement": a.decrement})
        return DONE

    def _replace(self, w: Worker, now: float) -> str:
        """booting → dead first: a registration landing after it is refused, so the instance
        we terminate can never have become a free worker meanwhile."""
        try:
            self.store.workers.mark_dead(w, now=now)
        except ConditionFailed:
            self.metrics.races_lost.inc()
            log.info("booting instance registered meanwhile; kept",
                     extra={"instance_id": w.instance_id, "event": "boot_timeout_lost"})
            return LOST
        self.metrics.boots_timed_out.inc()
        since = w.first_seen if w.first_seen is not None else w.last_heartbeat
        log.warning("instance never registered; replacing it",
                    extra={"instance_id": w.instance_id, "event": "boot_timed_out",
                           "booting_seconds": round(now - since, 3)})
        return self._recycle(Recycle(w.instance_id, None, "never booted", decrement=False,
                                     in_group=True), now)

    def _remove_orphan(self, w: Worker) -> str:
        try:
            removed = self.store.workers.remove(w.instance_id, only_if_status=(w.status,))
        except ConditionFailed:
            self.metrics.races_lost.inc()
            return LOST
        self.known.discard(w.instance_id)
        if not removed:
            return GONE
        self.metrics.orphans_removed.inc()
        if w.status == "leased":
            self.store.leases.forget_user(w.user_id, w.instance_id)
            self.metrics.leased_lost.inc()
            log.warning("leased worker's instance vanished: its user lost their machine",
                        extra={**_ids(w), "event": "leased_worker_lost"})
        log.info("orphan item removed: instance no longer in the ASG",
                 extra={**_ids(w), "event": "orphan_removed", "status": w.status})
        return DONE

    def _track(self, a: TrackBooting, now: float) -> str:
        created = self.store.workers.track_booting(a.instance_id, now=now)
        self.known.add(a.instance_id)
        if created:
            log.info("tracking new instance as booting",
                     extra={"instance_id": a.instance_id, "event": "tracking_booting"})
        return DONE if created else GONE

    # --- the loop --------------------------------------------------------------------------
    def run(self, stopper: Stopper) -> None:
        """Every REAP_INTERVAL one pass, only while this replica is the active one."""
        while not stopper.stopping:
            now = self.clock.now()
            active = True
            if self.leadership is not None:
                active = self.leadership.refresh(now)
                self._refreshed_at = self.monotonic()
            self.metrics.active.set(1 if active else 0)
            if active:
                try:
                    self.run_pass(now, stopping=lambda: stopper.stopping)
                except (AwsError, AwsUnavailable) as exc:
                    log.warning("reap pass failed; retrying next interval",
                                extra={"event": "reap_failed", "error": str(exc)})
            else:
                self._next_sweep = 0.0  # our cache of known ids may be stale on takeover
            if stopper.wait(self.settings.reap_interval):
                break
