"""Several real dispatcher processes competing: exactly one reply per request, no worker
leased twice, the table agreeing with the replies, and waiting claims that survive a
SIGKILLed dispatcher.

DynamoDB here is DynamoDB Local (tests/dynamodb_local.py), whose conditional writes and
transactions are atomic under concurrency as AWS's are; the ASG stays on moto. So these tests
prove our conditional writes, with no emulator workaround."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import pytest

from shared import topology
from shared.config import Settings
from tests.helpers import Proc
from tests.integration.test_dispatcher_support import (
    Client,
    launch,
    register_workers,
    start_dispatchers,
    stop_all,
    store_of,
    wait_logged,
)

#: no re-read of each new lease: DynamoDB Local's writes are atomic (docs/emulators.md)
ATOMIC: dict[str, str] = {}


@pytest.fixture
def pool(dynamodb_pool: Settings) -> Settings:
    """This module's pool: the table on DynamoDB Local, the ASG on moto, empty queues."""
    return dynamodb_pool


@pytest.fixture
def three(pool: Settings) -> Iterator[list[Proc]]:
    procs = start_dispatchers(pool, 3, **ATOMIC)
    yield procs
    stop_all(procs)


def claim_all(pool: Settings, n: int, timeout: float, **fields: object
              ) -> tuple[Client, dict[str, dict[str, object]]]:
    """n concurrent claims from n users; their replies by request_id."""
    client = Client(pool)
    cids = {}
    for k in range(n):
        body = {"request_id": f"r-{k}", "user_id": f"user{k}", **fields}
        cids[client.send(topology.CLAIMS, json.dumps(body).encode())] = f"r-{k}"
    got = client.wait(cids, timeout=timeout)
    client.settle(0.5)  # a second reply to anyone would show up now
    return client, {cids[c]: json.loads(b) for c, b in got.items()}


def assert_one_reply_each(client: Client, n: int) -> None:
    per_request = Counter(cid for cid, _ in client.all)
    assert len(per_request) == n and set(per_request.values()) == {1}


def test_three_dispatchers_give_200_users_200_distinct_workers_and_the_table_agrees(
        pool: Settings, three: list[Proc]) -> None:
    ids = launch(pool, 200)
    register_workers(pool, ids)
    client, replies = claim_all(pool, 200, timeout=90)
    assert_one_reply_each(client, 200)
    assert Counter(r["status"] for r in replies.values()) == {"assigned": 200}
    given = {rid: r["worker"]["instance_id"] for rid, r in replies.items()}  # type: ignore[index]
    assert sorted(given.values()) == ids  # every worker once, none twice
    store = store_of(pool)
    for k in range(200):
        w = store.workers.get(given[f"r-{k}"])
        assert w is not None and (w.status, w.user_id, w.request_id) == (
            "leased", f"user{k}", f"r-{k}")
    assert store.workers.count("free") == 0
    client.close()


def test_three_dispatchers_over_50_workers_assign_50_and_answer_150_unavailable(
        pool: Settings, three: list[Proc]) -> None:
    ids = launch(pool, 50)
    register_workers(pool, ids)
    client, replies = claim_all(pool, 200, timeout=60, wait_seconds=2)
    assert_one_reply_each(client, 200)
    assert Counter(r["status"] for r in replies.values()) == {"assigned": 50,
                                                             "unavailable": 150}
    given = [r["worker"]["instance_id"] for r in replies.values()  # type: ignore[index]
             if r["status"] == "assigned"]
    assert sorted(given) == ids
    reasons = {r["reason"] for r in replies.values() if r["status"] == "unavailable"}
    assert all("no worker became free within 2 s" in str(x) for x in reasons)
    leased = store_of(pool).workers.by_status("leased")
    assert sorted(w.instance_id for w in leased) == ids
    client.close()


def test_claims_held_by_a_sigkilled_dispatcher_are_all_answered_once_by_another(
        pool: Settings) -> None:
    (first,) = start_dispatchers(pool, **ATOMIC)
    ids = launch(pool, 20)
    client = Client(pool)
    cids = [client.send(topology.CLAIMS, json.dumps(
        {"request_id": f"r-{k}", "user_id": f"user{k}", "wait_seconds": 60}).encode())
        for k in range(20)]
    wait_logged(first, "claim waits for a free worker", count=20)
    (second,) = start_dispatchers(pool, **ATOMIC)  # a standby on the waiting queue
    try:
        first.kill()  # SIGKILL while it holds the 20 waiting claims unacked
        register_workers(pool, ids, wait=False)
        got = client.wait(cids, timeout=30)
        client.settle(1.0)
        assert len(got) == 20
        assert_one_reply_each(client, 20)
        workers = [json.loads(b)["worker"]["instance_id"] for b in got.values()]
        assert sorted(workers) == ids
    finally:
        stop_all([second])
        client.close()
