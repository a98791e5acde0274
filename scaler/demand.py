"""The learned warm target's judgement (pure): how fast claims arrive, how long a machine
takes from launch to ready, and how many free workers that asks for.

* **Arrivals** are two exponentially weighted rates of the dispatchers' ``leased`` events
  (one per lease): a fast one (time constant DEMAND_WINDOW_SECONDS / 6) that follows a
  morning ramp within minutes, and a slow one (DEMAND_WINDOW_SECONDS) that remembers the
  last half hour through a lull. The forecast is the higher of the two: demand is met on
  the way up at once, and given back slowly on the way down.
* **Time to ready** is a bounded sample per instance type (the newest BOOT_SAMPLES) of
  seconds from an instance's launch (first seen in DescribeAutoScalingGroups, or our raise
  if later) to its registration; its 90th percentile is what a claim arriving now waits for
  a machine launched now.
* **The target**: ``max(TARGET_AVAILABLE, ceil(claims per second x p90 seconds)) + margin``
  (learned), or TARGET_AVAILABLE (fixed).

State in, state out; time is passed in; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: boot times kept per instance type (the newest)
BOOT_SAMPLES = 32
#: the fast rate's time constant is the window's this fraction
FAST_FRACTION = 1 / 6


@dataclass(frozen=True)
class Demand:
    """Claim arrivals as two exponentially weighted rates (per second) as of ``at``."""

    fast: float = 0.0
    slow: float = 0.0
    at: float | None = None

    def _decayed(self, now: float, window: float) -> tuple[float, float]:
        if self.at is None:
            return 0.0, 0.0
        dt = max(0.0, now - self.at)
        return (self.fast * math.exp(-dt / (window * FAST_FRACTION)),
                self.slow * math.exp(-dt / window))

    def arrived(self, t: float, window: float) -> Demand:
        """One claim at ``t`` (an event older than the last one counts as of the last)."""
        at = t if self.at is None else max(t, self.at)
        fast, slow = self._decayed(at, window)
        return Demand(fast + 1 / (window * FAST_FRACTION), slow + 1 / window, at)

    def per_second(self, now: float, window: float) -> float:
        """The forecast: the higher of the two rates, as of ``now``."""
        return max(self._decayed(now, window))


@dataclass(frozen=True)
class BootTimes:
    """Seconds from launch to registration, the newest BOOT_SAMPLES per instance type."""

    by_type: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def added(self, samples: Iterable[tuple[str, float]], limit: float) -> BootTimes:
        """With new samples (type, seconds); non-positive ones and any beyond ``limit`` (a
        machine that never booted and was replaced) are left out."""
        known = dict(self.by_type)
        for itype, seconds in samples:
            if 0 < seconds <= limit:
                known[itype] = (*known.get(itype, ()), round(seconds, 3))[-BOOT_SAMPLES:]
        return BootTimes(tuple(sorted(known.items())))

    def p90(self, instance_type: str | None) -> tuple[float | None, int, str | None]:
        """(p90 seconds, samples it rests on, whose): that type's own samples, or every
        type's when it has none yet; (None, 0, None) when nothing was measured."""
        known = dict(self.by_type)
        own = known.get(instance_type or "", ())
        if own:
            return percentile(own, 90), len(own), instance_type
        pooled = [s for samples in known.values() for s in samples]
        if not pooled:
            return None, 0, None
        return percentile(pooled, 90), len(pooled), "all types"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p % of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * p / 100))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Launches:
    """Instances seen launching and not registered yet: id → the earliest time they can
    have launched (None: already there when we started watching; never sampled)."""

    since: tuple[tuple[str, float | None], ...] = ()


def launches_seen(tracked: Launches, live: Iterable[str],
                  registered: Mapping[str, tuple[str | None, float | None]], now: float,
                  launched_after: float | None) -> tuple[Launches, list[tuple[str, float]]]:
    """One snapshot's news: instances that appeared (launched after ``launched_after``:
    our previous snapshot or our raise, whichever is later; None on the first snapshot,
    whose instances' launch times are unknown), and boot-time samples (type, seconds) for
    the ones that registered since (``registered``: id → (type, registration time, or None
    to take ``now``))."""
    known = dict(tracked.since)
    samples: list[tuple[str, float]] = []
    live = set(live)
    for iid in sorted(live - known.keys() - registered.keys()):
        known[iid] = launched_after
    for iid in sorted(known):
        if iid in registered:
            launched = known.pop(iid)
            itype, at = registered[iid]
            if launched is not None:
                samples.append((itype or "unknown", (at if at is not None else now) - launched))
        elif iid not in live:
            del known[iid]  # gone before it registered (failed, or recycled)
    return Launches(tuple(sorted(known.items()))), samples


@dataclass(frozen=True)
class WarmTarget:
    """How many free workers to keep, and why (the words go into the scale log line)."""

    target: int
    reason: str
    mode: str = "fixed"
    per_minute: float | None = None
    p90_ready_seconds: float | None = None
    instance_type: str | None = None
    samples: int = 0


def warm_target(mode: str, floor: int, margin: int, per_second: float,
                p90: tuple[float | None, int, str | None]) -> WarmTarget:
    """``fixed``: TARGET_AVAILABLE. ``learned``: max(TARGET_AVAILABLE, ceil(claims expected
    while one machine boots)) + margin; with no boot measured yet, the floor + margin. Both
    carry the forecast and the p90 (fixed says what learned would keep)."""
    seconds, n, whose = p90
    per_minute = per_second * 60
    expected = per_second * seconds if seconds is not None else 0.0
    need = math.ceil(round(expected, 6))
    target = max(floor, need) + margin
    if mode != "learned":  # what learned would keep, for an operator weighing the switch
        return WarmTarget(floor, f"fixed: TARGET_AVAILABLE {floor} (learned would keep "
                          f"{target})", "fixed", round(per_minute, 3), seconds, whose, n)
    if seconds is None:
        how = f"{per_minute:.2f} claims/min, no time to ready measured yet"
    else:
        shown = f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"
        how = (f"{per_minute:.2f} claims/min x p90 {shown} s to ready ({whose}, "
               f"{n} boots) = {expected:.2f}")
    return WarmTarget(target, f"learned: {how}; max(TARGET_AVAILABLE {floor}, {need}) + "
                      f"margin {margin} = {target}", "learned", round(per_minute, 3),
                      seconds, whose, n)


def restored(notes: Mapping[str, object]) -> tuple[Demand, BootTimes]:
    """Demand and boot times from a predecessor's note (``memory`` of shared.leader notes,
    see scaler/memory.py); empty ones when absent or unreadable."""
    try:
        d = notes.get("demand") or {}
        demand = Demand(float(d["fast"]), float(d["slow"]), float(d["at"])) \
            if isinstance(d, dict) and d.get("at") is not None else Demand()
        boots = notes.get("boots") or {}
        times = BootTimes(tuple(sorted(
            (str(k), tuple(float(x) for x in v)[-BOOT_SAMPLES:])
            for k, v in boots.items()))) if isinstance(boots, dict) else BootTimes()
        return demand, times
    except (KeyError, TypeError, ValueError):
        return Demand(), BootTimes()


def noted(demand: Demand, boots: BootTimes) -> dict[str, object]:
    """What ``restored`` reads back."""
    return {"demand": {"fast": demand.fast, "slow": demand.slow, "at": demand.at},
            "boots": {k: list(v) for k, v in boots.by_type}}

