"""Bursts bigger than the warm pool (issue 11), as real processes: broker, moto server,
dispatcher, scaler, reaper and the simulated fleet.

A claim is refused for lack of capacity only when it is beyond what free + booting +
still-launchable machines can serve, counted in arrival order; the rest wait for their
machine. Each case starts its own pool (its own MaxSize and target) on a clean moto.
The desired-capacity sequence of each case is printed (``-s`` shows it).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from shared import topology
from shared.bootstrap import bootstrap
from shared.broker import RpcClient, purge
from shared.config import parse_settings
from shared.store import Store
from tests.conftest import env_for
from tests.helpers import Proc, unique, wait_for

pytestmark = pytest.mark.e2e

TIMINGS = dict(
    HEARTBEAT_INTERVAL=0.5, HEARTBEAT_TIMEOUT=4, REAP_INTERVAL=0.5, RECONCILE_INTERVAL=0.3,
    BOOT_TIMEOUT_SECONDS=60, FLEET_BOOT_DELAY=1.0, LOCK_TTL_SECONDS=3,
    WAIT_POLL_INTERVAL=0.1, ORPHAN_SWEEP_INTERVAL=5, SCALE_IN_IDLE_SECONDS=3600,
    LOG_LEVEL="INFO",
)


class BurstPool:
    """One pool on a clean moto: dispatcher, scaler, reaper, fleet."""

    def __init__(self, moto: str, amqp_url: str, *, max_size: int, **env: Any) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{moto}/moto-api/reset",
                                                      method="POST"), timeout=5).read()
        purge(amqp_url, "e2e", [q.name for q in topology.QUEUES])
        self.settings = parse_settings(amqp_url=amqp_url, aws_endpoint_url=moto,
                                       asg_max_size=max_size, health_port=0)
        bootstrap(self.settings)
        self.store = Store.from_settings(self.settings)
        full = env_for(self.settings, **{**TIMINGS, **env})
        self.scaler = Proc("scaler", full)
        self.procs = [Proc("dispatcher", full), self.scaler, Proc("reaper", full),
                      Proc("sim.fleet", full, "fleet")]
        for p in self.procs:
            p.wait_ready(30)
        self.rpc = RpcClient(amqp_url, "cli@bursts")

    def free(self) -> int:
        return len(self.store.workers.find_free(limit=1000))

    def wait_free(self, n: int, timeout: float = 90) -> None:
        wait_for(lambda: self.free() >= n, timeout, interval=0.3, what=f"{n} free workers")

    def send(self, user: str, wait: int) -> str:
        body = {"request_id": unique("r"), "user_id": user, "wait_seconds": wait}
        return self.rpc.send(topology.CLAIMS, json.dumps(body).encode())

    def replies(self, cids: list[str], timeout: float) -> list[dict[str, Any]]:
        got = self.rpc.wait(cids, timeout)
        assert len(got) == len(cids), f"{len(cids) - len(got)} claims got no reply"
        return [json.loads(got[c]) for c in cids]

    def desired_sequence(self) -> list[int]:
        """The desired capacity after each SetDesiredCapacity, from the scaler's log."""
        scales = self.scaler.events("scale")
        return [int(scales[0]["was"])] + [int(s["desired"]) for s in scales] if scales else []

    def reaches_max_size(self, max_size: int, timeout: float = 20) -> list[int]:
        """Waiting claims come before the warm target, and the target refills after them:
        desired ends at MaxSize (within a cooldown), never above it."""
        wait_for(lambda: (self.desired_sequence() or [0])[-1] == max_size, timeout,
                 what=f"desired {max_size}")
        sequence = self.desired_sequence()
        assert max(sequence) == max_size, sequence
        return sequence

    def close(self) -> None:
        self.rpc.close()
        codes = {p.name: p.stop() for p in reversed(self.procs)}
        assert all(code == 0 for code in codes.values()), codes


@pytest.fixture
def start(moto_endpoint: str, amqp_url: str) -> Iterator[Any]:
    pools: list[BurstPool] = []

    def make(**kw: Any) -> BurstPool:
        pools.append(BurstPool(moto_endpoint, amqp_url, **kw))
        return pools[-1]

    try:
        yield make
    except BaseException:
        for p in pools:
            print("\n\n".join(f"== {q.name}\n" + "\n".join(q.raw[-40:]) for q in p.procs))
        raise
    finally:
        for p in pools:
            p.close()


def statuses(replies: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in replies:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


def report(case: str, replies: list[dict[str, Any]], pool: BurstPool) -> None:
    print(f"\n[{case}] {statuses(replies)}; desired {pool.desired_sequence()}")
    for r in replies:
        if r["status"] != "assigned":
            print(f"  {r['status']}: {r['reason']}")


def test_a_burst_spread_over_two_seconds_is_served_whole_though_the_first_raise_covered_part(
        start: Any) -> None:
    """`workerpool dev` as a new user tried it: 9 claims from a shell loop (one every 0.25 s)
    against 2 warm machines, MaxSize 10. The scaler's first raise covers what had arrived;
    the cooldown holds the rest back; nobody is refused, since 8 more machines may come."""
    pool = start(max_size=10, TARGET_AVAILABLE=2, COOLDOWN_SECONDS=4)
    pool.wait_free(2)
    cids = []
    for i in range(9):
        cids.append(pool.send(f"dev{i}", wait=40))
        time.sleep(0.25)
    replies = pool.replies(cids, timeout=55)
    report("spread burst", replies, pool)
    assert statuses(replies) == {"assigned": 9}
    assert len({r["worker"]["instance_id"] for r in replies}) == 9
    print(f"  desired, once the target refilled: {pool.reaches_max_size(10)}")


def test_nine_claims_at_once_on_two_warm_machines_are_all_served(start: Any) -> None:
    pool = start(max_size=10, TARGET_AVAILABLE=2, COOLDOWN_SECONDS=5)
    pool.wait_free(2)
    cids = [pool.send(f"at-once{i}", wait=40) for i in range(9)]
    replies = pool.replies(cids, timeout=55)
    report("9 at once", replies, pool)
    assert statuses(replies) == {"assigned": 9}
    assert len({r["worker"]["instance_id"] for r in replies}) == 9
    print(f"  desired, once the target refilled: {pool.reaches_max_size(10)}")


def test_sixty_claims_on_thirty_free_use_the_ten_machines_max_size_still_allows(
        start: Any) -> None:
    pool = start(max_size=40, TARGET_AVAILABLE=30, COOLDOWN_SECONDS=2, HEARTBEAT_INTERVAL=1,
                 HEARTBEAT_TIMEOUT=8)
    pool.wait_free(30, timeout=150)
    time.sleep(1)  # the scaler's next reconcile counts all 30 as free
    cids = [pool.send(f"big{i}", wait=60) for i in range(60)]
    replies = pool.replies(cids, timeout=75)
    report("60 on 30 free", replies, pool)
    counts = statuses(replies)
    assert counts.get("assigned", 0) >= 38, counts
    assert set(counts) <= {"assigned", "unavailable"}
    assigned = [r["worker"]["instance_id"] for r in replies if r["status"] == "assigned"]
    assert len(set(assigned)) == len(assigned)  # never one worker twice
    assert max(pool.desired_sequence()) == 40
    for r in replies:
        if r["status"] == "unavailable":
            assert "MaxSize 40" in r["reason"] and " ahead of it and " in r["reason"], r


def test_at_max_size_one_the_second_claim_is_refused_while_the_first_waits_for_the_machine(
        start: Any) -> None:
    pool = start(max_size=1, TARGET_AVAILABLE=0, COOLDOWN_SECONDS=2, FLEET_BOOT_DELAY=3)
    first = pool.send("first", wait=30)
    time.sleep(0.5)
    second = pool.send("second", wait=30)
    began = time.monotonic()
    (refused,) = pool.replies([second], timeout=10)
    refused_after = time.monotonic() - began
    (served,) = pool.replies([first], timeout=40)
    report("MaxSize 1", [served, refused], pool)
    assert served["status"] == "assigned"
    assert refused["status"] == "unavailable"
    assert refused["reason"].startswith("no machine for this claim: 1 claim ahead of it and "
                                        "1 machine free or coming")
    assert refused_after < 10  # answered well before its 30 s wait was over
    assert pool.desired_sequence() == [0, 1]
