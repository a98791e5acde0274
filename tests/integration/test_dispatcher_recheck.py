"""LEASE_RECHECK_SECONDS: against an emulator whose conditional writes are not atomic (moto's
ThreadedMotoServer lets two leases of one worker both pass), the dispatcher re-reads each new
lease and gives it up if another write overtook it.

The overtaking write is made by the test, inside the recheck window, so the case is exact
(the race itself is shown by `WORKERPOOL_TEST_MOTO=threaded pytest
tests/integration/test_dispatcher_concurrency.py`: with LEASE_RECHECK_SECONDS=0 it hands
workers to two users; with the default it does not).
"""

from __future__ import annotations

import json

from shared import topology
from shared.config import Settings
from shared.store.table import marshal
from tests.helpers import wait_for
from tests.integration.test_dispatcher_support import (
    Client,
    launch,
    metrics_text,
    register_workers,
    start_dispatchers,
    stop_all,
    store_of,
)


def test_a_lease_overtaken_before_the_recheck_is_given_up_and_the_claim_gets_another_worker(
        pool: Settings) -> None:
    (proc,) = start_dispatchers(pool, lease_recheck_seconds=1.5)
    store = store_of(pool)
    client = Client(pool)
    try:
        ids = launch(pool, 2)
        register_workers(pool, ids)
        cid = client.send(topology.CLAIMS, json.dumps(
            {"request_id": "r-1", "user_id": "alice"}).encode())

        def alices() -> str | None:
            return next((w.instance_id for w in store.workers.by_status("leased")
                         if w.user_id == "alice"), None)

        first = wait_for(alices, 5, interval=0.05, what="alice's first lease")
        # what moto's lost race looks like: another dispatcher's write lands on top of ours
        store.db.update_item(
            TableName=pool.table_name, Key={"instanceId": {"S": first}},
            UpdateExpression="SET userId = :u, requestId = :r",
            ExpressionAttributeValues=marshal({":u": "mallory", ":r": "r-9"}))
        reply = json.loads(client.wait([cid], timeout=10)[cid])
        assert reply["status"] == "assigned"
        (other,) = set(ids) - {first}
        assert reply["worker"]["instance_id"] == other
        assert store.workers.get(other).user_id == "alice"  # type: ignore[union-attr]
        assert [w.instance_id for w in store.leases.held_by("alice")] == [other]
        assert store.requests.recall("alice", "r-1")["instance_id"] == other  # type: ignore[index]
        assert "workerpool_leases_lost_on_recheck_total 1.0" in metrics_text(proc)
    finally:
        client.close()
        stop_all([proc])
