"""``Consumer``: consumes on one connection owned by the thread that calls ``run()``.

Manual acks, a bounded prefetch, invalid messages copied to ``workerpool.dead-letter`` with a
reason, reconnect with backoff that resets after a healthy session, and subscriptions that
heal: a consumer the broker cancels (its queue deleted) or a channel it closes is noticed,
and everything is consumed again on a new connection. A ``Delivery`` may be settled from any
thread: through ``add_callback_threadsafe`` (pika's basic_consumer_threaded.py), dropped (the
broker redelivering) if its channel is gone, so nothing is acked twice or on the wrong
channel. Periodic work is not done here: ``shared.ticker.Ticker``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from shared.broker.admin import declare_topology
from shared.broker.connection import (
    CONNECTION_ERRORS,
    LOST,
    broker_user,
    close_quietly,
    connect,
    reconnecting,
)
from shared.broker.delivery import Delivery, Handler, run_handler
from shared.broker.publisher import properties, publish_on
from shared.broker.settling import AckBatch, Settling
from shared.broker.subscriptions import LOCKED_PAUSE, Callback, Own, Subscriptions, audit
from shared.errors import BrokerUnavailable

log = logging.getLogger(__name__)

#: How often a consumer checks that the shared queues it consumes exist and have consumers
#: (subscriptions.audit): the broker's basic.cancel cannot be relied on alone.
AUDIT_SECONDS = 10.0


class Consumer(Settling):
    """Consumes queues on the thread that calls ``run()``, reconnecting until ``stop()``.

    ``connected`` is set while a connection is up with every subscription consumed;
    ``own_ready`` likewise once the queues of ``subscribe_own`` are declared and consumed.
    """

    def __init__(self, url: str, name: str, *, prefetch: int = 50, declare: bool = True,
                 tick: float = 0.2, dead_letter_exchange: str = "") -> None:
        self._url = url
        #: where our dead-letter copies go: the default exchange, or amq.topic for a user
        #: confined to it (agents, AGENT_EXCHANGE); both reach workerpool.dead-letter
        self._dead_letter_exchange = dead_letter_exchange
        self._user = broker_user(url)
        self._name = name
        self._prefetch = prefetch
        self._declare = declare
        self._tick = tick  # how long one loop turn may block: bounds the reaction to stop()
        self._subs = Subscriptions()
        self._on_connect: list[Callable[[], None]] = []
        self._on_disconnect: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._conn: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._pub_channel: BlockingChannel | None = None
        self._broken: BrokerUnavailable | None = None  # a publish here failed: reconnect
        self._generation = 0
        self._audited_at = 0.0
        self._thread: int | None = None
        self._tags: dict[str, str] = {}  # queue -> consumer tag
        self._acks = AckBatch()
        self.connected = threading.Event()
        self.own_ready = threading.Event()
        #: consumers the broker cancelled; connections after the first (each resubscribes)
        self.cancels = 0
        self.resubscriptions = 0

    # configuration (before run) ---------------------------------------------------------
    def subscribe(self, queue: str, handler: Handler, **consume_args: Any) -> None:
        """Consume an existing (shared) queue with ``handler``."""
        self._subs.queues.append((queue, handler, consume_args))

    def subscribe_fanout(self, exchange: str, handler: Handler) -> None:
        """Bind an exclusive, auto-deleted queue of our own to a fanout exchange."""
        self._subs.fanouts.append((exchange, handler))

    def subscribe_own(self, queue: str, handler: Handler, *,
                      bind_exchange: str | None = None) -> None:
        """Consume ``queue``, exclusive and auto-delete, declared by us on every connection
        (``bind_exchange``: also bound there, routing key = ``queue``). While the broker
        still holds it for our previous connection (405 RESOURCE_LOCKED) we pause
        ``LOCKED_PAUSE`` and reconnect. ``own_ready`` is set once it is consumed."""
        self._subs.own.append(Own(queue, handler, bind_exchange))

    def on_connect(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the consumer thread once each (re)connection consumes everything."""
        self._on_connect.append(fn)

    def on_disconnect(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` when a connection is lost (its unsettled deliveries are redelivered)."""
        self._on_disconnect.append(fn)

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
            except LOST as exc:
                log.warning("broker connection lost; reconnecting",
                            extra={"error": repr(exc), "connection_name": self._name})
                self._drop()
        self._shutdown(idle)

    def _connect_with_backoff(self) -> None:
        try:
            for attempt in reconnecting(self._stop):
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
            # a queue deleted (and declared again, as restoring definitions does) cancels our
            # consumer from the broker's side: noticed here, healed by a reconnect
            channel.add_on_cancel_callback(self._on_broker_cancel)
            self._tags = self._subs.start(channel, self._callback)
        except CONNECTION_ERRORS as exc:
            self._drop()
            close_quietly(conn)
            raise BrokerUnavailable(f"could not set up consumer: {exc!r}") from exc
        self._start_own(channel)
        if self._generation > 1:
            self.resubscriptions += 1
        self.connected.set()
        log.info("consumer connected", extra={"connection_name": self._name,
                                              "queues": self._subs.names()})
        for fn in self._on_connect:
            fn()

    def _start_own(self, channel: BlockingChannel) -> None:
        """Our own queues; a failure is raised as pika's error, not ``BrokerUnavailable``,
        so that ``run()`` reconnects after LOCKED_PAUSE without the growing backoff."""
        if not self._subs.own:
            return
        try:
            self._tags.update(self._subs.start_own(channel, self._callback))
        except CONNECTION_ERRORS as exc:
            log.warning("could not declare our own queue; reconnecting",
                        extra={"queue": [o.queue for o in self._subs.own],
                               "error": repr(exc)[:300]})
            self._stop.wait(LOCKED_PAUSE)
            raise
        self.own_ready.set()

    def _loop(self) -> None:
        assert self._conn is not None
        while not self._stop.is_set():
            self._conn.process_data_events(time_limit=self._tick)
            if self._broken is not None:  # a handler may have swallowed it: reconnect anyway
                raise self._broken
            if not (self._channel and self._channel.is_open and self._pub_channel
                    and self._pub_channel.is_open):  # closed by the broker, silently
                raise BrokerUnavailable("a channel of this consumer was closed")
            if time.monotonic() - self._audited_at >= AUDIT_SECONDS:
                self._audit()

    def _audit(self) -> None:
        assert self._conn is not None
        self._audited_at = time.monotonic()
        audit(self._conn, self._subs.shared_names())

    def _on_broker_cancel(self, frame: Any) -> None:
        """The broker cancelled one of our consumers (its queue was deleted): consume
        everything again on a new connection, declaring what is missing."""
        tag = getattr(getattr(frame, "method", None), "consumer_tag", None)
        queue = next((q for q, t in self._tags.items() if t == tag), tag)
        self.cancels += 1
        log.warning("the broker cancelled our consumer; subscribing again",
                    extra={"queue": queue, "connection_name": self._name,
                           "event": "consumer_cancelled"})
        self._broken = BrokerUnavailable(f"the broker cancelled our consumer of {queue}")

    def _callback(self, handler: Handler) -> Callback:
        return functools.partial(self._on_message, handler)

    def _on_message(self, handler: Handler, channel: BlockingChannel, method: Any,
                    props: Any, body: bytes) -> None:
        # named by the queue it came from (a fanout's is ours, server-named)
        queue = next((q for q, tag in self._tags.items() if tag == method.consumer_tag),
                     method.exchange or method.routing_key)
        run_handler(handler, Delivery(
            queue=queue, body=body, delivery_tag=method.delivery_tag,
            redelivered=method.redelivered, reply_to=props.reply_to,
            correlation_id=props.correlation_id, headers=dict(props.headers or {}),
            user_id=props.user_id, _settle=self._settle, _generation=self._generation))

    # settling ---------------------------------------------------------------------------
    def publish_here(
        self, routing_key: str, body: bytes, *, exchange: str = "",
        reply_to: str | None = None, correlation_id: str | None = None,
        headers: dict[str, Any] | None = None, mandatory: bool = True,
        persistent: bool = True,
    ) -> None:
        """Publish (with confirm) on this consumer's connection, from its thread (a reply, a
        dead-letter copy). ``BrokerUnavailable`` also makes the consumer reconnect."""
        assert threading.get_ident() == self._thread, "publish_here is for the consumer thread"
        if self._pub_channel is None:
            raise BrokerUnavailable("not connected")
        props = properties(reply_to=reply_to, correlation_id=correlation_id,
                           headers=headers, persistent=persistent, user_id=self._user)
        try:
            publish_on(self._pub_channel, exchange, routing_key, body, props, mandatory)
        except BrokerUnavailable as exc:
            self._broken = exc
            raise

    # teardown ---------------------------------------------------------------------------
    def _shutdown(self, idle: Callable[[], bool] | None) -> None:
        """Cancel consumers, let in-flight work settle (up to 5 s), close (what is still
        unacked goes back to its queue)."""
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
                self._conn.process_data_events(time_limit=0)  # runs a queued ack drain
                self._drain_acks()
                self._conn.process_data_events(time_limit=0)  # and sends what it buffered
        except LOST:
            pass
        self._drop()

    def _drop(self) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self.own_ready.clear()
        conn, self._conn, self._channel, self._pub_channel = self._conn, None, None, None
        self._broken = None
        self._acks.reset()
        self._tags.clear()
        close_quietly(conn)
        if was_connected:
            for fn in self._on_disconnect:
                try:
                    fn()
                except Exception:  # a hook must not stop the reconnect
                    log.exception("on_disconnect hook failed")
