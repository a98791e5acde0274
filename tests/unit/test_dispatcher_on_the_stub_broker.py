"""The dispatcher's wiring without RabbitMQ: the real Dispatcher, its services and store
(on in-process moto), with the in-memory StubBroker and a ticker driven by the test.

What runs here is the handlers, the job pool, the waiting room and the replies; the
integration tests run the same against RabbitMQ and a moto server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws
from prometheus_client import CollectorRegistry

from dispatcher.loop import Dispatcher
from dispatcher.metrics import Metrics
from shared import topology
from shared.asg import Asg
from shared.config import Settings, parse_settings
from shared.messages import CapacityStatus, now_sent_at
from shared.store import Store
from tests.helpers import wait_for
from tests.stubbroker import ManualTicker, StubBroker


class Rig:
    def __init__(self, settings: Settings) -> None:
        self.store = Store.from_settings(settings)
        self.store.create_table()
        self.asg = Asg.from_settings(settings)
        self.asg.ensure_group(launch_template="workerpool-lt", ami_id=settings.worker_ami_id,
                              instance_type="t3.medium", max_size=10)
        self.stub = StubBroker()
        self.ticker = ManualTicker()
        self.consumer = self.stub.consumer("amqp://unused", "dispatcher@test", prefetch=200)
        self.dispatcher = Dispatcher(
            settings=settings, store=self.store, asg=self.asg, broker=self.stub,
            consumer=self.consumer, metrics=Metrics(CollectorRegistry()), ticker=self.ticker)
        self.dispatcher.attach()
        self.consumer.connect()

    def settle(self) -> None:
        """Deliver everything, and wait for the jobs the handlers started."""
        for _ in range(3):  # a job may publish more (e.g. a claim sent to wait)
            self.stub.drain()
            wait_for(self.dispatcher.idle, 5, what="the dispatcher's jobs")
        self.stub.drain()

    def request(self, queue: str, body: dict[str, Any] | bytes) -> str:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.stub.send(queue, raw)

    def reply(self, cid: str) -> dict[str, Any]:
        self.settle()
        got = self.stub.wait([cid], timeout=1)
        assert cid in got, "no reply"
        return json.loads(got[cid])  # type: ignore[no-any-return]


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    # in-process moto: no endpoint of the session's moto server may catch these calls
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB",
                 "AWS_ENDPOINT_URL_AUTO_SCALING", "AWS_ENDPOINT_URL_EC2"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        settings = parse_settings(aws_endpoint_url=None, health_port=0, dispatcher_threads=2,
                                  heartbeat_interval=5)
        r = Rig(settings)
        try:
            yield r
        finally:
            r.dispatcher.pool.shutdown(wait=True)


def test_an_unparseable_claim_gets_rejected_and_a_dead_letter_entry(rig: Rig) -> None:
    reply = rig.reply(rig.request(topology.CLAIMS, b'{"request_id": "r 1"}'))
    assert reply["status"] == "rejected" and reply["request_id"] is None
    (body, headers) = rig.stub.get_one(topology.DEAD_LETTER)  # type: ignore[misc]
    assert body == b'{"request_id": "r 1"}'
    assert "request_id" in headers[topology.REASON_HEADER]


def test_a_registered_worker_is_assigned_and_the_scaler_hears_of_the_lease(rig: Rig) -> None:
    rig.asg.set_desired(1)
    (iid,) = rig.asg.describe().live_ids
    rig.request(topology.AGENTS, {"type": "register", "instance_id": iid,
                                  "private_ip": "10.0.0.5", "public_ip": "203.0.113.5"})
    rig.settle()
    reply = rig.reply(rig.request(topology.CLAIMS, {"request_id": "r-1", "user_id": "alice"}))
    assert reply["status"] == "assigned" and reply["worker"]["instance_id"] == iid
    assert reply["worker"]["url"] == "http://203.0.113.5:8080"
    rig.ticker.advance(0.2)  # leases are told to the scaler in batches, after the replies
    rig.settle()
    events = [json.loads(m.body) for m in rig.stub.messages(topology.SCALING)]
    assert {"type": "leased", "instance_id": iid, "instance_ids": [iid]}.items() <= \
        events[-1].items()


def test_a_waiting_claim_beyond_what_can_come_is_refused_by_the_next_serve_pass(rig: Rig
                                                                                ) -> None:
    cid = rig.request(topology.CLAIMS, {"request_id": "r-w", "user_id": "bob",
                                        "wait_seconds": 60})
    rig.settle()
    assert rig.stub.wait([cid], timeout=0.1) == {}  # it waits
    assert len(rig.dispatcher.waiting) == 1
    rig.stub.publish("", CapacityStatus(ok=True, desired=10, max_size=10, free=0, booting=0,
                                        pending=0, sent_at=now_sent_at()).to_json(),
                     exchange=topology.CAPACITY_EXCHANGE)
    rig.settle()
    rig.ticker.advance(1.0)  # the serve pass
    reply = rig.reply(cid)
    assert reply["status"] == "unavailable"
    assert reply["reason"].startswith("no machine for this claim: 0 claims ahead of it")
    assert len(rig.dispatcher.waiting) == 0
    assert rig.stub.messages(topology.WAITING) == []  # acked: nothing left behind
