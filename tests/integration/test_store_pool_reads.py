"""The incremental read of every worker (shared/store/pool.py) on the real table layer
(moto): each pass sees what a full read would, and a pass without changes reads no leased
item."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from shared.config import Settings
from shared.store import Store
from shared.store.pool import PoolReader

NOW = 1_000_000.0


@pytest.fixture
def store(settings: Settings) -> Store:
    s = Store.from_settings(settings)
    s.create_table()
    return s


def calls(store: Store) -> Counter[str]:
    seen: Counter[str] = Counter()

    def hook(model: Any, params: dict[str, Any], **_: Any) -> None:
        status = (params.get("ExpressionAttributeValues") or {}).get(":st", {}).get("S")
        seen[f"{model.name}:{status}" if status else model.name] += 1

    store.db.meta.events.register("before-call.dynamodb.*", hook)
    return seen


def as_full_read(store: Store) -> dict[str, set[str]]:
    return {st: {w.instance_id for w in store.workers.by_status(st)}
            for st in ("booting", "free", "leased", "draining", "dead")}


def ids_of(by_status: dict[str, Any]) -> dict[str, set[str]]:
    return {st: {w.instance_id for w in ws} for st, ws in by_status.items()}


def test_each_pass_sees_what_a_full_read_sees_and_reads_the_leased_once(store: Store) -> None:
    ids = [f"i-{k:017x}" for k in range(1, 7)]
    for k, iid in enumerate(ids):
        store.workers.register(iid, now=NOW + k, private_ip=f"10.0.0.{k + 1}", public_ip=None)
    for iid, user in ((ids[0], "alice"), (ids[1], "bob")):
        store.leases.grant(store.workers.get(iid), user_id=user, request_id=f"r-{user}",
                           lease_seconds=3600, now=NOW + 10, max_leases=1,
                           remember_seconds=60)
    store.workers.track_booting("i-00000000000000100", now=NOW)
    live = [*ids, "i-00000000000000100", "i-00000000000000200"]  # the last: no item yet
    reader = PoolReader(store.workers)

    got, how = reader.read(NOW + 20, live)
    assert how == "full" and ids_of(got) == as_full_read(store)

    seen = calls(store)
    got, how = reader.read(NOW + 25, live)  # nothing changed: the leased are kept
    assert how == "incremental" and ids_of(got) == as_full_read(store)
    assert "Query:leased" not in seen and seen["GetItem"] == 1  # the one with no item

    # a lease, a release and a registration between two passes
    store.leases.grant(store.workers.get(ids[2]), user_id="carol", request_id="r-carol",
                       lease_seconds=3600, now=NOW + 30, max_leases=1, remember_seconds=60)
    store.leases.release(ids[0], user_id="alice", now=NOW + 30)
    store.workers.register("i-00000000000000200", now=NOW + 30, private_ip="10.0.1.1",
                           public_ip=None)
    seen.clear()
    got, how = reader.read(NOW + 35, live)
    assert how == "incremental" and ids_of(got) == as_full_read(store)
    assert ids_of(got)["leased"] == {ids[1], ids[2]}
    assert "Query:leased" not in seen and seen["GetItem"] == 1  # carol's, leased meanwhile

    reader.forget()  # another replica was active: read in full again
    got, how = reader.read(NOW + 40, live)
    assert how == "full" and ids_of(got) == as_full_read(store)
