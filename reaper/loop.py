"""The reaper's loop: read a snapshot, ``rules.plan`` it, apply the actions one by one.

Every write is conditional (shared/store/, reaper/actions.py), so a pass that races a
dispatcher, another reaper or its own earlier crashed self either wins cleanly or loses and
changes nothing.
A lost race on an instance skips that instance's remaining actions for this pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from reaper.actions import FAILED, LOST, Actions
from reaper.clocks import LeaseClocks
from reaper.metrics import ReaperMetrics
from reaper.notify import Notifier
from reaper.rules import (
    Action,
    Snapshot,
    instance_of,
    live_workers,
    plan,
)
from shared.asg import Asg
from shared.clock import Clock, SystemClock
from shared.config import Settings
from shared.errors import AwsError, AwsUnavailable, LockLost
from shared.leader import Leadership
from shared.state import LeaseClock
from shared.store import Store
from shared.store.pool import PoolReader

log = logging.getLogger(__name__)



class Stopper(Protocol):
    @property
    def stopping(self) -> bool: ...

    def wait(self, seconds: float) -> bool: ...


class Reaper:
    """One reaper replica. ``run_pass`` is one read → plan → apply; ``run`` repeats it
    every REAP_INTERVAL while this replica holds the lock."""

    def __init__(self, *, store: Store, asg: Asg, settings: Settings,
                 metrics: ReaperMetrics | None = None, leadership: Leadership | None = None,
                 clock: Clock | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 notifier: Notifier | None = None) -> None:
        self.store, self.asg, self.settings = store, asg, settings
        self.metrics = metrics or ReaperMetrics()
        self.leadership = leadership
        self.clock = clock or SystemClock()
        self.monotonic = monotonic
        self.known: set[str] = set()
        self.clocks = LeaseClocks(store.table)
        self.pool = PoolReader(store.workers)  # the sweep's every worker, without a Scan
        self.actions = Actions(store=store, asg=asg, metrics=self.metrics, known=self.known,
                               notifier=notifier, clocks=self.clocks)
        self._next_sweep = 0.0  # the first pass (after start or takeover) sweeps
        self._refreshed_at = 0.0
        self._aws_failed = False  # our last pass could not reach AWS
        self.recovered_at: float | None = None  # when AWS answered again after that
        self.live_workers = 0  # free + leased at the last sweep

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
        free = workers.by_status("free") if sweep else []
        leases = self._lease_clocks(now, sweep=sweep)
        asg = self.asg.describe()
        everything = None
        if sweep:  # every worker, the leased kept between sweeps (shared/store/pool.py)
            every, _ = self.pool.complete({"free": free, "draining": draining, "dead": dead,
                                           "booting": booting}, now, asg.live_ids)
            everything = tuple(w for ws in every.values() for w in ws)
        return Snapshot(asg=asg, expired=tuple(expired), stale=tuple(stale),
                        draining=tuple(draining), dead=tuple(dead), booting=tuple(booting),
                        everything=everything, known_ids=frozenset(self.known),
                        recovered_at=self.recovered_at, live_workers=self.live_workers,
                        leases=tuple(leases))

    def _lease_clocks(self, now: float, *, sweep: bool) -> list[LeaseClock]:
        """Every lease when IDLE_SECONDS is on (idleness is not indexed); for warnings
        alone, those ending within WARN_BEFORE_SECONDS, and every lease on sweep passes (an
        announced end that a renew moved away is seen there, and said so)."""
        s = self.settings
        if s.idle_seconds > 0 or (s.warn_before_seconds > 0 and sweep):
            return self.clocks.read()
        if s.warn_before_seconds > 0:
            return self.clocks.read(ending_before=now + s.warn_before_seconds)
        return []

    # --- one pass ----------------------------------------------------------------------
    def run_pass(self, now: float | None = None,
                 stopping: Callable[[], bool] = lambda: False) -> list[tuple[Action, str]]:
        """Read, plan, apply. Returns each action with its outcome (done/lost/gone/failed)."""
        started = self.monotonic()
        now = self.clock.now() if now is None else now
        sweep = started >= self._next_sweep
        snapshot = self._read_noting_outages(now, sweep)
        if snapshot.everything is not None:
            self.known.clear()  # in place: the actions keep it current too
            self.known.update(w.instance_id for w in snapshot.everything)
            self.live_workers = live_workers(snapshot)
            self._next_sweep = started + self.settings.orphan_sweep_interval
        self.known |= {w.instance_id for w in (*snapshot.expired, *snapshot.stale,
                                                *snapshot.draining, *snapshot.dead,
                                                *snapshot.booting)}
        self.known |= {c.worker.instance_id for c in snapshot.leases}
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
                outcome = self.actions.apply(action, now)
            except LockLost as exc:  # another replica acts now: stop here
                log.info("reap pass stopped: %s", exc)
                break
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

    def _read_noting_outages(self, now: float, sweep: bool) -> Snapshot:
        """Read, and note when AWS answers again after a pass that could not reach it:
        heartbeats could not be written meanwhile, so silence counts from then."""
        try:
            snapshot = self.read(now, sweep=sweep)
        except AwsUnavailable:
            self._aws_failed = True
            raise
        if self._aws_failed:
            self._aws_failed = False
            self.recovered_at = now
            log.warning("AWS answers again: silence counts from now",
                        extra={"event": "aws_recovered", "recovered_at": now})
            snapshot = Snapshot(**{**snapshot.__dict__, "recovered_at": now})
        return snapshot

    def _still_active(self, now: float) -> bool:
        """Re-take the lock during a long pass, so two replicas never act at length."""
        if self.leadership is None:
            return True
        if self.monotonic() - self._refreshed_at < self.leadership.ttl / 3:
            return True
        self._refreshed_at = self.monotonic()
        return self.leadership.refresh(self.clock.now())

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
                self.pool.forget()
            if stopper.wait(self.settings.reap_interval):
                break
