"""What the processes need from a broker, as Protocols.

``shared.broker``'s RabbitMQ classes implement them (mypy checks it in ``__init__``), and so
does the in-memory ``tests.stubbroker.StubBroker``, which lets a loop's wiring be tested
without RabbitMQ. Code that only needs these operations should accept the Protocol rather
than the concrete class.

Handlers receive the concrete ``Delivery`` (both brokers create it); ``DeliveryLike`` names
the part of it a handler uses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from shared.broker.delivery import Handler


class PublisherLike(Protocol):
    """Publishes one message and returns once the broker has it (confirmed).

    Raises ``shared.errors.Unroutable`` when ``mandatory`` and no queue took it, and
    ``shared.errors.BrokerUnavailable`` when the broker cannot be reached (after retries).
    """

    def publish(self, routing_key: str, body: bytes, *, exchange: str = "",
                reply_to: str | None = None, correlation_id: str | None = None,
                headers: dict[str, Any] | None = None, mandatory: bool = True,
                persistent: bool = True) -> None: ...


class BrokerLike(PublisherLike, Protocol):
    """A process's publishing side: ``publish`` from any thread (one publisher each)."""

    def publisher(self) -> PublisherLike: ...

    def declare(self) -> None: ...

    def close(self) -> None: ...


class DeliveryLike(Protocol):
    """One message in hand. Settle it exactly once, from any thread."""

    queue: str
    body: bytes
    redelivered: bool
    reply_to: str | None
    correlation_id: str | None
    headers: dict[str, Any]

    def ack(self) -> None: ...

    def nack(self, requeue: bool = True) -> None: ...

    def dead_letter(self, reason: str, reply: bytes | None = None) -> None:
        """Copy to workerpool.dead-letter (``x-workerpool-reason``, ``-source-queue``), then
        publish ``reply`` to ``reply_to`` if both are set, then ack."""


class ConsumerLike(Protocol):
    """Consumes on the thread that calls ``run``; handlers run on that thread.

    A handler that raises ``InvalidMessage`` gets its message dead-lettered, any other
    exception gets it requeued.
    """

    connected: threading.Event
    own_ready: threading.Event

    def subscribe(self, queue: str, handler: Handler, **consume_args: Any) -> None: ...

    def subscribe_fanout(self, exchange: str, handler: Handler) -> None: ...

    def subscribe_own(self, queue: str, handler: Handler, *,
                      bind_exchange: str | None = None) -> None: ...

    def on_connect(self, fn: Callable[[], None]) -> None: ...

    def on_disconnect(self, fn: Callable[[], None]) -> None: ...

    def publish_here(self, routing_key: str, body: bytes, *, exchange: str = "",
                     reply_to: str | None = None, correlation_id: str | None = None,
                     headers: dict[str, Any] | None = None, mandatory: bool = True,
                     persistent: bool = True) -> None:
        """Publish on the consumer's own connection (consumer thread only)."""

    def run(self, idle: Callable[[], bool] | None = None) -> None: ...

    def stop(self) -> None: ...

    @property
    def stopping(self) -> bool: ...
