"""What a consumer consumes, and how it starts consuming it on each new channel.

Three kinds, all set up again on every (re)connection:

* a shared queue (``workerpool.claims``...): consumed as it is;
* a fanout exchange: a server-named, exclusive, auto-delete queue of our own bound to it;
* an own queue with a fixed name (an agent's command queue, a dispatcher's confirm queue):
  exclusive and auto-delete, so it must be declared on the connection that consumes it,
  and it lives exactly as long as that connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from shared.broker.connection import CONNECTION_ERRORS
from shared.broker.delivery import Handler
from shared.errors import BrokerUnavailable

log = logging.getLogger(__name__)

#: After a cut, the broker may still hold our previous connection (until its heartbeat
#: times out) and with it our exclusive own queue: 405 RESOURCE_LOCKED. Pause this long
#: before reconnecting instead of spinning (and without the growing reconnect backoff, so
#: the queue is back within about a second of the broker letting the old one go).
LOCKED_PAUSE = 1.0

#: pika's consumer callback: (channel, method, properties, body).
Callback = Callable[[BlockingChannel, Any, Any, bytes], None]


@dataclass(frozen=True)
class Own:
    queue: str
    handler: Handler
    bind_exchange: str | None = None


@dataclass
class Subscriptions:
    """The consumer's subscriptions; ``start*`` return queue name → consumer tag."""

    queues: list[tuple[str, Handler, dict[str, Any]]] = field(default_factory=list)
    fanouts: list[tuple[str, Handler]] = field(default_factory=list)
    own: list[Own] = field(default_factory=list)

    def start(self, channel: BlockingChannel,
              callback: Callable[[Handler], Callback]) -> dict[str, str]:
        """Consume the shared queues and our fanout queues on ``channel``."""
        tags: dict[str, str] = {}
        for queue, handler, args in self.queues:
            tags[queue] = channel.basic_consume(queue, callback(handler), **args)
        for exchange, handler in self.fanouts:
            q = channel.queue_declare(queue="", exclusive=True, auto_delete=True)
            channel.queue_bind(q.method.queue, exchange)
            tags[q.method.queue] = channel.basic_consume(q.method.queue, callback(handler))
        return tags

    def start_own(self, channel: BlockingChannel,
                  callback: Callable[[Handler], Callback]) -> dict[str, str]:
        """Declare and consume our own queues on ``channel``. A ``bind_exchange`` also
        routes to the queue with routing key = its name (``amq.topic``, so that publishers
        confined to a topic can reach it). Raises pika's errors (405 RESOURCE_LOCKED...)."""
        tags: dict[str, str] = {}
        for own in self.own:
            channel.queue_declare(own.queue, exclusive=True, auto_delete=True)
            if own.bind_exchange:
                channel.queue_bind(own.queue, own.bind_exchange, routing_key=own.queue)
            tags[own.queue] = channel.basic_consume(own.queue, callback(own.handler))
        return tags

    def shared_names(self) -> list[str]:
        """The shared queues (subscribe), which others may delete and declare again."""
        return [q for q, _, _ in self.queues]

    def names(self) -> list[str]:
        """The named queues, for the log."""
        return [q for q, _, _ in self.queues] + [o.queue for o in self.own]


def audit(conn: BlockingConnection, queues: list[str]) -> None:
    """Each of ``queues`` exists and has a consumer, else ``BrokerUnavailable`` (the consumer
    subscribes again on a new connection, declaring what is missing). Passive declares on a
    channel of their own, which a missing queue closes. Needed because a queue deleted and
    declared again within the same instant can leave RabbitMQ (3.10) sending no basic.cancel
    at all: our consumer is then a ghost that swallows deliveries."""
    probe = conn.channel()
    try:
        for queue in queues:
            if probe.queue_declare(queue, passive=True).method.consumer_count == 0:
                raise BrokerUnavailable(f"nobody consumes {queue}: not even us")
    except CONNECTION_ERRORS as exc:
        raise BrokerUnavailable(f"a queue we consume is gone: {exc!r}") from exc
    finally:
        if probe.is_open:
            try:
                probe.close()
            except CONNECTION_ERRORS:
                pass
