"""The incremental read of every worker (shared/store/pool.py): what a pass reads."""

from __future__ import annotations

from shared.state import Worker
from shared.store.pool import LOOKUPS, RESYNC_SECONDS, Plan, kept_leased, plan

NOW = 10_000.0


def leased(*ids: str) -> dict[str, Worker]:
    return {i: Worker(i, "leased", last_heartbeat=NOW, user_id="u") for i in ids}


def test_the_first_pass_and_a_resync_read_the_leased_in_full() -> None:
    assert plan(["i-1"], [], {}, synced_at=None, now=NOW) == Plan(full=True)
    assert plan([], [], {}, synced_at=NOW - RESYNC_SECONDS, now=NOW) == Plan(full=True)
    assert not plan([], [], {}, synced_at=NOW - RESYNC_SECONDS + 1, now=NOW).full


def test_only_live_instances_no_read_placed_are_looked_up() -> None:
    got = plan(["i-free", "i-kept", "i-new", "i-booting"], ["i-free", "i-booting"],
               leased("i-kept", "i-gone"), synced_at=NOW - 5, now=NOW)
    assert got == Plan(full=False, look_up=frozenset({"i-new"}))


def test_more_to_look_up_than_lookups_reads_in_full() -> None:
    live = [f"i-{k}" for k in range(LOOKUPS + 1)]
    assert plan(live, [], {}, synced_at=NOW - 5, now=NOW).full
    assert not plan(live[:-1], [], {}, synced_at=NOW - 5, now=NOW).full


def test_the_kept_set_loses_those_seen_elsewhere_and_gains_those_found_leased() -> None:
    kept = leased("i-a", "i-b")
    found = [Worker("i-c", "leased", last_heartbeat=NOW, user_id="v"),
             Worker("i-d", "free", last_heartbeat=NOW, healthy=True)]
    assert sorted(kept_leased(kept, ["i-a"], found)) == ["i-b", "i-c"]
    assert sorted(kept) == ["i-a", "i-b"]  # not changed in place
