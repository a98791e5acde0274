"""When the broker fails us (issue 14, items 2–5): subscriptions heal, waiting claims
survive a lost connection, the scaler hears every dispatcher, and a reply that cannot be
delivered never frees the worker it leased."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from dispatcher import replies
from shared import topology
from shared.broker import Broker, connect, declare_topology
from shared.broker.consumer import AUDIT_SECONDS
from tests.faults.rig import Rig, health, metric
from tests.helpers import wait_for
from tests.integration.test_dispatcher_support import (
    Client,
    dead_letters,
    metrics_text,
    register_workers,
)

pytestmark = pytest.mark.timeout(120)


def test_a_deleted_and_redeclared_claims_queue_is_subscribed_again_and_health_says_so(
        rig: Rig) -> None:
    d = rig.start("dispatcher")
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(health(d)[0])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    # an operator deletes the queue, then restores the definitions a moment later
    conn = connect(rig.settings.amqp_url, "tests-admin")
    conn.channel().queue_delete(topology.CLAIMS)
    time.sleep(1.0)
    declare_topology(conn.channel())
    conn.close()
    wait_for(lambda: any(l.get("event") == "consumer_cancelled" for l in d.lines), 10,
             what="the broker's cancel noticed")
    wait_for(lambda: metric(d, "workerpool_resubscriptions_total") >= 1, 10,
             what="a resubscription counted")
    wait_for(lambda: seen and seen[-1] == 200, 10, what="/health 200 again")
    stop.set()
    watcher.join(2)
    assert 503 in seen, "while the subscription was down, /health said so"

    (iid,) = rig.launch(1)
    register_workers(rig.settings, [iid])
    client = Client(rig.settings)
    try:
        assert client.claim("alice", "r-after")["status"] == "assigned"
    finally:
        client.close()


def test_a_waiting_claim_survives_its_dispatchers_lost_connection_and_is_answered_once(
        rig: Rig) -> None:
    d = rig.start("dispatcher", via_broker_proxy=True)
    client = Client(rig.settings)
    try:
        cid = client.send(topology.CLAIMS, json.dumps(
            {"request_id": "r-1", "user_id": "alice", "wait_seconds": 60}).encode())
        wait_for(lambda: "workerpool_waiting_claims 1.0" in metrics_text(d), 10,
                 what="the claim waiting")
        rig.broker.cut(refuse_for=2)  # the dispatcher's connections drop, unacked
        wait_for(lambda: len(d.events("consumer connected") or [l for l in d.lines if l.get(
            "msg") == "consumer connected"]) >= 2, 20, what="the dispatcher reconnected")
        wait_for(lambda: "workerpool_waiting_claims 1.0" in metrics_text(d), 10,
                 what="the claim back in the waiting room")
        (iid,) = rig.launch(1)
        register_workers(rig.settings, [iid], wait=False)
        got = rig.replies(client, {cid: None}, timeout=20)
        assert got[cid][1]["status"] == "assigned"
        client.settle(1.0)
        assert [c for c, _ in client.all].count(cid) == 1  # exactly one reply
        assert dead_letters(rig.settings) == []
    finally:
        client.close()


def test_the_scaler_counts_the_waiting_claims_of_every_dispatcher(rig: Rig) -> None:
    holders = [rig.start("dispatcher", name=f"dispatcher{k}", TARGET_AVAILABLE=1)
               for k in range(2)]
    client = Client(rig.settings)
    try:
        for k in range(4):
            client.send(topology.CLAIMS, json.dumps(
                {"request_id": f"r-{k}", "user_id": f"user{k}", "wait_seconds": 120}).encode())
        wait_for(lambda: sum(metric(p, "workerpool_waiting_claims") for p in holders) == 4,
                 10, what="four claims waiting")
        # one dispatcher holds them all (single active consumer); the other reports 0
        scaler = rig.start("scaler", TARGET_AVAILABLE=1, RECONCILE_INTERVAL=0.2,
                           LOCK_TTL_SECONDS=2, COOLDOWN_SECONDS=0)
        wait_for(lambda: rig.asg.describe().desired == 5, 15,
                 what="desired = 1 (target) + 4 (waiting)")
        wait_for(lambda: metric(scaler, "workerpool_scaler_waiting_claims") == 4, 5,
                 what="the pass that raised it recorded (its gauge is set at the end)")
        samples = []
        for _ in range(15):  # both dispatchers report every second; neither erases the other
            samples.append(metric(scaler, "workerpool_scaler_waiting_claims"))
            time.sleep(0.2)
        assert samples == [4.0] * 15, samples
        assert rig.asg.describe().desired == 5
    finally:
        client.close()


def test_a_reply_that_cannot_be_delivered_recycles_the_worker_and_a_repeat_says_why(
        rig: Rig) -> None:
    rig.start("dispatcher")
    (iid,) = rig.launch(1)
    register_workers(rig.settings, [iid])
    # a client whose exclusive reply queue is gone by the time its answer comes
    broker = Broker(rig.settings.amqp_url, "tests")
    broker.publish(topology.CLAIMS, json.dumps({"request_id": "r-lost", "user_id": "alice"})
                   .encode(), reply_to=f"gone-{uuid.uuid4().hex}", correlation_id="c-lost")
    broker.close()
    store = rig.store
    wait_for(lambda: (w := store.workers.get(iid)) is not None and w.status == "draining", 10,
             what="the worker taken out (never freed: someone may have been told assigned)")
    client = Client(rig.settings)
    try:
        repeat = client.claim("alice", "r-lost", wait_seconds=0)
        assert repeat["status"] == "unavailable" and repeat["reason"] == replies.UNDELIVERABLE
        assert repeat["worker"] is None
    finally:
        client.close()
    w = store.workers.get(iid)
    assert w is not None and w.status == "draining" and w.user_id in (None, "alice")


def test_a_claims_queue_deleted_for_good_is_declared_again_by_the_consumers_audit(
        rig: Rig) -> None:
    """Deleted and not restored: the broker's cancel makes the dispatcher subscribe again,
    which declares the queue; the audit (AUDIT_SECONDS) would catch a cancel that never
    came. Claims published afterwards are answered."""
    d = rig.start("dispatcher")
    conn = connect(rig.settings.amqp_url, "tests-admin")
    conn.channel().queue_delete(topology.CLAIMS)
    conn.close()
    wait_for(lambda: metric(d, "workerpool_resubscriptions_total") >= 1, AUDIT_SECONDS + 10,
             what="a resubscription counted")
    client = Client(rig.settings)
    try:
        assert client.claim("alice", "r-1", wait_seconds=0)["status"] == "unavailable"
    finally:
        client.close()
