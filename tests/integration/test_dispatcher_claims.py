"""One real dispatcher process against the real broker (our vhost) and the session's moto:
the claim path, leases, registration, heartbeats, rejections and the waiting room."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from shared import topology
from shared.broker import Broker
from shared.clock import iso
from shared.config import Settings
from shared.messages import CapacityStatus, now_sent_at
from tests.helpers import Proc, wait_for
from tests.integration.test_dispatcher_support import (
    Client,
    dead_letters,
    heartbeat_msg,
    launch,
    metrics_text,
    publish_agent,
    register_msg,
    register_workers,
    start_dispatchers,
    store_of,
    wait_logged,
)


@pytest.fixture
def dispatcher(pool: Settings) -> Iterator[Proc]:
    (proc,) = start_dispatchers(pool)
    yield proc
    assert proc.stop() == 0  # SIGTERM: stops within 12 s with status 0


@pytest.fixture
def client(pool: Settings) -> Iterator[Client]:
    c = Client(pool)
    yield c
    c.close()


def test_a_claim_gets_a_worker_and_only_its_holder_can_renew_or_release_it(
        pool: Settings, dispatcher: Proc, client: Client) -> None:
    (iid,) = launch(pool, 1)
    register_workers(pool, [iid])

    first = client.claim("alice", "r-1", lease_seconds=600)
    assert first["status"] == "assigned" and first["reason"] is None
    assert first["worker"] == {"instance_id": iid, "public_ip": "198.51.100.1",
                               "private_ip": "10.0.0.1", "url": "http://198.51.100.1:8080",
                               "password": None, "tls_fingerprint": None,
                               "instance_type": "t3.medium"}  # the type the user got (v2)
    expiry = first["lease_expiry"]
    assert expiry.endswith("Z") and expiry > iso(time.time() + 590)

    # the same request again: the same outcome; another request of hers: the same worker
    assert client.claim("alice", "r-1") == first
    assert client.claim("alice", "r-2")["worker"]["instance_id"] == iid
    # another user's request with the same id is another request (nothing is free)
    bob = client.claim("bob", "r-1", wait_seconds=0)
    assert bob["status"] == "unavailable" and "0 free of target" in bob["reason"]
    assert "ASG desired " in bob["reason"] and "/max 10" in bob["reason"]  # numbers to act on

    for kind in ("renew", "release"):
        assert client.lease(kind, "mallory", iid)["status"] == "not_found"
    renewed = client.lease("renew", "alice", iid, lease_seconds=3600)
    assert renewed["status"] == "renewed" and renewed["lease_expiry"] > expiry
    assert client.lease("release", "alice", iid)["status"] == "released"
    worker = store_of(pool).workers.get(iid)
    assert worker is not None and worker.status == "draining"
    assert client.lease("renew", "alice", iid)["status"] == "not_found"
    assert 'workerpool_claims_total{outcome="assigned"} 3.0' in metrics_text(dispatcher)


def test_an_instance_outside_the_asg_is_refused_dead_lettered_and_never_free(
        pool: Settings, dispatcher: Proc, client: Client) -> None:
    launch(pool, 1)
    publish_agent(pool, [register_msg("i-0123456789abcdef0")])
    wait_for(lambda: any(line.get("refused") == "not in asg" for line in dispatcher.lines),
             timeout=10, what="the refusal logged")
    letters = wait_for(lambda: dead_letters(pool), timeout=5, what="a dead letter")
    assert [h[topology.REASON_HEADER] for _, h in letters] == [
        f"instance i-0123456789abcdef0 is not in Auto Scaling Group {pool.asg_name}"]
    assert store_of(pool).workers.get("i-0123456789abcdef0") is None
    assert client.claim("alice", wait_seconds=0)["status"] == "unavailable"


def test_an_unhealthy_worker_is_not_handed_out_until_it_is_healthy_again(
        pool: Settings, dispatcher: Proc, client: Client) -> None:
    (iid,) = launch(pool, 1)
    register_workers(pool, [iid])
    publish_agent(pool, [heartbeat_msg(iid, healthy=False)])
    store = store_of(pool)
    wait_for(lambda: not store.workers.get(iid).healthy, what="the worker unhealthy")  # type: ignore[union-attr]
    assert client.claim("alice", wait_seconds=0)["status"] == "unavailable"
    publish_agent(pool, [heartbeat_msg(iid, healthy=True)])
    wait_for(lambda: store.workers.get(iid).healthy, what="the worker healthy")  # type: ignore[union-attr]
    assert client.claim("alice", wait_seconds=0)["worker"]["instance_id"] == iid


def test_a_deregistered_worker_leaves_the_free_set_at_once(
        pool: Settings, dispatcher: Proc, client: Client) -> None:
    (iid,) = launch(pool, 1)
    register_workers(pool, [iid])
    publish_agent(pool, [json.dumps({"type": "deregister", "instance_id": iid,
                                     "reason": "shutdown", "sent_at": iso(time.time())}
                                    ).encode()])
    store = store_of(pool)
    wait_for(lambda: store.workers.get(iid).status == "draining",  # type: ignore[union-attr]
             what="the worker draining")
    assert client.claim("alice", wait_seconds=0)["status"] == "unavailable"


@pytest.mark.parametrize(("queue", "body", "field"), [
    (topology.CLAIMS, b"{not json", "body is not valid JSON"),
    (topology.CLAIMS, b'{"request_id": "r-9", "user_id": "alice", "lease_seconds": 5}',
     "lease_seconds"),
    (topology.CLAIMS, b'{"request_id": "r-9", "user_id": "al ice"}', "user_id"),
    (topology.CLAIMS, b'{"request_id": "r-9", "user_id": "a", "wait_seconds": 901}',
     "wait_seconds"),
    (topology.LEASES, b'{"type": "renew", "request_id": "r-9", "user_id": "a", '
                      b'"instance_id": "i-1", "lease_seconds": "3600"}', "lease_seconds"),
    (topology.LEASES, b'{"type": "steal", "request_id": "r-9", "user_id": "a", '
                      b'"instance_id": "i-1"}', "type"),
])
def test_a_malformed_or_out_of_range_request_gets_rejected_and_a_dead_letter(
        pool: Settings, dispatcher: Proc, client: Client, queue: str, body: bytes,
        field: str) -> None:
    reply = client.raw(queue, body)
    assert reply["status"] == "rejected" and field in reply["reason"]
    assert reply["request_id"] == (None if field.startswith("body") else "r-9")
    (letter,) = wait_for(lambda: dead_letters(pool), timeout=5, what="a dead letter")
    assert letter[0] == body
    assert field in letter[1][topology.REASON_HEADER]
    assert letter[1][topology.SOURCE_HEADER] == queue


def test_a_waiting_claim_is_served_when_a_worker_registers(
        pool: Settings, dispatcher: Proc, client: Client) -> None:
    (iid,) = launch(pool, 1)
    cid = client.send(topology.CLAIMS, json.dumps(
        {"request_id": "r-w", "user_id": "alice", "wait_seconds": 30}).encode())
    wait_logged(dispatcher, "claim waits for a free worker")
    # while it waits, the scaler hears about the shortage (free 0, one waiting)
    events: list[dict[str, object]] = []

    def shortage_seen() -> bool:
        while (m := _get(pool, topology.SCALING)) is not None:
            events.append(json.loads(m))
        return any(e["type"] == "shortage" and e["waiting"] == 1 for e in events)

    wait_for(shortage_seen, timeout=5, what="a shortage event with one waiting claim")
    assert "workerpool_waiting_claims 1.0" in metrics_text(dispatcher)
    register_workers(pool, [iid], wait=False)
    got = client.wait([cid], timeout=10)
    reply = json.loads(got[cid])
    assert reply["status"] == "assigned" and reply["worker"]["instance_id"] == iid
    wait_for(lambda: any(
        e.get("type") == "leased" and e.get("instance_id") == iid for e in _drain(pool, events)),
        timeout=5, what="a leased event for the worker")


def _tell(pool: Settings, **status: object) -> None:
    """Publish a CapacityStatus on the fanout, as the scaler does after each reconcile."""
    broker = Broker(pool.amqp_url, "tests")
    broker.publish("", CapacityStatus(sent_at=now_sent_at(), **status).to_json(),  # type: ignore[arg-type]
                   exchange=topology.CAPACITY_EXCHANGE)
    broker.close()


def test_waiting_claims_doomed_by_a_launch_failure_are_answered_at_once_with_aws_reason(
        pool: Settings, dispatcher: Proc, client: Client) -> None:
    cids = [client.send(topology.CLAIMS, json.dumps(
        {"request_id": f"r-c{i}", "user_id": f"user{i}", "wait_seconds": 60}).encode())
        for i in range(3)]
    wait_for(lambda: "workerpool_waiting_claims 3.0" in metrics_text(dispatcher), 10,
             what="three claims waiting")
    # one instance did launch before the quota stopped the rest: it serves the oldest claim
    _tell(pool, ok=False, reason="instances fail to launch (Failed): You have requested more "
          "vCPU capacity than your current vCPU limit of 32 allows", desired=4, max_size=10,
          free=0, booting=1, pending=3)
    started = time.monotonic()
    got = client.wait(cids[1:], timeout=10)
    assert time.monotonic() - started < 5
    for cid in cids[1:]:
        reply = json.loads(got[cid])
        assert reply["status"] == "unavailable"
        assert "vCPU limit of 32" in reply["reason"] and "desired 4/max 10" in reply["reason"]
    assert "1 machine free or coming" in json.loads(got[cids[2]])["reason"]
    assert "1 claim ahead" in json.loads(got[cids[1]])["reason"]
    # the oldest keeps waiting for the machine that launched
    assert client.wait(cids[:1], timeout=0.5) == {}
    wait_for(lambda: "workerpool_waiting_claims 1.0" in metrics_text(dispatcher), 5,
             what="one claim still waiting")
    # the outcome stands for a repeat of the same request
    assert client.claim("user2", "r-c2") == json.loads(got[cids[2]])


def test_at_max_size_only_the_claims_beyond_what_is_coming_are_refused(
        pool: Settings, dispatcher: Proc, client: Client) -> None:
    cids = [client.send(topology.CLAIMS, json.dumps(
        {"request_id": f"r-m{i}", "user_id": f"user{i}", "wait_seconds": 60}).encode())
        for i in range(4)]
    wait_for(lambda: "workerpool_waiting_claims 4.0" in metrics_text(dispatcher), 10,
             what="four claims waiting")
    _tell(pool, ok=True, desired=10, max_size=10, free=0, booting=2, pending=1)
    got = client.wait(cids, timeout=3)
    assert list(got) == [cids[3]]  # the newest; the three oldest wait for 3 machines
    reply = json.loads(got[cids[3]])
    assert reply["status"] == "unavailable"
    assert reply["reason"].startswith("no machine for this claim: 3 claims ahead of it and "
                                      "3 machines free or coming")
    assert "ASG MaxSize 10" in reply["reason"]


def _get(settings: Settings, queue: str) -> bytes | None:
    from shared.broker import get_one

    got = get_one(settings.amqp_url, "tests", queue)
    return got[0] if got else None


def _drain(settings: Settings, into: list[dict[str, object]]) -> list[dict[str, object]]:
    while (m := _get(settings, topology.SCALING)) is not None:
        into.append(json.loads(m))
    return into
