"""The broker layer: the only module that imports pika.

Three pieces, each following pika's threading rule (a connection belongs to one thread):

* ``Publisher``: one per thread (``Broker.publisher()`` hands out a thread-local one).
  Persistent JSON messages, publisher confirms, ``mandatory=True``; reconnects with
  jittered backoff and raises ``BrokerUnavailable`` when it gives up, ``Unroutable`` when
  no queue took the message (a reply queue that is gone).
* ``Consumer``: owns one connection on the thread that calls ``run()``. Manual acks, a
  bounded prefetch, invalid messages sent to ``workerpool.dead-letter`` with a reason
  (never requeued, never blocking the queue), reconnect with backoff that resets after a
  healthy session. A ``Delivery`` may be acked from any thread: acks from other threads go
  through ``add_callback_threadsafe`` and are dropped (the broker redelivers) if the channel
  that delivered the message is gone, so nothing is acked twice or on the wrong channel.
* ``RpcClient``: request/reply over direct reply-to, with a timeout.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions as pe
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from shared import topology
from shared.config import redact_url
from shared.errors import BrokerUnavailable, InvalidMessage, Unroutable

log = logging.getLogger("workerpool.broker")

#: Errors that mean "this connection or channel is gone": drop it and reconnect.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pe.AMQPConnectionError,
    pe.AMQPChannelError,
    pe.StreamLostError,
    pe.ConnectionWrongStateError,
    pe.ChannelWrongStateError,
    ConnectionError,
    OSError,
)

JSON = "application/json"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def _mandatory(routing_key: str, requested: bool) -> bool:
    """Direct reply-to names are "not a queue" to the broker: a mandatory publish to one is
    always returned, even when delivered. So replies there go without mandatory, and a reply
    to a client that has gone is dropped by the broker (at-most-once, as documented)."""
    return requested and not routing_key.startswith(DIRECT_REPLY_TO)


def connection_parameters(url: str, name: str) -> pika.URLParameters:
    """URL parameters plus the connection name, heartbeat and blocked-connection timeout.

    pika's defaults leave ``blocked_connection_timeout`` unset, so a publisher blocked by a
    broker alarm would hang forever; we give up after 30 s and reconnect instead.
    """
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": name, "product": "workerpool"}
    if "heartbeat=" not in url:
        params.heartbeat = 30
    if "blocked_connection_timeout=" not in url:
        params.blocked_connection_timeout = 30
    if "socket_timeout=" not in url:
        params.socket_timeout = 5
    params.connection_attempts = 1
    return params


def connect(url: str, name: str) -> BlockingConnection:
    try:
        return BlockingConnection(connection_parameters(url, name))
    except CONNECTION_ERRORS as exc:
        raise BrokerUnavailable(f"broker at {redact_url(url)} does not answer: {exc!r}") from exc


def declare_topology(channel: BlockingChannel) -> BlockingChannel:
    """Declare every durable queue and exchange of ``shared.topology`` (idempotent).

    A queue that already exists is taken as it is (checked passively): an operator, the
    definitions file or a client may have declared it first, with other optional arguments,
    and redeclaring it with ours would be refused (406) and close the channel. A passive
    check of a missing queue closes the channel (404), so a fresh one is opened. Returns the
    channel to go on with."""
    for name, kind in topology.EXCHANGES:
        channel.exchange_declare(exchange=name, exchange_type=kind, durable=True)
    for q in topology.QUEUES:
        try:
            channel.queue_declare(queue=q.name, passive=True)
        except pe.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            channel = channel.connection.channel()
            channel.queue_declare(queue=q.name, durable=True, arguments=q.arguments)
    for exchange, queue, key in topology.BINDINGS:
        channel.queue_bind(queue, exchange, routing_key=key)
    return channel


def properties(
    *,
    reply_to: str | None = None,
    correlation_id: str | None = None,
    headers: dict[str, Any] | None = None,
    persistent: bool = True,
    expiration: str | None = None,
) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=JSON,
        delivery_mode=pika.DeliveryMode.Persistent if persistent else pika.DeliveryMode.Transient,
        reply_to=reply_to,
        correlation_id=correlation_id,
        headers=headers,
        message_id=uuid.uuid4().hex,
        timestamp=int(time.time()),
        expiration=expiration,
    )


def _retrying(max_seconds: float) -> Retrying:
    return Retrying(
        retry=retry_if_exception_type(BrokerUnavailable),
        wait=wait_exponential(multiplier=0.2, max=5) + wait_random(0, 0.2),
        stop=stop_after_delay(max_seconds),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )


# --- publishing --------------------------------------------------------------------------
class Publisher:
    """Publishes with confirms on a connection owned by the calling thread."""

    def __init__(self, url: str, name: str, *, give_up_after: float = 30.0) -> None:
        self._url = url
        self._name = name
        self._give_up_after = give_up_after
        self._conn: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._owner = threading.get_ident()
        self._last_used = 0.0

    #: Nothing services an idle publisher's connection (pika is not threaded), so after about
    #: two missed heartbeats the broker drops it. Past this idle time we reconnect first
    #: instead of failing one publish and logging a retry.
    MAX_IDLE = 25.0

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
        """Publish and wait for the broker's confirm. Retries transient failures."""
        assert threading.get_ident() == self._owner, "a Publisher belongs to one thread"
        props = properties(
            reply_to=reply_to, correlation_id=correlation_id, headers=headers,
            persistent=persistent,
        )
        for attempt in _retrying(self._give_up_after):
            with attempt:
                self._publish_once(exchange, routing_key, body, props, mandatory)

    def _publish_once(
        self, exchange: str, key: str, body: bytes, props: pika.BasicProperties, mandatory: bool
    ) -> None:
        try:
            channel = self._ensure()
            channel.basic_publish(exchange, key, body, props,
                                  mandatory=_mandatory(key, mandatory))
        except pe.UnroutableError as exc:
            raise Unroutable(f"no queue took the message for {key!r}") from exc
        except pe.NackError as exc:
            self.close()
            raise BrokerUnavailable(f"broker refused the message for {key!r}") from exc
        except BrokerUnavailable:
            raise
        except CONNECTION_ERRORS as exc:
            self.close()
            raise BrokerUnavailable(f"publish to {key!r} failed: {exc!r}") from exc

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except CONNECTION_ERRORS:
                pass


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
        pub = getattr(self._local, "publisher", None)
        if pub is None:
            pub = Publisher(self.url, self.name)
            self._local.publisher = pub
            with self._lock:
                self._all.append(pub)
        return pub

    def publish(self, routing_key: str, body: bytes, **kwargs: Any) -> None:
        self.publisher().publish(routing_key, body, **kwargs)

    def declare(self) -> None:
        """Declare the topology once on a short-lived connection."""
        for attempt in _retrying(30):
            with attempt:
                conn = connect(self.url, self.name)
                try:
                    declare_topology(conn.channel())
                finally:
                    conn.close()

    def close_thread_publisher(self) -> None:
        pub = getattr(self._local, "publisher", None)
        if pub is not None:
            pub.close()
            self._local.publisher = None

    def close(self) -> None:
        """Close this thread's publisher (others close with their threads or at exit)."""
        self.close_thread_publisher()


# --- consuming ---------------------------------------------------------------------------
@dataclass
class Delivery:
    """One message in hand. ``ack``/``nack``/``dead_letter`` are safe from any thread."""

    queue: str
    body: bytes
    delivery_tag: int
    redelivered: bool
    reply_to: str | None
    correlation_id: str | None
    headers: dict[str, Any]
    _consumer: Consumer = field(repr=False)
    _generation: int = field(repr=False)
    _settled: bool = field(default=False, repr=False)
    _reply: bytes | None = field(default=None, repr=False)

    def ack(self) -> None:
        self._consumer._settle(self, "ack")

    def nack(self, requeue: bool = True) -> None:
        self._consumer._settle(self, "requeue" if requeue else "reject")

    def dead_letter(self, reason: str, reply: bytes | None = None) -> None:
        """Copy to workerpool.dead-letter with ``x-workerpool-reason``; then, if given and
        the message has ``reply_to``, publish ``reply`` (e.g. a ``rejected`` reply) with its
        correlation_id; then ack. In that order: once the client has its answer, the
        dead-letter entry is already there, and nothing is acked before both went out."""
        self._reply = reply
        self._consumer._settle(self, "dead-letter", reason)


Handler = Callable[[Delivery], None]


class Consumer:
    """Consumes queues on the thread that calls ``run()``, reconnecting until ``stop()``."""

    def __init__(
        self,
        url: str,
        name: str,
        *,
        prefetch: int = 50,
        declare: bool = True,
        tick: float = 0.2,
    ) -> None:
        self._url = url
        self._name = name
        self._prefetch = prefetch
        self._declare = declare
        self._tick = tick
        self._subs: list[tuple[str, Handler, dict[str, Any]]] = []
        self._fanouts: list[tuple[str, Handler]] = []
        self._periodic: list[list[Any]] = []  # [interval, fn, next_due]
        self._on_connect: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._conn: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._pub_channel: BlockingChannel | None = None
        self._generation = 0
        self._thread: int | None = None
        self._tags: dict[str, str] = {}  # queue -> consumer tag
        self.connected = threading.Event()

    # configuration ----------------------------------------------------------------------
    def subscribe(self, queue: str, handler: Handler, **consume_args: Any) -> None:
        self._subs.append((queue, handler, consume_args))

    def subscribe_fanout(self, exchange: str, handler: Handler) -> None:
        """Bind an exclusive, auto-deleted queue of our own to a fanout exchange."""
        self._fanouts.append((exchange, handler))

    def every(self, interval: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the consumer thread every ``interval`` seconds while connected."""
        self._periodic.append([interval, fn, 0.0])

    def on_connect(self, fn: Callable[[], None]) -> None:
        self._on_connect.append(fn)

    # running ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask ``run()`` to return (safe from any thread or a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, idle: Callable[[], bool] | None = None) -> None:
        """Consume until ``stop()``; on stop, wait (≤ 5 s) until ``idle()`` says no work is
        in flight, so that its acks go out before the connection closes."""
        self._thread = threading.get_ident()
        while not self._stop.is_set():
            try:
                self._connect_with_backoff()
                if self._stop.is_set():
                    break
                self._loop()
            except CONNECTION_ERRORS as exc:
                log.warning("broker connection lost; reconnecting",
                            extra={"error": repr(exc), "connection_name": self._name})
                self._drop()
        self._shutdown(idle)

    def _connect_with_backoff(self) -> None:
        retry = Retrying(
            retry=retry_if_exception_type(BrokerUnavailable),
            wait=wait_exponential(multiplier=0.5, max=10) + wait_random(0, 0.5),
            stop=lambda state: self._stop.is_set(),
            sleep=lambda seconds: None if self._stop.wait(seconds) else None,  # SIGTERM wakes it
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )
        try:
            for attempt in retry:
                with attempt:
                    self._connect_once()
        except BrokerUnavailable:
            if not self._stop.is_set():
                raise

    def _connect_once(self) -> None:
        conn = connect(self._url, self._name)
        try:
            channel = conn.channel()
            if self._declare:
                channel = declare_topology(channel)
            channel.basic_qos(prefetch_count=self._prefetch)
            pub = conn.channel()
            pub.confirm_delivery()
            self._conn, self._channel, self._pub_channel = conn, channel, pub
            self._generation += 1
            for queue, handler, args in self._subs:
                self._tags[queue] = channel.basic_consume(
                    queue, functools.partial(self._on_message, handler), **args
                )
            for exchange, handler in self._fanouts:
                q = channel.queue_declare(queue="", exclusive=True, auto_delete=True)
                channel.queue_bind(q.method.queue, exchange)
                self._tags[q.method.queue] = channel.basic_consume(
                    q.method.queue, functools.partial(self._on_message, handler)
                )
        except CONNECTION_ERRORS as exc:
            self._drop()
            if conn.is_open:
                try:
                    conn.close()
                except CONNECTION_ERRORS:
                    pass
            raise BrokerUnavailable(f"could not set up consumer: {exc!r}") from exc
        self.connected.set()
        log.info("consumer connected", extra={"connection_name": self._name,
                                              "queues": [s[0] for s in self._subs]})
        for fn in self._on_connect:
            fn()

    def _loop(self) -> None:
        assert self._conn is not None
        while not self._stop.is_set():
            self._conn.process_data_events(time_limit=self._tick)
            now = time.monotonic()
            for entry in self._periodic:
                interval, fn, due = entry
                if now >= due:
                    entry[2] = now + interval
                    fn()

    def _on_message(
        self, handler: Handler, channel: BlockingChannel, method: Any, props: Any, body: bytes
    ) -> None:
        delivery = Delivery(
            queue=method.routing_key if not method.exchange else method.exchange,
            body=body,
            delivery_tag=method.delivery_tag,
            redelivered=method.redelivered,
            reply_to=props.reply_to,
            correlation_id=props.correlation_id,
            headers=dict(props.headers or {}),
            _consumer=self,
            _generation=self._generation,
        )
        # a message published to the default exchange is routed by queue name
        for queue, tag in self._tags.items():
            if tag == method.consumer_tag:
                delivery.queue = queue
        try:
            handler(delivery)
        except InvalidMessage as exc:
            if not delivery._settled:
                delivery.dead_letter(exc.reason)
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:  # a bug in a handler must not kill the consumer
            log.exception("handler failed; message requeued",
                          extra={"queue": delivery.queue, "error": repr(exc)})
            if not delivery._settled:
                delivery.nack(requeue=True)

    # settling ---------------------------------------------------------------------------
    def _settle(self, d: Delivery, how: str, reason: str | None = None) -> None:
        if threading.get_ident() == self._thread:
            self._settle_now(d, how, reason)
            return
        conn = self._conn
        if conn is None:
            return  # the channel is gone; the broker will redeliver
        settle = functools.partial(self._settle_now, d, how, reason)

        def guarded() -> None:
            try:
                settle()
            except CONNECTION_ERRORS:
                raise
            except Exception:  # e.g. the dead-letter queue was deleted: log, keep consuming
                log.exception("settling a delivery failed", extra={"queue": d.queue})

        try:
            conn.add_callback_threadsafe(guarded)
        except CONNECTION_ERRORS:
            pass  # closed meanwhile: redelivered, never double-acked

    def _settle_now(self, d: Delivery, how: str, reason: str | None) -> None:
        if d._settled:
            return
        channel = self._channel
        if channel is None or not channel.is_open or d._generation != self._generation:
            d._settled = True  # delivered on a channel that is gone: the broker redelivers it
            return
        if how == "dead-letter":
            self.publish_here(
                topology.DEAD_LETTER, d.body, headers={
                    **d.headers,
                    topology.REASON_HEADER: (reason or "unknown")[:1000],
                    topology.SOURCE_HEADER: d.queue,
                },
                correlation_id=d.correlation_id, reply_to=d.reply_to,
            )
            log.warning("message dead-lettered",
                        extra={"queue": d.queue, "reason": reason})
            if d._reply is not None and d.reply_to:
                try:
                    self.publish_here(d.reply_to, d._reply, correlation_id=d.correlation_id)
                except Unroutable:
                    log.info("reply queue gone; rejected reply dropped",
                             extra={"queue": d.queue})
            how = "ack"
        d._settled = True
        if how == "ack":
            channel.basic_ack(d.delivery_tag)
        else:
            channel.basic_nack(d.delivery_tag, requeue=(how == "requeue"))

    def publish_here(
        self, routing_key: str, body: bytes, *, exchange: str = "", mandatory: bool = True,
        **props: Any,
    ) -> None:
        """Publish (with confirm) on this consumer's connection; consumer thread only."""
        assert threading.get_ident() == self._thread, "publish_here is for the consumer thread"
        if self._pub_channel is None:
            raise BrokerUnavailable("not connected")
        try:
            self._pub_channel.basic_publish(
                exchange, routing_key, body, properties(**props),
                mandatory=_mandatory(routing_key, mandatory),
            )
        except pe.UnroutableError as exc:
            raise Unroutable(f"no queue took the message for {routing_key!r}") from exc

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the consumer thread (from any thread). Its errors are logged, not
        raised into the consume loop (a connection error still triggers a reconnect)."""
        conn = self._conn
        if conn is None:
            return

        def guarded() -> None:
            try:
                fn()
            except CONNECTION_ERRORS:
                raise
            except Exception:
                log.exception("callback on the consumer thread failed")

        try:
            conn.add_callback_threadsafe(guarded)
        except CONNECTION_ERRORS:
            pass

    def pause(self, queue: str) -> None:
        """Stop taking new messages from ``queue`` (consumer thread only)."""
        tag = self._tags.pop(queue, None)
        if tag and self._channel is not None and self._channel.is_open:
            self._channel.basic_cancel(tag)

    # teardown ---------------------------------------------------------------------------
    def _shutdown(self, idle: Callable[[], bool] | None) -> None:
        """Cancel consumers, let in-flight work settle (up to 5 s), close.

        Messages still unacked when the connection closes go back to their queue.
        """
        try:
            if self._channel is not None and self._channel.is_open:
                for tag in list(self._tags.values()):
                    self._channel.basic_cancel(tag)
                self._tags.clear()
            deadline = time.monotonic() + 5
            while (idle is not None and self._conn is not None and self._conn.is_open
                   and not idle() and time.monotonic() < deadline):
                self._conn.process_data_events(time_limit=0.05)
            if self._conn is not None and self._conn.is_open:
                self._conn.process_data_events(time_limit=0)
        except CONNECTION_ERRORS:
            pass
        self._drop()

    def _drop(self) -> None:
        self.connected.clear()
        conn, self._conn, self._channel, self._pub_channel = self._conn, None, None, None
        self._tags.clear()
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except CONNECTION_ERRORS:
                pass


# --- request / reply ---------------------------------------------------------------------
class RpcClient:
    """Requests with replies over direct reply-to (``amq.rabbitmq.reply-to``)."""

    REPLY_TO = "amq.rabbitmq.reply-to"

    def __init__(self, url: str, name: str) -> None:
        self._conn = connect(url, name)
        self._channel = self._conn.channel()
        self._replies: dict[str, bytes] = {}
        # consume on the same channel before publishing (a rule of direct reply-to)
        self._channel.basic_consume(self.REPLY_TO, self._on_reply, auto_ack=True)

    def _on_reply(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        self._replies[props.correlation_id or ""] = body

    def send(self, queue: str, body: bytes, correlation_id: str | None = None) -> str:
        cid = correlation_id or uuid.uuid4().hex
        self._channel.basic_publish(
            "", queue, body, properties(reply_to=self.REPLY_TO, correlation_id=cid),
        )
        return cid

    def wait(self, correlation_ids: Iterable[str], timeout: float,
             on_tick: Callable[[], None] | None = None) -> dict[str, bytes]:
        """Replies for these ids that arrive within ``timeout`` (the rest are missing)."""
        wanted = set(correlation_ids)
        deadline = time.monotonic() + timeout
        while wanted - self._replies.keys() and time.monotonic() < deadline:
            self._conn.process_data_events(time_limit=min(0.1, deadline - time.monotonic()))
            if on_tick is not None:
                on_tick()
        return {cid: self._replies.pop(cid) for cid in wanted if cid in self._replies}

    def call(self, queue: str, body: bytes, timeout: float,
             on_tick: Callable[[], None] | None = None) -> bytes:
        cid = self.send(queue, body)
        got = self.wait([cid], timeout, on_tick)
        if cid not in got:
            raise TimeoutError(f"no reply on {queue} within {timeout:g}s")
        return got[cid]

    def close(self) -> None:
        try:
            self._conn.close()
        except CONNECTION_ERRORS:
            pass


def queue_depths(url: str, name: str, queues: Iterable[str]) -> dict[str, int | None]:
    """Ready-message counts by passive declare (None where a queue does not exist)."""
    conn = connect(url, name)
    out: dict[str, int | None] = {}
    try:
        for q in queues:
            channel = conn.channel()
            try:
                out[q] = channel.queue_declare(q, passive=True).method.message_count
                channel.close()
            except pe.ChannelClosedByBroker:
                out[q] = None
    finally:
        conn.close()
    return out


def get_one(url: str, name: str, queue: str) -> tuple[bytes, dict[str, Any]] | None:
    """basic.get one message (acked) with its headers; for operators and tests."""
    conn = connect(url, name)
    try:
        channel = conn.channel()
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return None
        return body, dict(props.headers or {})
    finally:
        conn.close()


def purge(url: str, name: str, queues: Iterable[str]) -> None:
    """Empty queues (tests and `workerpool dev --fresh`)."""
    conn = connect(url, name)
    try:
        channel = conn.channel()
        channel = declare_topology(channel)
        for q in queues:
            channel.queue_purge(q)
    finally:
        conn.close()
