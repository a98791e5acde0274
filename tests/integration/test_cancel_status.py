"""PROTOCOL v2 §3 cancel and status, against one real dispatcher, the real broker and moto:
a cancelled claim is answered ``cancelled`` once and never assigned; an assigned one is
released; status answers with broker credentials only."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared import topology
from shared.broker import Broker
from shared.config import Settings
from shared.messages import CapacityStatus, now_sent_at
from tests.helpers import Proc, wait_for
from tests.integration.test_dispatcher_support import (
    Client,
    launch,
    metrics_text,
    register_workers,
    start_dispatchers,
    store_of,
)


@pytest.fixture
def dispatcher(pool: Settings) -> Iterator[Proc]:
    (proc,) = start_dispatchers(pool)
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def client(pool: Settings) -> Iterator[Client]:
    c = Client(pool)
    yield c
    c.close()


def _cancel(client: Client, user: str, claim_id: str, request_id: str | None = None
            ) -> dict[str, Any]:
    return client.raw(topology.LEASES, json.dumps({
        "type": "cancel", "request_id": request_id or uuid.uuid4().hex, "user_id": user,
        "claim_request_id": claim_id}).encode())


def _status(client: Client, user: str) -> dict[str, Any]:
    return client.raw(topology.LEASES, json.dumps({
        "type": "status", "request_id": uuid.uuid4().hex, "user_id": user}).encode())


def test_a_waiting_claim_is_cancelled_once_and_never_assigned(
        pool: Settings, dispatcher: Proc, client: Client) -> None:
    cid = client.send(topology.CLAIMS, json.dumps(
        {"request_id": "r-42", "user_id": "alice", "wait_seconds": 60}).encode())
    wait_for(lambda: "workerpool_waiting_claims 1.0" in metrics_text(dispatcher), 10,
             what="the claim waiting")

    # someone else cannot cancel it (another user's request id is another request)
    assert _cancel(client, "mallory", "r-42")["status"] == "not_found"
    reply = _cancel(client, "alice", "r-42", "c-1")
    assert reply["status"] == "cancelled" and reply["request_id"] == "c-1"
    claim = json.loads(client.wait([cid], 5)[cid])
    assert claim == {"request_id": "r-42", "status": "cancelled",
                     "reason": "cancelled by its user: it will never be assigned",
                     "worker": None, "lease_expiry": None}
    wait_for(lambda: "workerpool_waiting_claims 0.0" in metrics_text(dispatcher), 5,
             what="nothing waiting")

    # a worker comes: it stays free; the claim repeated is still cancelled; so is the cancel
    (iid,) = launch(pool, 1)
    register_workers(pool, [iid])
    assert client.claim("alice", "r-42")["status"] == "cancelled"
    assert _cancel(client, "alice", "r-42", "c-1")["status"] == "cancelled"
    client.settle(0.5)
    assert [r for c, r in client.all if c == cid] == [claim]  # exactly one reply
    worker = store_of(pool).workers.get(iid)
    assert worker is not None and worker.status == "free"


def test_cancel_of_an_assigned_claim_releases_it_and_of_an_unknown_one_finds_nothing(
        pool: Settings, dispatcher: Proc, client: Client) -> None:
    (iid,) = launch(pool, 1)
    register_workers(pool, [iid])
    assert client.claim("bob", "r-1")["status"] == "assigned"
    reply = _cancel(client, "bob", "r-1")
    assert reply["status"] == "released" and reply["instance_id"] == iid
    worker = store_of(pool).workers.get(iid)
    assert worker is not None and worker.status == "draining"

    assert _cancel(client, "bob", "never-sent")["status"] == "not_found"
    gone = client.claim("carol", "r-9", wait_seconds=0)
    assert gone["status"] == "unavailable"
    answered = _cancel(client, "carol", "r-9")
    assert answered["status"] == "not_found" and "already answered unavailable" in \
        answered["reason"]


def test_status_answers_from_the_table_without_a_scaler_and_from_the_scalers_count(
        pool: Settings, dispatcher: Proc, client: Client) -> None:
    ids = launch(pool, 2)
    register_workers(pool, ids)
    held = client.claim("dave", "r-1")
    first = _status(client, "dave")
    assert first["status"] == "ok"
    assert first["pool"] == {"free": 1, "leased": 1, "booting": 0, "draining": 0, "dead": 0,
                             "waiting": 0, "desired": 2, "max_size": 10}
    (lease,) = first["leases"]
    # idle time counts from the user's last sign of life: here the lease's start
    assert 0 <= lease.pop("idle_seconds") <= 5
    assert lease == {"instance_id": held["worker"]["instance_id"],
                     "url": held["worker"]["url"], "lease_expiry": held["lease_expiry"]}
    assert _status(client, "erin")["leases"] == []

    # the scaler's count, once one arrives: no table read of its own
    broker = Broker(pool.amqp_url, "tests")
    broker.publish("", CapacityStatus(
        ok=True, desired=7, max_size=10, free=3, booting=4, pending=0, leased=1, draining=2,
        dead=0, waiting=5, sent_at=now_sent_at()).to_json(),
        exchange=topology.CAPACITY_EXCHANGE)
    broker.close()
    wait_for(lambda: _status(client, "dave")["pool"]["desired"] == 7, 5,
             what="status from the scaler's count")
    assert _status(client, "dave")["pool"] == {
        "free": 3, "leased": 1, "booting": 4, "draining": 2, "dead": 0, "waiting": 5,
        "desired": 7, "max_size": 10}
