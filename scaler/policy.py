"""The scaler's judgement: how many instances the ASG should have, and which free worker to
give back; and the pure readings of a snapshot it rests on (what is booting, which instances
need (un)protecting, whether launches fail, how many claims wait). State + ``now`` +
settings in, decisions out; no I/O, no clock.

The arithmetic (docs/scaler.md derives it):

* missing  = max(0, TARGET_AVAILABLE + waiting - free - booting)
* want     = asg.desired + missing

``asg.desired`` already counts every instance that exists or is being launched (registered
workers of any status plus booting ones), and ``booting`` is measured from the same snapshot
(live instances not registered yet + launches AWS has not started), so a booting machine is
counted exactly once: in ``desired`` and in the subtraction that makes ``missing`` smaller.
SetDesiredCapacity(want) is absolute: sending it twice changes nothing.

The scaler only ever raises desired; the reaper is the one component that lowers it (one
chosen instance at a time, TerminateInstanceInAutoScalingGroup with decrement).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from shared.state import Activity, AsgState, Worker

Trigger = Literal["reconcile", "event"]


class PolicySettings(Protocol):
    """The part of shared.config.Settings the policy reads."""

    target_available: int
    cooldown_seconds: float
    scale_strategy: str
    scale_in_idle_seconds: float


@dataclass(frozen=True)
class Counts:
    """The pool as the active scaler sees it in one snapshot."""

    free: int  # free AND healthy: what a claim can get now
    leased: int = 0
    draining: int = 0
    dead: int = 0
    booting: int = 0  # ASG instances not registered yet + launches not started yet
    waiting: int = 0  # claims waiting for a worker (latest report from the dispatcher)


@dataclass(frozen=True)
class AsgView:
    """What the policy needs from DescribeAutoScalingGroups."""

    desired: int
    min_size: int
    max_size: int


@dataclass(frozen=True)
class LastScale:
    """Our last SetDesiredCapacity: when, to what, and how many missing machines it was for."""

    at: float
    desired: int
    missing: int = 0


@dataclass(frozen=True)
class Decision:
    """What to do now. ``set_desired`` is None when no call is due; ``reason`` says why."""

    set_desired: int | None
    reason: str
    missing: int = 0
    want: int = 0
    capacity_ok: bool = True
    capacity_reason: str | None = None
    drain: str | None = None  # a free worker to hand back (surplus scale-in)
    surplus_since: float | None = None  # carry into the next call


def missing_workers(c: Counts, target: int) -> int:
    """Free workers short of target + waiting claims, after counting what is booting."""
    return max(0, target + c.waiting - c.free - c.booting)


def decide(c: Counts, asg: AsgView, last: LastScale | None, now: float,
           settings: PolicySettings, *, trigger: Trigger = "reconcile",
           free_workers: Sequence[Worker] = (), surplus_since: float | None = None,
           target: int | None = None) -> Decision:
    """The scale-out call to make (if any), whether capacity can grow, and a surplus drain.
    ``target``: the free workers to keep (the warm target, scaler/demand.py); default
    TARGET_AVAILABLE."""
    target = settings.target_available if target is None else target
    if settings.scale_strategy == "naive":
        out = _naive(c, asg, target, trigger)
    else:
        out = _missing(c, asg, last, now, settings, target)
    drain, since = _surplus(c, now, settings, target, free_workers, surplus_since)
    return Decision(**{**out.__dict__, "drain": drain, "surplus_since": since})


def _capacity(c: Counts, asg: AsgView, want: int, target: int) -> tuple[bool, str | None]:
    if want <= asg.max_size:
        return True, None
    return False, (f"pool at MaxSize {asg.max_size}: {c.waiting} claims waiting, "
                   f"{want - asg.max_size} more machines needed to keep {target} free; "
                   "raise ASG_MAX_SIZE / the group's MaxSize")


def _missing(c: Counts, asg: AsgView, last: LastScale | None, now: float,
             settings: PolicySettings, target: int) -> Decision:
    missing = missing_workers(c, target)
    want = asg.desired + missing
    ok, why = _capacity(c, asg, want, target)
    clamped = min(want, asg.max_size)  # AWS refuses desired > MaxSize (docs/emulators.md)
    base: dict[str, Any] = dict(missing=missing, want=want, capacity_ok=ok,
                                capacity_reason=why)
    if clamped <= asg.desired:
        reason = "nothing missing" if not missing else f"at MaxSize {asg.max_size}"
        return Decision(set_desired=None, reason=reason, **base)
    if last is not None and now - last.at < settings.cooldown_seconds:
        # PROTOCOL §1: COOLDOWN_SECONDS is the least time between two scale-out calls, so a
        # shortage that grows inside it waits; the first call after it sets the whole need
        # (the scaler debounces a burst's events before its first call, so a burst is
        # normally met whole by that first call).
        left = settings.cooldown_seconds - (now - last.at)
        return Decision(set_desired=None, reason=f"cooldown: {left:.1f}s left "
                        f"({clamped} wanted, {last.desired} last set)", **base)
    return Decision(set_desired=clamped, reason=f"{missing} missing: desired "
                    f"{asg.desired} -> {clamped}", **base)


def _naive(c: Counts, asg: AsgView, target: int, trigger: Trigger) -> Decision:
    """The old system's rule, for the benchmark only: +1 per shortage event, no cooldown,
    booting machines ignored."""
    short = c.free < target + c.waiting
    want = asg.desired + 1 if short else asg.desired
    ok, why = _capacity(c, asg, want, target)
    base: dict[str, Any] = dict(missing=missing_workers(c, target), want=want, capacity_ok=ok,
                capacity_reason=why)
    if trigger != "event" or not short or want > asg.max_size:
        return Decision(set_desired=None, reason="naive: no shortage event", **base)
    return Decision(set_desired=want, reason="naive: +1 for a shortage event", **base)


def _surplus(c: Counts, now: float, settings: PolicySettings, target: int,
             free_workers: Sequence[Worker], since: float | None
             ) -> tuple[str | None, float | None]:
    """Free workers above target + waiting for SCALE_IN_IDLE_SECONDS: give back one.

    One per reconcile (the reaper terminates it with decrement); the clock keeps running
    while the surplus lasts, and restarts from zero the moment it ends.
    """
    if c.free <= target + c.waiting:
        return None, None
    since = now if since is None else since
    if now - since < settings.scale_in_idle_seconds:
        return None, since
    candidates = [w for w in free_workers if w.status == "free" and w.healthy]
    if not candidates:
        return None, since
    # Free workers are interchangeable; the one heard from least recently is the one we
    # trust least, so it goes first (ties: by id, so the choice is reproducible).
    pick = min(candidates, key=lambda w: (w.last_heartbeat, w.instance_id))
    return pick.instance_id, since


# --- readings of a snapshot ------------------------------------------------------------
#: Activities that started this long before our SetDesiredCapacity still count as ours:
#: AWS stamps StartTime with its clock, we compare with ours.
CLOCK_SKEW_SECONDS = 5.0


@dataclass(frozen=True)
class Arriving:
    """Machines that will become workers but are not yet (from one snapshot)."""

    booting: int  # live ASG instances without a registered item (none, or status booting)
    pending: int  # desired above the live count: launches AWS has not started

    @property
    def total(self) -> int:
        return self.booting + self.pending


def arriving(asg: AsgState, registered: Iterable[str]) -> Arriving:
    """What is on its way: launched instances that have not registered, and launches AWS has
    not started yet (the ones a failing launch dooms)."""
    live = asg.live_ids
    return Arriving(booting=len(live - set(registered)),
                    pending=max(0, asg.desired - len(live)))


def booting(asg: AsgState, registered: Iterable[str]) -> int:
    """Instances that will become workers but are not yet: both kinds of ``arriving``."""
    return arriving(asg, registered).total


def protection_plan(asg: AsgState, leased: Iterable[str]) -> tuple[list[str], list[str]]:
    """(to protect, to unprotect): protected exactly while leased, so that a scale-in never
    picks a VM someone works on, and never keeps a VM nobody does."""
    leased = set(leased)
    protect, unprotect = [], []
    for inst in asg.instances:
        if inst.leaving:
            continue
        if inst.instance_id in leased and not inst.protected:
            protect.append(inst.instance_id)
        elif inst.instance_id not in leased and inst.protected:
            unprotect.append(inst.instance_id)
    return sorted(protect), sorted(unprotect)


@dataclass(frozen=True)
class LaunchStatus:
    ok: bool
    reason: str | None = None
    failed: tuple[Activity, ...] = ()  # failed activities since ``since`` (newest first)


def launch_status(activities: Sequence[Activity], since: float) -> LaunchStatus:
    """Whether the ASG launches what we asked for since ``since`` (our raise).

    The newest activity decides (AWS retries a failed launch as a new activity, so a later
    success means the quota or capacity problem went away); every failed one is reported.
    """
    recent = sorted((a for a in activities if a.start_time >= since - CLOCK_SKEW_SECONDS),
                    key=lambda a: a.start_time, reverse=True)
    failed = tuple(a for a in recent if a.failed)
    if not recent or not recent[0].failed:
        return LaunchStatus(ok=True, failed=failed)
    newest = recent[0]
    return LaunchStatus(ok=False, reason=f"instances fail to launch ({newest.status_code}): "
                        f"{newest.status_message or newest.description}", failed=failed)


@dataclass(frozen=True)
class Waiting:
    """One dispatcher's latest count of waiting claims."""

    waiting: int
    sent_at: float  # the report's own time (reports are compared by it)
    received_at: float  # our clock, for expiry


@dataclass(frozen=True)
class WaitingBook:
    """Every dispatcher's latest count of waiting claims, summed, kept honest between
    reports: one dispatcher's 0 never erases another's 50 (only the one holding the waiting
    queue has any, but any may report). A count lives until its dispatcher reports again
    (dispatchers also report the end of a shortage), each lease after a report serves a
    waiting claim (they go first) and takes one off, and a report older than ``memory``
    seconds is dropped (its dispatcher may be gone)."""

    counts: tuple[tuple[str, Waiting], ...] = ()

    def reported(self, waiting: int, sent_at: float, now: float, reporter: str = ""
                 ) -> WaitingBook:
        known = dict(self.counts)
        if reporter in known and sent_at < known[reporter].sent_at:
            return self  # an older report overtaken by a newer one
        known[reporter] = Waiting(waiting, sent_at, now)
        return WaitingBook(tuple(sorted(known.items())))

    def leased(self, sent_at: float) -> WaitingBook:
        """A lease (at ``sent_at``) took a waiting claim off the largest count before it."""
        candidates = [(w.waiting, r) for r, w in self.counts
                      if w.waiting > 0 and w.sent_at <= sent_at]
        if not candidates:
            return self
        _, reporter = max(candidates)
        known = dict(self.counts)
        w = known[reporter]
        known[reporter] = Waiting(w.waiting - 1, w.sent_at, w.received_at)
        return WaitingBook(tuple(sorted(known.items())))

    def current(self, now: float, memory: float) -> int:
        return sum(w.waiting for _, w in self.counts if now - w.received_at <= memory)
