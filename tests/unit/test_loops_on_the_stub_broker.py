"""The processes' broker wiring, run on the in-memory StubBroker instead of RabbitMQ.

The classes under test are the real ones (scaler.feed.EventFeed, agent.commands'
PasswordCommands, dispatcher.passwords.Passwords); only the broker is swapped.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands import PasswordCommands
from dispatcher.passwords import Passwords
from scaler.feed import EventFeed
from shared import topology
from shared.broker import from_senders
from shared.messages import LeasedEvent, SetPassword, ShortageEvent, now_sent_at
from shared.queues import command_queue, confirm_queue
from sim.fakes import FakeCodeServer
from tests.stubbroker import StubBroker, StubConsumer

INSTANCE = "i-0123456789abcdef0"


def test_the_scalers_event_feed_passes_events_on_acks_them_and_dead_letters_garbage() -> None:
    stub = StubBroker()
    feed = EventFeed(stub.consumer("amqp://unused", "scaler@test"), senders=frozenset({"guest"}))
    try:
        stub.publish(topology.SCALING, ShortageEvent(
            type="shortage", free=0, waiting=2, sent_at=now_sent_at()).to_json())
        stub.publish(topology.SCALING, b'{"type": "leased"}')
        stub.publish(topology.SCALING, LeasedEvent(
            type="leased", instance_id=INSTANCE, sent_at=now_sent_at()).to_json())
        stub.join(topology.SCALING)  # delivered on the feed's own thread, all settled
        events = feed.drain()
    finally:
        feed.stop()
    assert [type(e).__name__ for e in events] == ["ShortageEvent", "LeasedEvent"]
    ((body, headers),) = [stub.get_one(topology.DEAD_LETTER)]  # type: ignore[misc]
    assert body == b'{"type": "leased"}' and "instance_id" in headers[topology.REASON_HEADER]
    assert stub.get_one(topology.DEAD_LETTER) is None


@pytest.fixture
def code_server(tmp_path: Path) -> Iterator[FakeCodeServer]:
    with FakeCodeServer(tmp_path / "config.yaml") as fake:
        yield fake


def agent_side(stub: StubBroker, fake: FakeCodeServer, exchange: str) -> StubConsumer:
    """What agent.commands.listen wires, on the stub: the command queue, confirming on the
    consumer's own connection."""
    consumer = stub.consumer(name="agent", declare=False, prefetch=1)
    assert fake.config_path is not None
    commands = PasswordCommands(
        instance_id=INSTANCE, config_path=str(fake.config_path), restart_command=None,
        code_server_url=fake.url, timeout=5, exchange=exchange,
        publish=consumer.publish_here)
    consumer.subscribe_own(command_queue(INSTANCE),
                           from_senders(frozenset({"guest"}), commands.handle))
    return consumer


@pytest.mark.parametrize("exchange", ["", topology.AGENTS_TOPIC_EXCHANGE])
def test_a_lease_password_goes_to_the_agent_and_its_confirmation_comes_back(
        code_server: FakeCodeServer, exchange: str) -> None:
    """Dispatcher and agent, each consuming on a thread of its own as the processes do."""
    stub = StubBroker()
    passwords = Passwords(broker=stub, confirm_queue=confirm_queue("dispatcher@test:1"),
                          timeout=5)
    dispatcher = stub.consumer(name="dispatcher")
    dispatcher.subscribe_own(passwords.confirm_queue, passwords.on_confirm,
                             bind_exchange=topology.AGENTS_TOPIC_EXCHANGE)
    agent = agent_side(stub, code_server, exchange)
    threads = [threading.Thread(target=c.run, daemon=True) for c in (dispatcher, agent)]
    for t in threads:
        t.start()
    assert dispatcher.own_ready.wait(2) and agent.own_ready.wait(2)
    try:
        password = passwords.set_for(INSTANCE, {"request_id": "r-1"})
    finally:
        for c in (dispatcher, agent):
            c.stop()
        for t in threads:
            t.join(2)
    assert password is not None and code_server.accepts(password)
    assert stub.messages(topology.DEAD_LETTER) == []


def test_no_agent_listening_means_no_password(code_server: FakeCodeServer) -> None:
    stub = StubBroker()
    passwords = Passwords(broker=stub, confirm_queue=confirm_queue("d"), timeout=5)
    assert passwords.set_for(INSTANCE, {"request_id": "r-2"}) is None  # Unroutable


def test_a_bad_command_is_dead_lettered_with_its_reason_and_applies_nothing(
        code_server: FakeCodeServer) -> None:
    stub = StubBroker()
    agent = agent_side(stub, code_server, "")
    agent.connect()
    stub.publish(command_queue(INSTANCE), json.dumps({"type": "set_password"}).encode())
    stub.join()
    assert stub.journal[-1] == ("ack", command_queue(INSTANCE))
    (copy,) = stub.messages(topology.DEAD_LETTER)
    assert "command_id: field required" in copy.headers[topology.REASON_HEADER]
    assert code_server.config()["auth"] is None


def test_a_command_from_a_broker_user_outside_service_users_changes_nothing(
        code_server: FakeCodeServer) -> None:
    """A lessee knows the agents' broker credentials (they are on every VM): a password
    they send to another VM's command queue must not take that VM over."""
    stub = StubBroker()
    agent = agent_side(stub, code_server, "")
    agent.connect()
    forged = SetPassword(type="set_password", command_id="f" * 22, hashed_password="cd" * 32,
                         confirm_to=confirm_queue("mallory"), sent_at=now_sent_at())
    stub.as_user("workerpool-agent").publish(command_queue(INSTANCE), forged.to_json())
    stub.join()
    (copy,) = stub.messages(topology.DEAD_LETTER)
    assert copy.headers[topology.REASON_HEADER] == "untrusted sender"
    assert copy.headers[topology.SENDER_HEADER] == "workerpool-agent"
    assert code_server.config()["hashed_password"] is None


def test_a_confirmation_nobody_waits_for_is_acked_and_the_agent_goes_on(
        code_server: FakeCodeServer, caplog: pytest.LogCaptureFixture) -> None:
    """The dispatcher that sent the command is gone: its confirm queue went with it."""
    stub = StubBroker()
    agent = agent_side(stub, code_server, "")
    agent.connect()
    stub.publish(command_queue(INSTANCE), SetPassword(
        type="set_password", command_id="c" * 22, hashed_password="ab" * 32,
        confirm_to=confirm_queue("gone"), sent_at=now_sent_at()).to_json())
    stub.join()
    assert code_server.config()["hashed_password"] == "ab" * 32
    assert stub.journal[-1] == ("ack", command_queue(INSTANCE))
    assert [r.event for r in caplog.records if hasattr(r, "event")] == ["confirm_failed"]
