"""Pure parts of ``bench.day``: the day-shaped trace of claims, what a run's samples add up to,
and the side-by-side table. No I/O, no clock: times are day seconds (since midnight) or the
run's own seconds, passed in.

The day: each of N developers arrives around 9:00 (a ramp: normal, 15 min spread), leaves
for lunch around 12:00, comes back around 13:00 (most of them: the lunch dip and a second,
sharper ramp), leaves around 17:30 (45 min spread); some come back for an evening session
(18:30-20:30: the tail); N/2 visitors drop in for a short session or two during the day.
Each session is one claim, held until its user leaves; one lease per user at a time. Seeded:
the same arguments give the same day.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.report import num, table

HOUR = 3600.0
MINUTE = 60.0


@dataclass(frozen=True)
class Session:
    """One claim: who, when they arrive and when they leave (day seconds)."""

    user: str
    arrive: float
    leave: float


def _clock(rng: random.Random, mean_h: float, sd_min: float, lo_h: float, hi_h: float
           ) -> float:
    return min(max(rng.gauss(mean_h * HOUR, sd_min * MINUTE), lo_h * HOUR), hi_h * HOUR)


def day_trace(users: int, *, seed: int = 17, start_h: float = 7.0, end_h: float = 21.0
              ) -> list[Session]:
    """The day's sessions between ``start_h`` and ``end_h``, ordered by arrival."""
    rng = random.Random(seed)
    out: list[Session] = []
    for k in range(users):
        user = f"dev{k:03d}"
        morning = _clock(rng, 9.0, 15, 7.5, 11.5)
        lunch = max(morning + 20 * MINUTE, _clock(rng, 12.0, 15, 11.5, 12.75))
        out.append(Session(user, morning, lunch))
        back = rng.random() < 0.9
        if back:
            again = max(lunch + 15 * MINUTE, _clock(rng, 13.0, 12, 12.5, 14.5))
            home = max(again + 30 * MINUTE, _clock(rng, 17.5, 45, 15.5, 19.5))
            out.append(Session(user, again, home))
        if rng.random() < 0.3:
            evening = rng.uniform(18.5 * HOUR, 20.5 * HOUR)
            if not back or evening > out[-1].leave + 10 * MINUTE:
                out.append(Session(user, evening, evening + rng.uniform(20, 60) * MINUTE))
    for k in range(users // 2):  # visitors: a short session or two between the ramps
        for _ in range(rng.choice((1, 1, 2))):
            at = rng.uniform(9.5 * HOUR, 17.0 * HOUR)
            if not any(s.user == f"visitor{k:03d}" and s.arrive - HOUR < at < s.leave
                       for s in out):
                out.append(Session(f"visitor{k:03d}", at, at + rng.uniform(15, 45) * MINUTE))
    kept = [s for s in out if start_h * HOUR <= s.arrive < end_h * HOUR]
    return sorted((Session(s.user, s.arrive, min(s.leave, end_h * HOUR)) for s in kept),
                  key=lambda s: (s.arrive, s.user))


def arrivals_per_bin(trace: Sequence[Session], bin_s: float, start: float, end: float
                     ) -> list[int]:
    """Claims arriving in each ``bin_s`` of [start, end)."""
    bins = [0] * max(1, int((end - start) // bin_s))
    for s in trace:
        i = int((s.arrive - start) // bin_s)
        if 0 <= i < len(bins):
            bins[i] += 1
    return bins


def in_progress(trace: Sequence[Session], start: float, end: float, step: float
                ) -> list[tuple[float, int]]:
    """(t, sessions under way at t) for t in [start, end) every ``step`` day seconds: how
    many people want a machine at once, the demand the pool follows."""
    out, t = [], start
    while t < end:
        out.append((t, sum(1 for s in trace if s.arrive <= t < s.leave)))
        t += step
    return out


def vm_minutes(samples: Sequence[tuple[float, int]], speed: float) -> float:
    """Integral of a count over the run (samples of (run seconds, count), step-wise), in
    day minutes (``speed`` day seconds per run second)."""
    total = 0.0
    for (t0, n), (t1, _) in zip(samples, samples[1:], strict=False):
        total += n * max(0.0, t1 - t0)
    return total * speed / MINUTE


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]


def summary(variant: str, claims: Sequence[Mapping[str, Any]],
            pool: Mapping[str, Sequence[tuple[float, int]]], speed: float,
            extra: Mapping[str, Any]) -> dict[str, Any]:
    """One variant's figures. ``claims``: {status, wait_s (run seconds)}; ``pool``: samples of
    free, live and desired. Waits in day seconds."""
    waits = [c["wait_s"] * speed for c in claims if c.get("status") == "assigned"]
    return {"variant": variant, "claims": len(claims), "assigned": len(waits),
            "wait_p50": percentile(waits, 50), "wait_p95": percentile(waits, 95),
            "wait_max": max(waits) if waits else None,
            "waited_over_1min": sum(1 for w in waits if w > MINUTE),
            "idle_vm_min": vm_minutes(pool.get("free", ()), speed),
            "vm_min": vm_minutes(pool.get("live", ()), speed),
            "peak_desired": max((n for _, n in pool.get("desired", ())), default=0),
            **extra}


DAY_HEAD = ("warm target", "claims assigned", "wait p50 / p95 / max (day s)",
            "waited > 1 min", "idle VM-minutes (free workers)", "VM-minutes (all)",
            "peak desired", "boot to ready p50 / p90 (day s)")


RATIOS = (("wait_p50", "claim wait p50"), ("wait_p95", "p95"), ("wait_max", "max"),
          ("idle_vm_min", "idle VM-minutes"), ("vm_min", "all VM-minutes"))


def day_ratios(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """``learned:1 ÷ fixed:2 (same run): claim wait p50 0.26×, …`` for the first learned and
    the first fixed variant; None unless the run has both (or a figure is missing)."""
    learned = next((r for r in rows if str(r["variant"]).startswith("learned")), None)
    fixed = next((r for r in rows if str(r["variant"]).startswith("fixed")), None)
    if learned is None or fixed is None:
        return None
    parts = []
    for key, name in RATIOS:
        if learned.get(key) is None or not fixed.get(key):
            return None
        parts.append(f"{name} {learned[key] / fixed[key]:.2f}×")
    return f"{learned['variant']} ÷ {fixed['variant']} (same run): " + ", ".join(parts)


def day_table(rows: Sequence[Mapping[str, Any]]) -> str:
    return table(DAY_HEAD, [(
        r["variant"], f"{r['assigned']}/{r['claims']}",
        f"{num(r['wait_p50'], 0)} / {num(r['wait_p95'], 0)} / {num(r['wait_max'], 0)}",
        str(r["waited_over_1min"]), num(r["idle_vm_min"], 0), num(r["vm_min"], 0),
        str(r["peak_desired"]),
        f"{num(r.get('boot_p50'), 0)} / {num(r.get('boot_p90'), 0)}") for r in rows])
