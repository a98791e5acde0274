"""The in-memory broker behaves as the real broker layer does, where loops depend on it."""

from __future__ import annotations

import threading

import pytest

from shared import topology
from shared.broker import DIRECT_REPLY_TO, ConsumerLike, Delivery, Handler, PublisherLike
from shared.broker.interface import BrokerLike
from shared.errors import BrokerUnavailable, InvalidMessage, Unroutable
from tests.stubbroker import ManualTicker, StubBroker


def acking(into: list[Delivery]) -> Handler:
    def handle(d: Delivery) -> None:
        into.append(d)
        d.ack()
    return handle


def members(protocol: type) -> set[str]:
    return {n for n in vars(protocol) if not n.startswith("_")} | set(
        getattr(protocol, "__annotations__", {}))


@pytest.mark.parametrize("protocol", [BrokerLike, PublisherLike])
def test_the_stub_broker_offers_everything_a_broker_offers(protocol: type) -> None:
    stub = StubBroker()
    assert all(hasattr(stub, name) for name in members(protocol))


def test_the_stub_consumer_offers_everything_a_consumer_offers() -> None:
    consumer = StubBroker().consumer()
    assert all(hasattr(consumer, name) for name in members(ConsumerLike))


def test_the_default_exchange_routes_by_queue_name_and_an_acked_message_is_gone() -> None:
    stub, got = StubBroker(), list[Delivery]()
    c = stub.consumer()
    c.subscribe(topology.CLAIMS, acking(got))
    c.connect()
    stub.publish(topology.CLAIMS, b"one", headers={"h": 1})
    stub.join()
    assert [(d.queue, d.body, d.headers, d.redelivered) for d in got] == [
        (topology.CLAIMS, b"one", {"h": 1}, False)]
    assert stub.messages(topology.CLAIMS) == [] and stub.journal[-1] == ("ack", topology.CLAIMS)


def test_a_mandatory_publish_no_queue_takes_is_unroutable_and_a_plain_one_is_dropped() -> None:
    stub = StubBroker()
    with pytest.raises(Unroutable):
        stub.publish("workerpool.agent.i-gone", b"{}")
    stub.publish("workerpool.agent.i-gone", b"{}", mandatory=False)
    with pytest.raises(BrokerUnavailable):
        stub.publish("", b"{}", exchange="no-such-exchange")


def test_a_fanout_reaches_every_bound_consumer_and_nobody_bound_is_fine() -> None:
    stub, first, second = StubBroker(), list[Delivery](), list[Delivery]()
    stub.publish("", b"early", exchange=topology.CAPACITY_EXCHANGE, mandatory=False)
    for into in (first, second):
        c = stub.consumer()
        c.subscribe_fanout(topology.CAPACITY_EXCHANGE, acking(into))
        c.connect()
    stub.publish("", b"status", exchange=topology.CAPACITY_EXCHANGE, mandatory=False)
    stub.join()
    assert [d.body for d in first] == [d.body for d in second] == [b"status"]
    assert first[0].queue.startswith("amq.gen-")


def test_a_reply_to_direct_reply_to_is_kept_by_correlation_id() -> None:
    stub = StubBroker()
    c = stub.consumer()

    def answer(d: Delivery) -> None:
        assert d.reply_to == DIRECT_REPLY_TO
        c.publish_here(d.reply_to, b"answer to " + d.body, correlation_id=d.correlation_id)
        d.ack()

    c.subscribe(topology.CLAIMS, answer)
    c.connect()
    assert stub.call(topology.CLAIMS, b"q1") == b"answer to q1"
    cid = stub.send(topology.CLAIMS, b"q2", correlation_id="c-2")
    assert stub.wait([cid, "never"], timeout=0.1) == {"c-2": b"answer to q2"}


def test_an_invalid_message_is_dead_lettered_then_answered_then_acked() -> None:
    stub = StubBroker()
    c = stub.consumer()

    def handle(d: Delivery) -> None:
        if d.body == b"{oops":
            d.dead_letter("body is not valid JSON", reply=b'{"status": "rejected"}')
            return
        raise InvalidMessage("user_id: required")

    c.subscribe(topology.CLAIMS, handle)
    c.connect()
    stub.publish(topology.CLAIMS, b"{oops", reply_to=DIRECT_REPLY_TO, correlation_id="c1",
                 headers={"x-mine": "kept"})
    stub.publish(topology.CLAIMS, b"{}")
    stub.join()
    assert stub.journal[-5:] == [
        ("publish", topology.DEAD_LETTER), ("publish", DIRECT_REPLY_TO),
        ("ack", topology.CLAIMS),
        ("publish", topology.DEAD_LETTER), ("ack", topology.CLAIMS)]
    assert stub.replies == {"c1": [b'{"status": "rejected"}']}
    (oops, missing) = stub.messages(topology.DEAD_LETTER)
    assert oops.headers == {"x-mine": "kept", topology.REASON_HEADER: "body is not valid JSON",
                            topology.SOURCE_HEADER: topology.CLAIMS,
                            topology.SENDER_HEADER: "guest"}  # who sent the original
    assert (oops.correlation_id, oops.reply_to) == ("c1", DIRECT_REPLY_TO)
    assert missing.headers[topology.REASON_HEADER] == "user_id: required"


def test_a_failing_handler_gets_its_message_again_marked_redelivered() -> None:
    stub, seen = StubBroker(), []
    c = stub.consumer()

    def flaky(d: Delivery) -> None:
        seen.append(d.redelivered)
        if not d.redelivered:
            raise RuntimeError("a bug")
        d.ack()

    c.subscribe(topology.LEASES, flaky)
    c.connect()
    stub.publish(topology.LEASES, b"{}")
    stub.join()
    assert seen == [False, True]


def test_prefetch_bounds_what_is_in_hand_and_join_names_what_is_left() -> None:
    stub, held = StubBroker(), list[Delivery]()
    c = stub.consumer(prefetch=2)
    c.subscribe(topology.WAITING, held.append)  # never settles
    c.connect()
    for k in range(3):
        stub.publish(topology.WAITING, str(k).encode())
    assert stub.drain() == 2
    with pytest.raises(TimeoutError, match=topology.WAITING):
        stub.join(timeout=0.05)
    acker = threading.Thread(target=held[0].ack)  # settled from another thread
    acker.start()
    acker.join()
    assert stub.drain() == 1 and [d.body for d in held] == [b"0", b"1", b"2"]


def test_after_a_cut_unacked_messages_come_back_once_and_late_acks_are_dropped() -> None:
    stub, got, events = StubBroker(), list[Delivery](), list[str]()
    c = stub.consumer()
    c.subscribe(topology.CLAIMS, got.append)
    c.on_connect(lambda: events.append("connect"))
    c.on_disconnect(lambda: events.append("disconnect"))
    c.connect()
    stub.publish(topology.CLAIMS, b"a")
    stub.publish(topology.CLAIMS, b"b")
    stub.drain()
    stub.reconnect()
    got[0].ack()  # for the old channel: dropped, not applied to the redelivered copy
    stub.drain()
    assert [(d.body, d.redelivered) for d in got] == [
        (b"a", False), (b"b", False), (b"a", True), (b"b", True)]
    assert events == ["connect", "disconnect", "connect"]
    for d in got[2:]:
        d.ack()
    stub.join()


def test_an_own_queue_is_exclusive_bound_if_asked_and_gone_with_its_connection() -> None:
    stub, got = StubBroker(), list[Delivery]()
    c = stub.consumer(declare=False)
    c.subscribe_own("workerpool.confirm.d-1", acking(got), bind_exchange="amq.topic")
    c.connect()
    assert c.own_ready.is_set()
    stub.publish("workerpool.confirm.d-1", b"via topic", exchange="amq.topic")
    stub.publish("workerpool.confirm.d-1", b"direct")
    stub.join()
    assert [d.body for d in got] == [b"via topic", b"direct"]
    other = stub.consumer()
    other.subscribe_own("workerpool.confirm.d-1", acking(got))
    with pytest.raises(BrokerUnavailable, match="RESOURCE_LOCKED"):
        other.connect()
    c.disconnect()
    assert not c.own_ready.is_set()
    with pytest.raises(Unroutable):
        stub.publish("workerpool.confirm.d-1", b"too late")


def test_only_the_first_consumer_of_a_single_active_consumer_queue_gets_messages() -> None:
    stub, first, second = StubBroker(), list[Delivery](), list[Delivery]()
    for into in (first, second):
        c = stub.consumer()
        c.subscribe(topology.WAITING, acking(into))
        c.connect()
    for k in range(3):
        stub.publish(topology.WAITING, str(k).encode())
    stub.join()
    assert len(first) == 3 and second == []


def test_a_consumer_running_on_its_own_thread_delivers_there_until_stopped() -> None:
    stub, threads = StubBroker(), list[threading.Thread]()
    c = stub.consumer(tick=0.01)

    def handle(d: Delivery) -> None:
        threads.append(threading.current_thread())
        d.ack()

    c.subscribe(topology.AGENTS, handle)
    t = threading.Thread(target=c.run, daemon=True)
    t.start()
    assert c.connected.wait(2)
    stub.publish(topology.AGENTS, b"{}")
    stub.join(timeout=2)
    c.stop()
    t.join(2)
    assert threads == [t] and not t.is_alive() and not c.connected.is_set()


def test_the_scaling_queue_keeps_its_newest_thousand_events() -> None:
    stub = StubBroker()
    for k in range(1002):
        stub.publish(topology.SCALING, str(k).encode())
    kept = stub.messages(topology.SCALING)
    assert len(kept) == 1000 and kept[0].body == b"2"


def test_the_manual_ticker_runs_jobs_when_due_on_its_own_clock() -> None:
    ticker, calls = ManualTicker(), []
    ticker.every(1.0, lambda: calls.append("shortage"))
    ticker.every(0.5, lambda: calls.append("serve"))
    assert ticker.advance() == 2
    ticker.advance(0.5)
    ticker.advance(0.5)
    assert calls == ["shortage", "serve", "serve", "shortage", "serve"]
