"""The table layer against moto: conditional state changes, index queries, no Scans."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import Any

import pytest

from shared.config import Settings
from shared.errors import ConditionFailed
from shared.store import RequestSeen, Store, UserAtLimit


@pytest.fixture
def store(settings: Settings) -> Store:
    s = Store.from_settings(settings)
    s.create_table()
    return s


def register(store: Store, n: int, now: float) -> list[str]:
    ids = [f"i-{k:017x}" for k in range(1, n + 1)]
    for k, iid in enumerate(ids):
        store.workers.register(iid, now=now + k * 0.001, private_ip=f"10.0.0.{k + 1}", public_ip=None)
    return ids


def operations(store: Store) -> Counter[str]:
    """Count the DynamoDB operations this store's client performs from now on."""
    seen: Counter[str] = Counter()

    def hook(model: Any, **_: Any) -> None:
        seen[model.name] += 1

    store.db.meta.events.register("before-call.dynamodb", hook)
    return seen


@pytest.mark.skipif(os.environ.get("WORKERPOOL_TEST_MOTO") == "threaded",
                    reason="moto's stock server does not make conditional writes atomic; this "
                    "checks ours, which rely on DynamoDB's atomicity")
def test_twenty_threads_leasing_one_worker_give_exactly_one_winner(store: Store) -> None:
    now = time.time()
    (iid,) = register(store, 1, now)
    worker = store.workers.get(iid)
    assert worker is not None
    results: list[str] = []
    barrier = threading.Barrier(20)

    def attempt(k: int) -> None:
        barrier.wait()
        try:
            store.leases.grant(worker, user_id=f"user{k}", request_id=f"r{k}", lease_seconds=60,
                        now=now, max_leases=1, remember_seconds=86400)
            results.append(f"won:user{k}")
        except ConditionFailed:
            results.append("taken")

    threads = [threading.Thread(target=attempt, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.startswith("won")]
    assert len(winners) == 1 and results.count("taken") == 19
    item = store.workers.get(iid)
    assert item is not None and item.status == "leased"
    assert f"won:{item.user_id}" == winners[0]


def test_finding_a_free_worker_is_a_query_and_never_a_scan(store: Store) -> None:
    register(store, 30, time.time())
    ops = operations(store)
    free = store.workers.find_free(limit=5)
    assert len(free) == 5 and all(w.status == "free" for w in free)
    assert ops["Query"] >= 1 and ops["Scan"] == 0


def test_an_unhealthy_free_worker_is_not_found_as_free(store: Store) -> None:
    now = time.time()
    a, b = register(store, 2, now)
    store.workers.heartbeat(a, healthy=False, now=now + 1)
    assert [w.instance_id for w in store.workers.find_free(limit=10)] == [b]


def test_the_same_request_is_remembered_and_a_second_lease_refused(store: Store) -> None:
    now = time.time()
    a, b = register(store, 2, now)
    wa, wb = store.workers.get(a), store.workers.get(b)
    assert wa and wb
    store.leases.grant(wa, user_id="alice", request_id="r1", lease_seconds=60, now=now, max_leases=1,
                remember_seconds=86400)
    with pytest.raises(RequestSeen) as seen:
        store.leases.grant(wb, user_id="alice", request_id="r1", lease_seconds=60, now=now,
                    max_leases=1, remember_seconds=86400)
    assert seen.value.outcome["status"] == "assigned" and seen.value.outcome["instance_id"] == a
    assert seen.value.outcome["private_ip"] == "10.0.0.1"  # answered from it once recycled
    with pytest.raises(UserAtLimit):
        store.leases.grant(wb, user_id="alice", request_id="r2", lease_seconds=60, now=now,
                    max_leases=1, remember_seconds=86400)
    # another user's request with the same id is a different request
    store.leases.grant(wb, user_id="bob", request_id="r1", lease_seconds=60, now=now, max_leases=1,
                remember_seconds=86400)
    assert store.workers.get(b).user_id == "bob"  # type: ignore[union-attr]
    assert store.workers.get(a).status == "leased"  # type: ignore[union-attr]


def test_renew_and_release_only_by_the_holder_of_a_live_lease(store: Store) -> None:
    now = time.time()
    (a,) = register(store, 1, now)
    w = store.leases.grant(store.workers.get(a), user_id="alice", request_id="r1",  # type: ignore[arg-type]
                    lease_seconds=60, now=now, max_leases=1, remember_seconds=86400)
    with pytest.raises(ConditionFailed):
        store.leases.renew(a, user_id="mallory", lease_seconds=600, now=now)
    with pytest.raises(ConditionFailed):
        store.leases.release(a, user_id="mallory", now=now)
    with pytest.raises(ConditionFailed):  # expired: renew refused
        store.leases.renew(a, user_id="alice", lease_seconds=600, now=w.lease_expiry + 1)
    assert store.leases.renew(a, user_id="alice", lease_seconds=600, now=now).lease_expiry == int(now + 600)
    assert store.leases.release(a, user_id="alice", now=now).status == "draining"
    assert store.leases.held_by("alice") == []
    with pytest.raises(ConditionFailed):  # released twice
        store.leases.release(a, user_id="alice", now=now)


def test_expiry_loses_to_a_renew_that_landed_first(store: Store) -> None:
    now = time.time()
    (a,) = register(store, 1, now)
    store.leases.grant(store.workers.get(a), user_id="alice", request_id="r1",  # type: ignore[arg-type]
                lease_seconds=10, now=now, max_leases=1, remember_seconds=86400)
    seen = store.leases.expired(now + 11)
    assert [w.instance_id for w in seen] == [a]
    store.leases.renew(a, user_id="alice", lease_seconds=10, now=now + 5)  # lands between read and write
    with pytest.raises(ConditionFailed):
        store.leases.expire(seen[0], now=now + 11)
    assert store.workers.get(a).status == "leased"  # type: ignore[union-attr]


def test_a_dead_mark_loses_to_a_fresh_heartbeat(store: Store) -> None:
    now = time.time()
    (a,) = register(store, 1, now)
    stale = store.workers.by_status("free", heartbeat_before=now + 100)
    store.workers.heartbeat(a, healthy=True, now=now + 50)
    with pytest.raises(ConditionFailed):
        store.workers.mark_dead(stale[0], now=now + 100)
    assert store.workers.get(a).status == "free"  # type: ignore[union-attr]


def test_live_workers_cannot_be_confirmed_for_recycling(store: Store) -> None:
    now = time.time()
    a, b = register(store, 2, now)
    with pytest.raises(ConditionFailed):
        store.workers.confirm_recyclable(a, now=now)
    store.workers.deregister(b, now=now)
    assert store.workers.confirm_recyclable(b, now=now).status == "draining"
    assert store.workers.remove(b, only_if_status=("draining", "dead")) is True
    assert store.workers.get(b) is None


def test_registering_again_keeps_a_lease_and_a_draining_worker_stays_draining(store: Store
                                                                              ) -> None:
    now = time.time()
    a, b = register(store, 2, now)
    store.leases.grant(store.workers.get(a), user_id="alice", request_id="r1",  # type: ignore[arg-type]
                lease_seconds=60, now=now, max_leases=1, remember_seconds=86400)
    store.workers.register(a, now=now + 1, private_ip="10.0.0.9", public_ip="203.0.113.33")
    after = store.workers.get(a)
    assert after and after.status == "leased" and after.public_ip == "203.0.113.33"
    store.workers.deregister(b, now=now)
    with pytest.raises(ConditionFailed):
        store.workers.register(b, now=now + 1, private_ip="10.0.0.2", public_ip=None)


def test_a_booting_instance_becomes_free_when_it_registers(store: Store) -> None:
    now = time.time()
    assert store.workers.track_booting("i-0000000000000abcd", now=now) is True
    assert store.workers.track_booting("i-0000000000000abcd", now=now) is False
    assert store.workers.count("booting") == 1
    store.workers.register("i-0000000000000abcd", now=now + 1, private_ip="10.1.1.1", public_ip=None)
    assert store.workers.count("booting") == 0 and store.workers.count("free", healthy_only=True) == 1


def test_the_lock_has_one_owner_until_its_lease_runs_out(store: Store) -> None:
    now = time.time()
    assert store.locks.acquire("scaler", owner="a", ttl=10, now=now)
    assert not store.locks.acquire("scaler", owner="b", ttl=10, now=now + 5)
    assert store.locks.acquire("scaler", owner="a", ttl=10, now=now + 5)
    assert store.locks.acquire("scaler", owner="b", ttl=10, now=now + 16)


def test_notes_on_the_lock_are_written_by_its_holder_only_and_outlive_a_release(
        store: Store) -> None:
    now = time.time()
    assert store.locks.acquire("scaler", owner="a", ttl=10, now=now) is not None
    assert store.locks.note("scaler", owner="a", notes={"lastScaleAt": now, "lastScaleDesired": 4})
    assert not store.locks.note("scaler", owner="b", notes={"lastScaleDesired": 99})
    store.locks.release("scaler", owner="a")
    item = store.locks.acquire("scaler", owner="b", ttl=10, now=now + 1)  # at once: released
    assert item is not None and item["owner"] == "b"
    assert item["lastScaleDesired"] == 4 and abs(item["lastScaleAt"] - now) < 0.01


def test_creating_the_table_twice_is_harmless(store: Store) -> None:
    assert store.create_table() is False


def test_a_split_page_starts_at_the_split_and_takes_the_fresher_ones_only_to_fill_up(
        store: Store) -> None:
    now = time.time()
    ids = register(store, 6, now)
    for k, iid in enumerate(ids):  # heard from at now+1 ... now+6
        store.workers.heartbeat(iid, healthy=True, now=now + 1 + k)

    def page(limit: int, split: float) -> list[str]:
        return [w.instance_id for w in store.workers.find_free(limit, fresh_after=now,
                                                               split=split)]

    assert page(3, now + 4) == [ids[3], ids[2], ids[1]]  # at or before the split, freshest first
    assert page(6, now + 2) == [ids[1], ids[0], ids[5], ids[4], ids[3], ids[2]]
    assert page(6, now + 0.5) == list(reversed(ids))  # nothing before it: the plain page


def test_a_worker_silent_for_the_timeout_is_neither_found_free_nor_leased(store: Store) -> None:
    now = time.time()
    quiet, lively = register(store, 2, now)
    store.workers.heartbeat(lively, healthy=True, now=now + 50)
    fresh_after = now + 60 - 45  # at now+60, with HEARTBEAT_TIMEOUT 45
    assert [w.instance_id for w in store.workers.find_free(10, fresh_after=fresh_after)] == [lively]
    stale = store.workers.get(quiet)
    assert stale is not None
    with pytest.raises(ConditionFailed):
        store.leases.grant(stale, user_id="alice", request_id="r1", lease_seconds=60, now=now + 60,
                    max_leases=1, remember_seconds=86400, fresh_after=fresh_after)


def test_a_recycled_instance_cannot_register_again(store: Store) -> None:
    now = time.time()
    (iid,) = register(store, 1, now)
    store.workers.deregister(iid, now=now)
    store.workers.tombstone(iid, now=now)  # what the reaper does before terminating
    store.workers.remove(iid)
    with pytest.raises(ConditionFailed):  # its agent, still alive while the VM shuts down
        store.workers.register(iid, now=now + 1, private_ip="10.0.0.1", public_ip=None)
    assert store.workers.get(iid) is None and store.workers.find_free(10) == []


def test_a_deregister_processed_before_its_register_keeps_the_worker_out(store: Store) -> None:
    now = time.time()
    iid = "i-00000000000000abc"
    assert store.workers.deregister(iid, now=now).status == "draining"
    with pytest.raises(ConditionFailed):
        store.workers.register(iid, now=now + 0.1, private_ip="10.0.0.1", public_ip=None)
    assert store.workers.find_free(10) == []
    assert [w.instance_id for w in store.workers.by_status("draining")] == [iid]  # the reaper's to take


class CutUserSets:
    """The store's boto3 client, except that every write to a ``user#`` item fails as an
    unreachable endpoint does (after botocore's own retries); counts the other writes."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.worker_updates = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def update_item(self, **kwargs: Any) -> Any:
        from botocore.exceptions import EndpointConnectionError

        if kwargs["Key"]["instanceId"]["S"].startswith("user#"):
            raise EndpointConnectionError(endpoint_url="http://cut")
        self.worker_updates += 1
        return self.real.update_item(**kwargs)


def test_a_failing_second_step_never_replays_the_first_and_the_lease_still_ends(
        store: Store, settings: Settings) -> None:
    """Issue 12: ``expire`` used to be one retried block of two writes; when the second
    failed, the retry ran the first again, lost its own condition and reported a race."""
    now = time.time()
    (iid,) = register(store, 1, now)
    worker = store.workers.get(iid)
    assert worker is not None
    leased = store.leases.grant(worker, user_id="alice", request_id="r-1", lease_seconds=10,
                                now=now - 20, max_leases=1, remember_seconds=86400)
    cut = CutUserSets(store.db)
    flaky = Store.from_settings(settings, dynamodb=cut)
    ended = flaky.leases.expire(leased, now=now)  # the user's set cannot be written
    assert ended.status == "draining" and ended.reason == "expired"
    assert cut.worker_updates == 1  # the worker's conditional update ran exactly once
    assert store.leases.held_by("alice") == []  # the stale set healed on its next read
