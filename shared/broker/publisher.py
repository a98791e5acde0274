"""Publishing: the one publish path (``publish_on``) and the per-thread ``Publisher``.

Every message workerpool sends goes through ``publish_on``, whichever connection it rides
on: ordinary publishes (``Publisher``), replies and dead-letter copies sent on a consumer's
own connection (``Consumer.publish_here``) and RPC requests (``RpcClient.send``). So a
caller sees the same two errors everywhere: ``Unroutable`` (no queue took a mandatory
message) and ``BrokerUnavailable`` (refused, or the connection is gone).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from itertools import count
from typing import Any

import pika
import pika.exceptions as pe
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from shared.broker.admin import declare
from shared.broker.connection import (
    CONNECTION_ERRORS,
    DIRECT_REPLY_TO,
    JSON,
    broker_user,
    close_quietly,
    connect,
    retrying,
)
from shared.errors import BrokerUnavailable, Unroutable

log = logging.getLogger(__name__)

#: message ids: this process's random prefix and a counter (unique without a syscall each,
#: as uuid4's urandom is; they only tell messages apart in logs and the management UI)
_ID_PREFIX = uuid.uuid4().hex[:16]
_ids = count(1)


def properties(
    *,
    reply_to: str | None = None,
    correlation_id: str | None = None,
    headers: dict[str, Any] | None = None,
    persistent: bool = True,
    expiration: str | None = None,
    user_id: str | None = None,
) -> pika.BasicProperties:
    """JSON message properties with a fresh message id and timestamp; ``user_id`` is the
    sender's broker user (validated by RabbitMQ)."""
    return pika.BasicProperties(
        content_type=JSON,
        user_id=user_id,
        delivery_mode=pika.DeliveryMode.Persistent if persistent else pika.DeliveryMode.Transient,
        reply_to=reply_to,
        correlation_id=correlation_id,
        headers=headers,
        message_id=f"{_ID_PREFIX}-{next(_ids):x}",
        timestamp=int(time.time()),
        expiration=expiration,
    )


def _mandatory(routing_key: str, requested: bool) -> bool:
    """Direct reply-to names are "not a queue" to the broker: a mandatory publish to one is
    always returned, even when delivered. So replies there go without mandatory, and a reply
    to a client that has gone is dropped by the broker (at-most-once, as documented)."""
    return requested and not routing_key.startswith(DIRECT_REPLY_TO)


def publish_on(channel: BlockingChannel, exchange: str, key: str, body: bytes,
               props: pika.BasicProperties, mandatory: bool) -> None:
    """Publish on ``channel`` (waiting for the confirm if the channel is in confirm mode).

    Raises ``Unroutable`` when no queue took a mandatory message, ``BrokerUnavailable``
    when the broker refused it (nack) or the channel or connection is gone. The caller
    owns the channel and decides what to drop: a nacked or failed channel is not reused.
    """
    try:
        channel.basic_publish(exchange, key, body, props, mandatory=_mandatory(key, mandatory))
    # both are AMQPChannelErrors, so they are caught before the general case below
    except pe.UnroutableError as exc:
        raise Unroutable(f"no queue took the message for {key!r}") from exc
    except pe.NackError as exc:
        raise BrokerUnavailable(f"broker refused the message for {key!r}") from exc
    except pe.ConnectionClosedByBroker as exc:
        if exc.reply_code == 541 and key.startswith(DIRECT_REPLY_TO):
            # RabbitMQ < 3.10.12 (rabbitmq-server#6396) closes the connection instead of
            # dropping a reply whose client's node is down. Nobody can receive it: dropped
            # (replies are at-most-once), not retried. The caller's next publish reconnects.
            log.warning("reply dropped: the client's broker node is gone",
                        extra={"reply_to": key[:48]})
            return
        raise BrokerUnavailable(f"publish to {key!r} failed: {exc!r}") from exc
    except CONNECTION_ERRORS as exc:
        raise BrokerUnavailable(f"publish to {key!r} failed: {exc!r}") from exc


class Publisher:
    """Publishes with confirms on a connection owned by the calling thread."""

    #: Nothing services an idle publisher's connection (pika is not threaded), so after about
    #: two missed heartbeats the broker drops it. Past this idle time we reconnect first
    #: instead of failing one publish and logging a retry.
    MAX_IDLE = 25.0

    def __init__(self, url: str, name: str, *, give_up_after: float = 30.0) -> None:
        self._url = url
        self._user = broker_user(url)
        self._name = name
        self._give_up_after = give_up_after
        self._conn: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._owner = threading.get_ident()
        self._last_used = 0.0

    def _ensure(self) -> BlockingChannel:
        idle = time.monotonic() - self._last_used
        if self._conn is not None and idle > self.MAX_IDLE:
            self.close()
        self._last_used = time.monotonic()
        if self._channel is None or not self._channel.is_open:
            self.close()
            self._conn = connect(self._url, self._name)
            self._channel = self._conn.channel()
            self._channel.confirm_delivery()
        return self._channel

    def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        exchange: str = "",
        reply_to: str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
        mandatory: bool = True,
        persistent: bool = True,
    ) -> None:
        """Publish and wait for the broker's confirm. Retries ``BrokerUnavailable`` for up to
        ``give_up_after`` seconds; ``Unroutable`` is final."""
        assert threading.get_ident() == self._owner, "a Publisher belongs to one thread"
        props = properties(
            reply_to=reply_to, correlation_id=correlation_id, headers=headers,
            persistent=persistent, user_id=self._user,
        )
        for attempt in retrying(self._give_up_after):
            with attempt:
                self._publish_once(exchange, routing_key, body, props, mandatory)

    def _publish_once(
        self, exchange: str, key: str, body: bytes, props: pika.BasicProperties, mandatory: bool
    ) -> None:
        try:
            channel = self._ensure()
        except CONNECTION_ERRORS as exc:  # opening the channel or confirm mode failed
            self.close()
            raise BrokerUnavailable(f"publish to {key!r} failed: {exc!r}") from exc
        try:
            publish_on(channel, exchange, key, body, props, mandatory)
        except BrokerUnavailable:
            self.close()  # the next attempt starts on a new connection
            raise

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        close_quietly(conn)


class Broker:
    """Connection settings plus a thread-local Publisher for each thread that publishes."""

    def __init__(self, url: str, process: str) -> None:
        from shared.config import connection_name

        self.url = url
        self.name = connection_name(process)
        self._local = threading.local()
        self._all: list[Publisher] = []
        self._lock = threading.Lock()

    def publisher(self) -> Publisher:
        """This thread's Publisher (created on first use: one connection per thread)."""
        pub = getattr(self._local, "publisher", None)
        if pub is None:
            pub = Publisher(self.url, self.name)
            self._local.publisher = pub
            with self._lock:
                self._all.append(pub)
        return pub

    def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        exchange: str = "",
        reply_to: str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
        mandatory: bool = True,
        persistent: bool = True,
    ) -> None:
        """``Publisher.publish`` on this thread's Publisher."""
        self.publisher().publish(
            routing_key, body, exchange=exchange, reply_to=reply_to,
            correlation_id=correlation_id, headers=headers, mandatory=mandatory,
            persistent=persistent,
        )

    def declare(self) -> None:
        """Declare the topology once on a short-lived connection (retried up to 30 s)."""
        declare(self.url, self.name)

    def close_thread_publisher(self) -> None:
        pub = getattr(self._local, "publisher", None)
        if pub is not None:
            pub.close()
            self._local.publisher = None

    def close(self) -> None:
        """Close this thread's publisher (others close with their threads or at exit)."""
        self.close_thread_publisher()
