"""The scaler's story: while this replica holds the lock, take dispatcher events and
reconcile (read the ASG and the table, ``policy.decide``, apply), on schedule and after each
burst of events.

* ``run``: every tick, refresh the lock (shared.leader) every LOCK_TTL/3; on becoming
  active, take over the predecessor's last raise (its cooldown holds across a failover) and
  open the event feed; hand each event to ``handle``; ``tick`` reconciles when due.
* ``handle``: a shortage event books the waiting count and schedules a reconcile once the
  burst settles (one call sized for all of it); a leased event protects the instance.
* ``reconcile``: one snapshot → one Decision → raise desired (absolute, clamped to MaxSize),
  (un)protect, drain one surplus worker, watch launches, tell dispatchers what is coming.

The judgement is in policy.py; the side effects other than the raise in actions.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from scaler.actions import Actions
from scaler.demand import WarmTarget
from scaler.feed import EventFeed
from scaler.memory import PoolMemory
from scaler.metrics import ScalerMetrics
from scaler.policy import (
    Arriving,
    AsgView,
    Counts,
    Decision,
    LastScale,
    WaitingBook,
    arriving,
    decide,
)
from shared.asg import Asg
from shared.clock import Clock, SystemClock
from shared.config import Settings
from shared.errors import AwsError, AwsUnavailable, LockLost
from shared.leader import Leadership
from shared.messages import CapacityStatus, LeasedEvent, ShortageEvent
from shared.state import STATUSES
from shared.store import Store
from shared.store.pool import PoolReader

log = logging.getLogger(__name__)

#: A burst of shortage events (one per claim that had to wait) is answered by one call sized
#: for all of them: the reconcile waits until no event came for BURST_QUIET_SECONDS, but never
#: longer than BURST_MAX_SECONDS after the first one.
BURST_QUIET_SECONDS = 0.2
BURST_MAX_SECONDS = 1.0
TICK_SECONDS = 0.05
#: the learned memory is noted on the lock item with each raise, when a circuit opens or
#: closes, on stepping down, and at least this often
NOTE_SECONDS = 30.0


class Scaler:
    """One scaler replica. Without ``leadership`` it is always active (benchmarks, tests);
    without ``open_feed`` it takes events only through ``handle``."""

    def __init__(self, *, settings: Settings, store: Store, asg: Asg, metrics: ScalerMetrics,
                 publish_capacity: Callable[[CapacityStatus], None],
                 leadership: Leadership | None = None,
                 open_feed: Callable[[], EventFeed] | None = None,
                 clock: Clock | None = None, stopping: Callable[[], bool] = lambda: False
                 ) -> None:
        self.settings, self.store, self.asg, self.metrics = settings, store, asg, metrics
        self.actions = Actions(store=store, asg=asg, metrics=metrics,
                               publish_capacity=publish_capacity,
                               boot_timeout=settings.boot_timeout_seconds)
        self.leadership, self.open_feed = leadership, open_feed
        self.clock = clock or SystemClock()
        self.stopping = stopping
        self.feed: EventFeed | None = None
        self.last: LastScale | None = None  # our (or our predecessor's) last raise
        self.book = WaitingBook()
        self.surplus_since: float | None = None
        self.memory = PoolMemory()  # arrivals, boot times, capacity circuits
        self.pool = PoolReader(store.workers)  # the workers, without a full read each pass
        self.warm = WarmTarget(settings.target_available, "not computed yet")
        self.noted: tuple[float, object] | None = None  # when, and the circuits noted
        #: free workers at the last count, less the leases heard of since: a lease that
        #: takes the pool below target brings the next reconcile forward (no dispatcher
        #: counts the pool for us)
        self.free_estimate: int | None = None
        self.due_at = 0.0  # next scheduled reconcile
        self.burst: tuple[float, float] | None = None  # (first event, reconcile due)
        self.status: dict[str, Any] = {"active": leadership is None}

    # --- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        next_lock = 0.0
        try:
            while not self.stopping():
                now = self.clock.now()
                if now >= next_lock:
                    self._lead(now)
                    next_lock = now + self.settings.lock_ttl_seconds / 3
                if self.feed is not None:
                    for event in self.feed.drain():
                        guarded(lambda e=event: self.handle(e, self.clock.now()), "event",
                                self.metrics)
                    guarded(lambda: self.tick(self.clock.now()), "reconcile", self.metrics)
                time.sleep(TICK_SECONDS)
        finally:
            self._stand_down()
            if self.leadership is not None:
                if self.leadership.active:
                    self.leadership.note(**self.memory.notes())
                self.leadership.resign()

    def _lead(self, now: float) -> None:
        active = self.leadership.refresh(now) if self.leadership is not None else True
        if active and self.feed is None and self.open_feed is not None:
            self.feed = self.open_feed()
            self.pool.forget()  # read every worker once: another replica was active
            self.resume(self._recalled())  # the previous scaler's cooldown still runs
            if self.leadership is not None and self.memory.restore(self.leadership.notes, now):
                log.info("took over the pool's memory", extra={
                    "event": "resumed_memory", **self.memory.status(now)})
            self.due_at = now  # reconcile at once: the previous scaler may be long gone
        elif not active:
            self._stand_down()
        self.status["active"] = active
        self.metrics.active.set(1 if active else 0)

    def _stand_down(self) -> None:
        if self.feed is not None:
            feed, self.feed = self.feed, None
            feed.stop()

    def feed_connected(self) -> bool | None:
        """Whether the event feed is connected; None on a standby (no feed)."""
        return None if self.feed is None else self.feed.connected

    # --- the cooldown across replicas -------------------------------------------------------
    def resume(self, last: LastScale | None) -> None:
        """Take over a predecessor's last raise (if newer than ours)."""
        if last is not None and (self.last is None or last.at > self.last.at):
            self.last = last
            log.info("took over the last raise", extra={
                "event": "resumed", "last_scale_at": last.at, "desired": last.desired})

    def _recalled(self) -> LastScale | None:
        notes = self.leadership.notes if self.leadership is not None else {}
        if "lastScaleAt" not in notes:
            return None
        return LastScale(at=float(notes["lastScaleAt"]), desired=int(notes["lastScaleDesired"]),
                         missing=int(notes.get("lastScaleMissing", 0)))

    def _remember(self, last: LastScale) -> None:
        if self.leadership is not None:
            self.leadership.note(lastScaleAt=last.at, lastScaleDesired=last.desired,
                                 lastScaleMissing=last.missing, **self.memory.notes())
            self.noted = (last.at, self.memory.circuits)

    def _note_memory(self, now: float) -> None:
        """What the pool taught us, for a successor (one UpdateItem, now and then)."""
        if self.leadership is None or (self.noted is not None and now - self.noted[0] <
                                       NOTE_SECONDS and self.noted[1] == self.memory.circuits):
            return
        self.leadership.note(**self.memory.notes())
        self.noted = (now, self.memory.circuits)

    # --- events -----------------------------------------------------------------------
    def handle(self, event: ShortageEvent | LeasedEvent, now: float) -> None:
        """One dispatcher event (idempotent enough: a redelivery changes nothing new beyond a
        lease decrement, which the next report corrects)."""
        self.metrics.events.labels(event.type).inc()
        sent = event.sent_at.timestamp()
        if isinstance(event, LeasedEvent):  # one event per dispatcher batch of leases
            for _ in event.leased_ids():
                self.book = self.book.leased(sent)
                self.memory.leased(sent, self.settings.demand_window_seconds)  # a claim
            self.actions.protect_now(event.leased_ids())
            if self.free_estimate is not None:
                self.free_estimate -= len(event.leased_ids())
                if self.free_estimate < self.warm.target:
                    self._soon(now)
            return
        self.book = self.book.reported(event.waiting, sent, now, event.reporter or "")
        if self.settings.scale_strategy == "naive":
            self.reconcile(now, trigger="event")
            return
        self._soon(now)

    def _soon(self, now: float) -> None:
        """Reconcile once the burst of events this one belongs to has settled."""
        first = now if self.burst is None else self.burst[0]
        self.burst = (first, min(first + BURST_MAX_SECONDS, now + BURST_QUIET_SECONDS))

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
        self.due_at, self.burst = now + self.settings.reconcile_interval, None
        state = self.asg.describe()
        workers, read = self.pool.read(now, state.live_ids)
        self.metrics.pool_reads.labels(read=read).inc()
        registered = [w.instance_id for st in ("free", "leased", "draining", "dead")
                      for w in workers[st]]
        free = [w for w in workers["free"] if w.healthy]
        coming = arriving(state, registered)
        counts = Counts(free=len(free), leased=len(workers["leased"]),
                        draining=len(workers["draining"]), dead=len(workers["dead"]),
                        booting=coming.total,
                        waiting=self.book.current(now, self.settings.claim_wait_seconds))
        self.free_estimate = counts.free
        self.memory.observe(state, [w for st in STATUSES for w in workers[st]], now,
                            self.last.at if self.last else None,
                            self.settings.boot_timeout_seconds)
        first = (state.instance_types or self.settings.instance_types)[0]
        self.warm = self.memory.warm(now, self.settings, first)
        d = decide(counts, AsgView(state.desired, state.min_size, state.max_size), self.last,
                   now, self.settings, trigger=trigger,  # type: ignore[arg-type]
                   free_workers=free, surplus_since=self.surplus_since,
                   target=self.warm.target)
        self.surplus_since = d.surplus_since
        desired = state.desired
        if d.set_desired is not None:
            self._raise(d, state.desired, counts, now)
            # the raise is on its way too, not launched yet
            coming = Arriving(coming.booting, coming.pending + d.set_desired - state.desired)
            desired = d.set_desired
        self.actions.protect(state, [w.instance_id for w in workers["leased"]])
        if d.drain is not None:
            self.actions.drain([w for w in free if w.instance_id == d.drain][0], now)
        failed = self.actions.watch_launches(self.last, now)
        self.actions.steer(self.memory, state, failed, self.settings.instance_types, now,
                           self.settings.capacity_cool_off_seconds)
        self.actions.tell_capacity(counts, coming, desired, state.max_size)
        self.actions.record(counts, d, desired, state.max_size, time.monotonic() - started,
                            self.status, self.last)
        self.actions.record_memory(self.warm, self.memory, self.status, now)
        self._note_memory(now)
        return d

    def _raise(self, d: Decision, was: int, counts: Counts, now: float) -> None:
        assert d.set_desired is not None
        self.asg.set_desired(d.set_desired)
        self.last = LastScale(at=now, desired=d.set_desired, missing=d.missing)
        self._remember(self.last)
        self.metrics.scale_calls.inc()
        log.info("desired capacity raised", extra={
            "event": "scale", "decided_at": now, "desired": d.set_desired, "was": was,
            "missing": d.missing, "reason": d.reason, **counts.__dict__,
            "target": self.warm.target, "target_mode": self.warm.mode,
            "target_reason": self.warm.reason, "forecast_per_min": self.warm.per_minute,
            "p90_ready_s": self.warm.p90_ready_seconds})


def guarded(fn: Callable[[], Any], what: str, metrics: ScalerMetrics) -> None:
    """Run one pass; AWS trouble is logged and retried next pass, never fatal; a lost lock
    ends the pass (we are a standby now: Leadership.fence said so)."""
    try:
        fn()
    except LockLost as exc:
        log.info("%s stopped: %s", what, exc)
    except (AwsError, AwsUnavailable) as exc:
        metrics.errors.inc()
        log.warning("%s failed; retrying next pass", what, extra={"error": str(exc)})
    except Exception:
        metrics.errors.inc()
        log.exception("%s failed", what)
