"""The learned warm target's pure parts (scaler/demand.py), as tables of cases: arrival rates,
boot times, the target and its words, and what survives a failover."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from scaler.demand import (
    BOOT_SAMPLES,
    BootTimes,
    Demand,
    Launches,
    launches_seen,
    noted,
    percentile,
    restored,
    warm_target,
)
from scaler.memory import PoolMemory
from scaler.policy import AsgView, Counts, decide
from shared.state import AsgInstance, AsgState, Worker

NOW = 1_800_000_000.0
WINDOW = 1800.0  # the slow rate's time constant; the fast one's is 300 s


def steady(per_minute: float, minutes: float, start: float = NOW) -> Demand:
    """Arrivals at a steady rate for ``minutes``."""
    d = Demand()
    gap = 60 / per_minute
    for k in range(int(minutes * 60 / gap)):
        d = d.arrived(start + k * gap, WINDOW)
    return d


def test_a_steady_rate_is_learned_within_a_few_fast_time_constants() -> None:
    d = steady(2.0, 30)  # 30 min at 2 claims/min: six fast time constants
    assert d.per_second(NOW + 1800, WINDOW) * 60 == pytest.approx(2.0, rel=0.1)


def test_a_morning_ramp_is_followed_by_the_fast_rate_and_a_lull_remembered_by_the_slow() -> None:
    quiet = steady(0.2, 60)
    ramp = quiet
    for k in range(60):  # then 10 minutes at 6 claims/min
        ramp = ramp.arrived(NOW + 3600 + k * 10, WINDOW)
    after_ramp = ramp.per_second(NOW + 4200, WINDOW) * 60
    assert after_ramp > 3.5  # the fast rate is most of the way there after 2 of its constants
    # 20 minutes without a claim: the fast rate has decayed, the slow one still remembers
    lull = ramp.per_second(NOW + 4200 + 1200, WINDOW) * 60
    fast_only = ramp.fast * math.exp(-1800 / 300) * 60
    assert lull > 5 * fast_only and lull > 0.3


def test_no_arrivals_at_all_forecast_nothing_and_an_old_event_counts_as_the_newest() -> None:
    assert Demand().per_second(NOW, WINDOW) == 0.0
    d = Demand().arrived(NOW, WINDOW).arrived(NOW - 50, WINDOW)  # overtaken by a newer one
    assert d.at == NOW and d.per_second(NOW, WINDOW) == pytest.approx(2 / 300)


@pytest.mark.parametrize(("values", "p", "expected"), [
    ([5.0], 90, 5.0),
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 90, 9.0),
    ([10.0, 1.0, 2.0], 90, 10.0),
    ([3.0, 1.0, 2.0, 4.0], 50, 2.0),
])
def test_percentile_is_the_nearest_rank(values: list[float], p: float, expected: float) -> None:
    assert percentile(values, p) == expected


def test_boot_times_keep_the_newest_samples_per_type_and_drop_impossible_ones() -> None:
    b = BootTimes().added([("t3.medium", float(s)) for s in range(1, 50)], limit=600)
    b = b.added([("t3.medium", 0.0), ("t3.medium", 900.0), ("m5.large", 30.0)], limit=600)
    own = dict(b.by_type)
    assert len(own["t3.medium"]) == BOOT_SAMPLES and own["t3.medium"][-1] == 49.0
    assert b.p90("t3.medium") == (46.0, BOOT_SAMPLES, "t3.medium")
    assert b.p90("m5.large") == (30.0, 1, "m5.large")
    # a type never seen borrows everyone's; nothing measured: nothing to say
    assert b.p90("t3a.medium")[1:] == (BOOT_SAMPLES + 1, "all types")
    assert BootTimes().p90("t3.medium") == (None, 0, None)


def test_launches_are_timed_from_first_sight_to_registration() -> None:
    # the first snapshot's instances were there before we looked: never sampled
    t, samples = launches_seen(Launches(), {"i-old"}, {}, NOW, None)
    assert samples == [] and dict(t.since) == {"i-old": None}
    # a raise at NOW + 1; the next snapshot sees i-new (launched after the raise)
    t, _ = launches_seen(t, {"i-old", "i-new"}, {}, NOW + 5, NOW + 1)
    t, samples = launches_seen(t, {"i-old", "i-new"},
                               {"i-old": ("t3.medium", NOW + 6), "i-new": ("t3a.medium", NOW + 61)},
                               NOW + 70, NOW + 5)
    assert samples == [("t3a.medium", 60.0)] and t.since == ()
    # without a registration time the snapshot's own time stands in; gone ones are forgotten
    t, _ = launches_seen(t, {"i-x", "i-y"}, {}, NOW + 80, NOW + 70)
    t, samples = launches_seen(t, {"i-x"}, {"i-x": (None, None)}, NOW + 100, NOW + 80)
    assert samples == [("unknown", 30.0)] and t.since == ()


@dataclass
class S:
    target_available: int = 2
    cooldown_seconds: float = 30
    scale_strategy: str = "missing"
    scale_in_idle_seconds: float = 600


# (case, mode, floor, margin, claims per minute, p90 seconds, expected target)
TARGETS = [
    ("fixed is TARGET_AVAILABLE whatever the demand", "fixed", 2, 1, 10.0, 120.0, 2),
    ("learned with nothing measured: the floor plus the margin", "learned", 2, 1, 0.0, None, 3),
    ("learned at night: the floor plus the margin", "learned", 1, 1, 0.05, 120.0, 2),
    ("learned in the 9:00 ramp: claims expected while one machine boots", "learned", 1, 1,
     3.0, 120.0, 7),
    ("a fraction of a claim expected is a machine", "learned", 0, 1, 0.6, 150.0, 3),
    ("an exact whole number is not rounded up", "learned", 0, 0, 2.0, 90.0, 3),
    ("no margin", "learned", 1, 0, 3.0, 120.0, 6),
]


@pytest.mark.parametrize(("case", "mode", "floor", "margin", "per_min", "p90", "expected"),
                         TARGETS, ids=[c[0] for c in TARGETS])
def test_the_warm_target(case: str, mode: str, floor: int, margin: int, per_min: float,
                         p90: float | None, expected: int) -> None:
    w = warm_target(mode, floor, margin, per_min / 60,
                    (p90, 12 if p90 else 0, "t3.medium" if p90 else None))
    assert w.target == expected
    assert w.mode == mode and str(expected) in w.reason


def test_the_reason_says_how_the_target_was_reached() -> None:
    w = warm_target("learned", 1, 1, 3.0 / 60, (120.0, 12, "t3.medium"))
    assert w.reason == ("learned: 3.00 claims/min x p90 120 s to ready (t3.medium, 12 boots) "
                        "= 6.00; max(TARGET_AVAILABLE 1, 6) + margin 1 = 7")
    assert (w.per_minute, w.p90_ready_seconds, w.samples) == (3.0, 120.0, 12)


def test_the_policy_keeps_the_warm_target_it_is_given_instead_of_target_available() -> None:
    d = decide(Counts(free=2), AsgView(2, 0, 20), None, NOW, S(), target=7)
    assert d.set_desired == 7 and d.missing == 5
    # and gives back only what is above it
    free = [Worker(f"i-{k}", "free", NOW - k, healthy=True) for k in range(8)]
    d = decide(Counts(free=8), AsgView(8, 0, 20), None, NOW, S(scale_in_idle_seconds=0),
               free_workers=free, surplus_since=NOW - 1, target=7)
    assert d.drain == "i-7"
    assert decide(Counts(free=7), AsgView(7, 0, 20), None, NOW, S(scale_in_idle_seconds=0),
                  free_workers=free[:7], surplus_since=NOW - 1, target=7).drain is None


def test_demand_and_boot_times_survive_a_failover_through_the_notes() -> None:
    d, b = steady(2.0, 10), BootTimes().added([("t3.medium", 95.5)], 600)
    assert restored(noted(d, b)) == (d, b)
    assert restored({"demand": "garbage", "boots": 3}) == (Demand(), BootTimes())
    mine = PoolMemory(demand=d, boots=b)
    heir = PoolMemory()
    assert heir.restore(mine.notes(), NOW) and (heir.demand, heir.boots) == (d, b)
    assert not PoolMemory().restore({}, NOW) and not PoolMemory().restore(
        {"scalerMemory": "{not json"}, NOW)


def test_the_memory_samples_boots_from_snapshots() -> None:
    mem = PoolMemory()

    def asg(*ids: str) -> AsgState:
        return AsgState("g", 0, 10, len(ids), tuple(AsgInstance(i, "InService") for i in ids))

    mem.observe(asg(), [], NOW, None, 600)
    mem.observe(asg("i-a"), [], NOW + 2, NOW + 1, 600)
    got = mem.observe(asg("i-a"), [Worker("i-a", "free", NOW + 40, instance_type="m5.large",
                                          registered_at=NOW + 31)], NOW + 40, NOW + 1, 600)
    assert got == [("m5.large", 30.0)]
    assert mem.boots.p90("m5.large")[0] == 30.0
