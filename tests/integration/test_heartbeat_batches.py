"""Heartbeats written in batches (issue 15, item 6) on DynamoDB Local, which applies PartiQL
as AWS does: the batch keeps each single write's conditions, and a dispatcher writes many
agents' heartbeats in far fewer requests than heartbeats."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from shared.config import Settings
from shared.messages import Heartbeat, now_sent_at
from shared.store.heartbeats import BATCH, Beat
from tests.helpers import Proc, wait_for
from tests.integration.test_dispatcher_support import (
    launch,
    metrics_text,
    publish_agent,
    register_workers,
    start_dispatchers,
    stop_all,
    store_of,
)


@pytest.fixture
def pool(dynamodb_pool: Settings) -> Settings:
    return dynamodb_pool


@pytest.fixture
def dispatcher(pool: Settings) -> Iterator[Proc]:
    procs = start_dispatchers(pool, 1)
    yield procs[0]
    stop_all(procs)


def test_a_batch_writes_live_workers_and_refuses_the_rest_as_one_write_would(
        pool: Settings) -> None:
    store = store_of(pool)
    store.create_table()
    now = time.time()
    for iid in ("i-free", "i-draining"):
        store.workers.register(iid, now=now - 10, private_ip="10.0.0.1", public_ip=None,
                               instance_type="t3.medium", availability_zone="us-east-1a",
                               agent_version="1.0.0")
    store.workers.deregister("i-draining", now=now - 5)
    assert store.heartbeats.available()  # DynamoDB Local applies PartiQL updates

    got = store.heartbeats.write([Beat("i-free", True, now, last_activity=now - 30),
                                  Beat("i-draining", True, now),
                                  Beat("i-unknown", True, now)])
    assert got == ["written", "refused", "refused"]
    free = store.workers.get("i-free")
    assert free is not None and free.last_heartbeat == pytest.approx(now)
    assert store.workers.get("i-draining").last_heartbeat < now  # type: ignore[union-attr]
    assert store.workers.get("i-unknown") is None  # a refused statement creates nothing
    # an older heartbeat than the one written is refused (replays never move time back)
    assert store.heartbeats.write([Beat("i-free", True, now - 1)]) == ["refused"]


def test_one_dispatcher_writes_a_hundred_agents_heartbeats_in_batches(
        pool: Settings, dispatcher: Proc) -> None:
    ids = launch(pool, 100)
    register_workers(pool, ids)
    store = store_of(pool)
    before = {iid: store.workers.get(iid).last_heartbeat for iid in ids}  # type: ignore[union-attr]
    writes_before = _writes(dispatcher)
    activity = datetime.fromtimestamp(time.time() - 60, UTC)
    time.sleep(0.05)
    publish_agent(pool, [Heartbeat(type="heartbeat", instance_id=iid, healthy=True,
                                   sent_at=now_sent_at(), last_activity=activity).to_json()
                         for iid in ids])

    def beaten() -> bool:
        return all(store.workers.get(iid).last_heartbeat > before[iid]  # type: ignore[union-attr]
                   for iid in ids)

    wait_for(beaten, timeout=20, what="every heartbeat written")
    writes = _writes(dispatcher) - writes_before
    # 100 heartbeats: at least ceil(100 / 25) requests, and well under one per heartbeat
    assert 100 / BATCH <= writes <= 50, writes
    assert store.workers.lease_clock(ids[0]).last_activity == pytest.approx(  # type: ignore[union-attr]
        activity.timestamp(), abs=0.01)


def _writes(proc: Proc) -> float:
    m = re.search(r"^workerpool_heartbeat_writes_total (\S+)$", metrics_text(proc), re.M)
    return float(m.group(1)) if m else 0.0
