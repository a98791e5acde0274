"""The learned warm target, on the real broker and the simulated fleet: ``python -m scaler``
with WARM_TARGET=learned measures its pool's boot times, hears claims arrive (the
dispatcher's leased events), keeps more workers warm while claims come quickly, says why in
its scale log line, and hands what it learned to the replica that takes over.

Timings are the test's (a demand window of seconds, boots of about a second): only what the
scaler decides and says is checked, never how fast anything was.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from shared import topology
from shared.broker import RpcClient
from shared.config import Settings
from shared.store import Store
from tests.conftest import env_for
from tests.helpers import Proc, unique, wait_for

pytestmark = pytest.mark.timeout(120)

TIMINGS = dict(HEARTBEAT_INTERVAL=0.5, HEARTBEAT_TIMEOUT=3, FLEET_BOOT_DELAY=0.2,
               FLEET_BOOT_TIMES="t3.medium=2:3", FLEET_SEED=1, WAIT_POLL_INTERVAL=0.1,
               RECONCILE_INTERVAL=0.2, COOLDOWN_SECONDS=0.5, LOCK_TTL_SECONDS=1.5,
               SCALE_IN_IDLE_SECONDS=3600, LOG_LEVEL="INFO",
               TARGET_AVAILABLE=1, WARM_TARGET="learned", WARM_MARGIN=1,
               DEMAND_WINDOW_SECONDS=12)


@pytest.fixture
def procs(pool: Settings) -> Iterator[dict[str, Proc]]:
    env = env_for(pool, **TIMINGS)
    running = {"dispatcher": Proc("dispatcher", env), "fleet": Proc("sim.fleet", env, "fleet"),
               "scaler": Proc("scaler", env, "scaler-1")}
    try:
        for p in running.values():
            p.wait_ready(30)
        yield running
    finally:
        for p in running.values():
            p.kill()


def claim_all(url: str, n: int) -> list[dict[str, Any]]:
    """n claims from n users at once (each may wait for its machine)."""
    rpc = RpcClient(url, "cli@warm")
    try:
        cids = [rpc.send(topology.CLAIMS, json.dumps(
            {"request_id": unique("r"), "user_id": f"u{k}", "wait_seconds": 60}).encode())
            for k in range(n)]
        got = rpc.wait(cids, 90)
    finally:
        rpc.close()
    return [json.loads(got[c]) for c in cids if c in got]


def test_a_learned_target_rises_with_demand_says_why_and_survives_a_failover(
        pool: Settings, procs: dict[str, Proc]) -> None:
    store = Store.from_settings(pool)
    # Given a quiet pool: TARGET_AVAILABLE 1 + margin 1 warm (nothing learned yet)
    wait_for(lambda: len(store.workers.find_free(limit=10)) >= 2, 30, interval=0.2,
             what="2 free workers")
    first = procs["scaler"].events("scale")[0]
    assert first["target_mode"] == "learned" and first["target"] == 2

    # When two claims take both warm workers at once (faster than machines boot)
    replies = claim_all(pool.amqp_url, 2)
    assert [r["status"] for r in replies] == ["assigned"] * 2

    # Then a raise that replaces them keeps more warm than TARGET_AVAILABLE + margin (the
    # first may come before the leased events: a reconcile can see the table first), and its
    # scale line says why: the forecast rate and the measured p90 time to ready
    line = wait_for(lambda: [e for e in procs["scaler"].events("scale") if e["target"] > 2],
                    30, interval=0.2, what="a raise for a learned target above 2")[0]
    assert line["forecast_per_min"] > 0 and line["p90_ready_s"] > 0
    assert "claims/min x p90" in line["target_reason"]
    assert "(t3.medium, 2 boots)" in line["target_reason"]

    # And a replica that takes over starts from what the first one learned
    assert procs["scaler"].stop() == 0
    heir = Proc("scaler", env_for(pool, **TIMINGS), name="scaler-2")
    procs["heir"] = heir
    heir.wait_ready(30)
    took = wait_for(lambda: heir.events("resumed_memory"), 20, what="memory taken over")[0]
    assert took["boot_samples"].get("t3.medium", 0) >= 2
