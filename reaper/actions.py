"""The reaper's actions, each a conditional write (or a fenced AWS call) that either wins
cleanly or loses and changes nothing: ``Actions.apply`` returns done, lost (a race lost: a
renew, a heartbeat, a registration came first), or gone (an earlier pass finished it).
A lease the reaper ends (expired, idle) is announced to its user (``lease_ended``), and a
``Notify`` is remembered on the lease before it is sent (reaper/notify.py)."""

from __future__ import annotations

import logging

from reaper.clocks import LeaseClocks
from reaper.ending import ExpireIdle, Notify, ended_event, notice_event
from reaper.metrics import ReaperMetrics
from reaper.notify import Notifier
from reaper.rules import (
    Action,
    Expire,
    MarkDead,
    Recycle,
    RemoveOrphan,
    ReplaceNeverBooted,
    Retire,
    TrackBooting,
)
from shared.asg import Asg
from shared.errors import AwsError, AwsUnavailable, ConditionFailed
from shared.messages.events import EndReason
from shared.state import Worker
from shared.store import Store

log = logging.getLogger(__name__)

DONE, LOST, GONE, FAILED = "done", "lost", "gone", "failed"
RECYCLABLE = ("draining", "dead")


def _ids(w: Worker) -> dict[str, object]:
    return {"instance_id": w.instance_id, "user_id": w.user_id}


class Actions:
    """``known``: the instance ids with an item, shared with the loop (kept current)."""

    def __init__(self, *, store: Store, asg: Asg, metrics: ReaperMetrics,
                 known: set[str], notifier: Notifier | None = None,
                 clocks: LeaseClocks | None = None) -> None:
        self.store, self.asg, self.metrics, self.known = store, asg, metrics, known
        self.notifier = notifier or Notifier(publisher=None, metrics=metrics)
        self.clocks = clocks or LeaseClocks(store.table)

    def apply(self, action: Action, now: float) -> str:
        """Carry out one action; ``lost`` when a conditional write lost its race."""
        if isinstance(action, Expire):
            return self._expire(action.worker, now)
        if isinstance(action, ExpireIdle):
            return self._expire_idle(action, now)
        if isinstance(action, Notify):
            return self._notify(action, now)
        if isinstance(action, MarkDead):
            return self._mark_dead(action.worker, now)
        if isinstance(action, Retire):
            return self._retire(action, now)
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
        self._ended(w, "expiry", w.lease_expiry, now)
        return DONE

    def _expire_idle(self, a: ExpireIdle, now: float) -> str:
        w = a.worker
        try:
            self.clocks.expire_idle(a.clock, now=now)
        except ConditionFailed:
            self.metrics.races_lost.inc()
            log.info("lease renewed or used meanwhile; not reclaimed for idleness",
                     extra={**_ids(w), "event": "idle_lost"})
            return LOST
        self.store.leases.forget_user(w.user_id, w.instance_id)
        self.metrics.leases_idle.inc()
        since = a.clock.idle_since
        log.info("lease ended: idle", extra={
            **_ids(w), "event": "lease_idle", "last_activity": a.clock.last_activity,
            "idle_seconds": round(now - since, 3) if since else None})
        self._ended(w, "idle", a.end.at, now)
        return DONE

    def _ended(self, w: Worker, reason: EndReason, ended: float, now: float) -> None:
        event = ended_event(w, reason, ended, now)
        if event is not None:
            self.notifier.send(event)  # at most once: the write that ended it won once

    def _notify(self, n: Notify, now: float) -> str:
        """Remember the notice (conditional: once per lease and end, whatever the reapers),
        then send it; if the broker did not take it, forget it for the next pass."""
        try:
            self.clocks.set_notice(n.clock, n.key, now=now)
        except ConditionFailed:
            log.debug("lease changed, or notified meanwhile; not notified",
                      extra={**_ids(n.worker), "notice": n.kind})
            return LOST
        if self.notifier.send(notice_event(n, now)):
            return DONE
        try:
            self.clocks.undo_notice(n.worker.instance_id, sent=n.key, previous=n.clock.notice)
        except (ConditionFailed, AwsError, AwsUnavailable) as exc:
            log.warning("notice not sent and not forgotten: it is lost",
                        extra={**_ids(n.worker), "notice": n.kind, "error": str(exc)})
        return FAILED

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

    def _retire(self, a: Retire, now: float) -> str:
        w = a.worker
        try:
            self.store.workers.retire(w, now=now, reason=a.reason)
        except ConditionFailed:
            self.metrics.races_lost.inc()
            return LOST
        self.store.leases.forget_user(w.user_id, w.instance_id)
        if w.status == "leased":
            self.metrics.leased_lost.inc()
            log.warning("leased worker retired (%s): its user lost their machine", a.reason,
                        extra={**_ids(w), "event": "leased_worker_lost"})
        log.info("worker retired", extra={**_ids(w), "event": "retired", "reason": a.reason})
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
