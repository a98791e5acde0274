"""The broker layer against the real RabbitMQ: confirms, redelivery, dead-lettering,
reconnects (through a cuttable proxy, and once through a real broker restart)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from shared import topology
from shared.broker import (
    Broker,
    Consumer,
    Delivery,
    RpcClient,
    connect,
    connection_parameters,
    get_one,
    queue_depths,
)
from shared.errors import BrokerUnavailable, Unroutable
from shared.messages import ClaimReply, ClaimRequest, decode
from tests.helpers import wait_for
from tests.proxy import CuttableProxy


def run_consumer(consumer: Consumer) -> threading.Thread:
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    assert consumer.connected.wait(10), "consumer did not connect"
    return t


@pytest.fixture
def url(clean_queues: str) -> str:
    return clean_queues


@pytest.fixture
def proxy() -> Iterator[CuttableProxy]:
    p = CuttableProxy()
    yield p
    p.close()


def vhost_of(url: str) -> str:
    return url.rsplit("/", 1)[1] or "%2F"


def test_a_message_survives_a_consumer_that_dies_before_acking(url: str) -> None:
    Broker(url, "test").publish(topology.CLAIMS, b'{"request_id": "r1", "user_id": "a"}')
    first = Consumer(url, "dispatcher@first", prefetch=1)
    got_first: list[Delivery] = []
    first.subscribe(topology.CLAIMS, got_first.append)  # never acks
    t1 = run_consumer(first)
    wait_for(lambda: got_first, what="first delivery")
    first.stop()  # dies holding the message unacked
    t1.join(10)

    second = Consumer(url, "dispatcher@second", prefetch=1)
    got_second: list[Delivery] = []

    def handle(d: Delivery) -> None:
        got_second.append(d)
        d.ack()

    second.subscribe(topology.CLAIMS, handle)
    t2 = run_consumer(second)
    wait_for(lambda: got_second, what="redelivery to the next consumer")
    second.stop()
    t2.join(10)
    assert got_second[0].body == got_first[0].body and got_second[0].redelivered
    assert queue_depths(url, "test", [topology.CLAIMS])[topology.CLAIMS] == 0


def test_a_malformed_message_is_dead_lettered_with_its_reason_and_the_next_is_consumed(
        url: str) -> None:
    broker = Broker(url, "test")
    broker.publish(topology.CLAIMS, b"{oops")
    broker.publish(topology.CLAIMS, b'{"request_id": "r2", "user_id": "bob"}')
    consumed: list[str] = []
    c = Consumer(url, "dispatcher@test", prefetch=1)

    def handle(d: Delivery) -> None:
        consumed.append(decode(ClaimRequest, d.body).request_id)  # raises InvalidMessage
        d.ack()

    c.subscribe(topology.CLAIMS, handle)
    t = run_consumer(c)
    wait_for(lambda: consumed, what="the valid message behind the bad one")
    c.stop()
    t.join(10)
    assert consumed == ["r2"]
    dead = get_one(url, "test", topology.DEAD_LETTER)
    assert dead is not None
    body, headers = dead
    assert body == b"{oops"
    assert headers[topology.REASON_HEADER].startswith("body is not valid JSON")
    assert headers[topology.SOURCE_HEADER] == topology.CLAIMS


def test_a_reply_reaches_the_client_on_direct_reply_to_with_its_correlation_id(url: str
                                                                               ) -> None:
    c = Consumer(url, "dispatcher@test")

    def handle(d: Delivery) -> None:
        claim = decode(ClaimRequest, d.body)
        assert d.reply_to
        c.publish_here(d.reply_to, ClaimReply(request_id=claim.request_id,
                                              status="unavailable", reason="test").to_json(),
                       correlation_id=d.correlation_id)
        d.ack()

    c.subscribe(topology.CLAIMS, handle)
    t = run_consumer(c)
    rpc = RpcClient(url, "cli@test")
    reply = json.loads(rpc.call(topology.CLAIMS, b'{"request_id": "r9", "user_id": "a"}', 10))
    rpc.close()
    c.stop()
    t.join(10)
    assert reply["request_id"] == "r9" and reply["status"] == "unavailable"


def test_acks_from_worker_threads_after_a_reconnect_are_dropped_not_doubled(
        url: str, proxy: CuttableProxy) -> None:
    """Messages in hand when the connection drops are redelivered once; a late ack for the
    old channel is dropped instead of closing the new channel with an unknown tag."""
    purl = proxy.url(vhost_of(url))
    broker = Broker(url, "test")
    for k in range(10):
        broker.publish(topology.CLAIMS, json.dumps({"request_id": f"r{k}",
                                                    "user_id": "a"}).encode())
    done: dict[str, int] = {}
    held: list[Delivery] = []
    c = Consumer(purl, "dispatcher@test", prefetch=20)

    def handle(d: Delivery) -> None:
        rid = decode(ClaimRequest, d.body).request_id
        if len(held) < 3 and not d.redelivered:
            held.append(d)  # acked late, from another thread, after the cut
            return
        done[rid] = done.get(rid, 0) + 1
        threading.Thread(target=d.ack).start()

    c.subscribe(topology.CLAIMS, handle)
    t = run_consumer(c)
    wait_for(lambda: len(done) >= 7, what="first deliveries")
    proxy.cut(refuse_for=1.0)
    for d in held:
        threading.Thread(target=d.ack).start()
    wait_for(lambda: len(done) == 10, timeout=30, what="redelivery of the held messages")
    time.sleep(0.5)
    c.stop()
    t.join(10)
    assert sorted(done) == sorted(f"r{k}" for k in range(10))
    assert queue_depths(url, "test", [topology.CLAIMS])[topology.CLAIMS] == 0


def test_the_consumer_resumes_after_the_connection_is_cut_and_loses_nothing(
        url: str, proxy: CuttableProxy) -> None:
    purl = proxy.url(vhost_of(url))
    seen: set[str] = set()
    c = Consumer(purl, "dispatcher@test", prefetch=5)

    def handle(d: Delivery) -> None:
        seen.add(decode(ClaimRequest, d.body).request_id)
        d.ack()

    c.subscribe(topology.CLAIMS, handle)
    t = run_consumer(c)
    publisher = Broker(purl, "client@test").publisher()
    publisher.publish(topology.CLAIMS, b'{"request_id": "before", "user_id": "a"}')
    wait_for(lambda: "before" in seen, what="message before the cut")
    proxy.cut(refuse_for=2.0)
    # the publisher retries through the outage (jittered backoff) and succeeds after it
    publisher.publish(topology.CLAIMS, b'{"request_id": "after", "user_id": "a"}')
    wait_for(lambda: "after" in seen, timeout=30, what="message after the outage")
    c.stop()
    t.join(10)
    publisher.close()
    assert seen == {"before", "after"}


def test_an_own_queue_is_consumed_bound_and_declared_again_after_a_cut(
        url: str, proxy: CuttableProxy) -> None:
    queue = f"workerpool.confirm.test-{os.getpid()}"
    got: list[bytes] = []
    events: list[str] = []
    c = Consumer(proxy.url(vhost_of(url)), "dispatcher@test", declare=False)

    def handle(d: Delivery) -> None:
        got.append(d.body)
        d.ack()

    c.subscribe_own(queue, handle, bind_exchange=topology.AGENTS_TOPIC_EXCHANGE)
    c.on_connect(lambda: events.append("connect"))
    c.on_disconnect(lambda: events.append("disconnect"))
    t = run_consumer(c)
    assert c.own_ready.is_set()
    broker = Broker(url, "client@test")
    broker.publish(queue, b"direct")
    broker.publish(queue, b"topic", exchange=topology.AGENTS_TOPIC_EXCHANGE)
    wait_for(lambda: len(got) == 2, what="both routes to the own queue")
    proxy.cut(refuse_for=1.0)
    # the broker drops an exclusive queue with its connection; ours comes back with the next
    # (after LOCKED_PAUSE pauses while the broker still holds the old one)
    wait_for(lambda: events == ["connect", "disconnect", "connect"], timeout=60,
             what="a reconnect")
    wait_for(c.own_ready.is_set, timeout=30, what="the own queue again")
    broker.publish(queue, b"after")
    wait_for(lambda: b"after" in got, what="a message after the cut")
    c.stop()
    t.join(10)
    with pytest.raises(Unroutable):  # exclusive and auto-delete: gone with the consumer
        broker.publish(queue, b"nobody")
    broker.close()


def test_a_second_connection_waits_for_an_own_queue_until_the_first_lets_it_go(
        url: str) -> None:
    queue = f"workerpool.agent.i-test{os.getpid()}"
    first = Consumer(url, "agent@first", declare=False)
    first.subscribe_own(queue, lambda d: d.ack())
    t1 = run_consumer(first)
    second = Consumer(url, "agent@second", declare=False)
    got: list[bytes] = []

    def handle(d: Delivery) -> None:
        got.append(d.body)
        d.ack()

    second.subscribe_own(queue, handle)
    t2 = threading.Thread(target=second.run, daemon=True)
    t2.start()
    time.sleep(1.5)  # 405 RESOURCE_LOCKED, pause, try again...
    assert not second.own_ready.is_set()
    first.stop()
    t1.join(10)
    assert second.own_ready.wait(15), "the second consumer never took the queue over"
    Broker(url, "client@test").publish(queue, b"for the second")
    wait_for(lambda: got == [b"for the second"], what="delivery to the second")
    second.stop()
    t2.join(10)


def test_every_publish_path_reports_the_same_errors(url: str, proxy: CuttableProxy) -> None:
    """publish_here (replies, dead-letter copies) and the RpcClient use the one publish
    path: Unroutable for a mandatory message nobody takes, BrokerUnavailable for a lost
    connection, never a pika exception."""
    errors: list[BaseException] = []
    c = Consumer(url, "dispatcher@test")

    def handle(d: Delivery) -> None:
        try:
            c.publish_here("workerpool.no-such-queue", b"{}")
        except Unroutable as exc:
            errors.append(exc)
        d.ack()

    c.subscribe(topology.CLAIMS, handle)
    t = run_consumer(c)
    Broker(url, "client@test").publish(topology.CLAIMS, b"{}")
    wait_for(lambda: errors, what="the consumer's unroutable publish")
    assert c.connected.is_set()  # an unroutable reply is no reason to reconnect
    c.stop()
    t.join(10)

    rpc = RpcClient(proxy.url(vhost_of(url)), "cli@test")
    proxy.cut()
    with pytest.raises(BrokerUnavailable):
        for _ in range(50):  # pika notices the lost socket on a write or a read
            rpc.send(topology.CLAIMS, b"{}")
            rpc.wait(["none"], 0.05)
    rpc.close()


needs_rabbitmqctl = pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None or os.environ.get("WORKERPOOL_SKIP_BROKER_RESTART"),
    reason="needs rabbitmqctl on this machine (set WORKERPOOL_SKIP_BROKER_RESTART to skip)")


@needs_rabbitmqctl
@pytest.mark.serial
def test_the_broker_layer_resumes_after_a_real_broker_restart_with_no_message_lost(url: str
                                                                                   ) -> None:
    seen: list[str] = []
    c = Consumer(url, "dispatcher@test", prefetch=5)

    def handle(d: Delivery) -> None:
        seen.append(decode(ClaimRequest, d.body).request_id)
        d.ack()

    c.subscribe(topology.CLAIMS, handle)
    t = run_consumer(c)
    broker = Broker(url, "client@test")
    broker.publish(topology.CLAIMS, b'{"request_id": "m1", "user_id": "a"}')
    wait_for(lambda: "m1" in seen, what="m1")
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, timeout=60)
    try:
        time.sleep(1)
    finally:
        subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, timeout=120)
    subprocess.run(["rabbitmqctl", "-q", "await_startup"], check=False, timeout=120)
    broker.publish(topology.CLAIMS, b'{"request_id": "m2", "user_id": "a"}')
    wait_for(lambda: "m2" in seen, timeout=60, what="m2 after the restart")
    c.stop()
    t.join(10)
    broker.close()
    assert seen.count("m1") == 1 and seen.count("m2") == 1


# --- AMQP_URL listing several brokers (issue 14: failover to another node) ---------------

class NodeProxy(CuttableProxy):
    """A CuttableProxy whose cut reaches the client at once. CuttableProxy's pipe threads
    close a socket without shutting it down: when the upstream side's thread wins that race,
    the client's socket is closed while the other thread still blocks in recv() on it, so
    the kernel sends no FIN until pika's next heartbeat (15 s later). Shutting it down first
    wakes that recv and sends the FIN now. (The same change belongs in tests/proxy.py.)"""

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def dead_url(vhost: str, password: str = "guest") -> str:
    """A broker URL where nothing listens (connection refused at once)."""
    from tests.conftest import free_port

    return f"amqp://guest:{password}@127.0.0.1:{free_port()}/{vhost}"


def test_a_url_list_connects_through_whichever_broker_answers(url: str,
                                                               proxy: CuttableProxy) -> None:
    """Every connection tries the brokers in a random order: with one of two down, each of
    20 connections still lands on the live one."""
    listed = f"{dead_url(vhost_of(url))},{proxy.url(vhost_of(url))}"
    for _ in range(20):
        connect(listed, "test@list").close()
    rpc = RpcClient(listed, "cli@list")  # a client given the list works as with one URL
    rpc.close()


def test_a_url_list_that_nobody_answers_names_every_broker_without_its_password(url: str
                                                                                ) -> None:
    vhost = vhost_of(url)
    listed = f"{dead_url(vhost, 'pw-one')}, {dead_url(vhost, 'pw,two')}"
    with pytest.raises(BrokerUnavailable) as err:
        connect(listed, "test@list")
    text = str(err.value)
    assert text.startswith("none of the 2 brokers answers: ")
    assert "pw-one" not in text and "pw,two" not in text
    assert text.count("amqp://guest:***@127.0.0.1:") == 2


def test_a_url_list_must_name_one_user_and_vhost() -> None:
    """Every message carries the user as its user_id, checked against the connection's
    user: a list of brokers with other users would fail on the first failover."""
    with pytest.raises(ValueError, match="one user and vhost"):
        connection_parameters("amqp://a:x@h1/%2F,amqp://b:x@h2/%2F", "test")
    assert [p.port for p in connection_parameters(
        "amqp://a:x@h1:5681/%2F,amqp://a:x@h2:5682/%2F", "test")] == [5681, 5682]


def test_a_consumer_given_a_url_list_moves_to_the_other_broker_when_its_own_goes(
        url: str) -> None:
    """Two proxies stand for two nodes of a cluster. The one that carries the consumer's
    connection is cut and then refuses: the consumer reconnects through the other and
    consumes what was published meanwhile. Each message comes once, or again flagged
    redelivered when its ack was still on the cut connection (at-least-once)."""
    vhost = vhost_of(url)
    nodes = [NodeProxy(), NodeProxy()]
    try:
        listed = ",".join(p.url(vhost) for p in nodes)
        seen: list[str] = []
        repeats: list[tuple[str, bool]] = []
        c = Consumer(listed, "dispatcher@test", prefetch=5)

        def handle(d: Delivery) -> None:
            request_id = decode(ClaimRequest, d.body).request_id
            if request_id in seen:
                repeats.append((request_id, d.redelivered))
            else:
                seen.append(request_id)
            d.ack()

        c.subscribe(topology.CLAIMS, handle)
        t = run_consumer(c)
        publisher = Broker(url, "client@test")
        publisher.publish(topology.CLAIMS, b'{"request_id": "before", "user_id": "a"}')
        wait_for(lambda: "before" in seen, what="a message before the cut")
        (carrier,) = [p for p in nodes if p._socks]  # the consumer's connection runs here
        c.connected.clear()
        carrier.cut(refuse_for=60)  # this "node" is gone for the rest of the test
        publisher.publish(topology.CLAIMS, b'{"request_id": "after", "user_id": "a"}')
        assert c.connected.wait(5), "the consumer did not reconnect"
        wait_for(lambda: "after" in seen, timeout=15, what="a message after the cut")
        (survivor,) = [p for p in nodes if p is not carrier]
        assert survivor._socks and not carrier._socks
        c.stop()
        t.join(10)
        publisher.close()
        assert seen == ["before", "after"]
        assert all(redelivered for _, redelivered in repeats), repeats
    finally:
        for p in nodes:
            p.close()
