"""The command line's side of the broker: requests that fail fast, replies by correlation id.

Unlike ``shared.broker.RpcClient`` (the services' and tests' client, which sends without
confirms), every request here goes out with publisher confirms and ``mandatory``, so a
request that no queue takes is an error at once instead of a silent wait. Before the first
request the client also looks (a passive ``queue.declare``) whether anybody consumes the
queue: with no dispatcher running it says so within seconds. One connection, one channel,
one thread; direct reply-to is consumed on that channel before anything is published.

Built from ``shared.broker``'s own pieces (``connect``, ``publish_on``, ``properties``), so
this module does not import pika either.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from shared.broker import CONNECTION_ERRORS, DIRECT_REPLY_TO, connect, properties, publish_on
from shared.broker.connection import broker_user, close_quietly
from shared.config import redact_url
from shared.errors import BrokerUnavailable, Unroutable

#: How long a queue may show no consumer before we say nobody serves it (a dispatcher that
#: is reconnecting comes back within this).
PATIENCE = 3.0
#: process_data_events slices: how soon a signal flag or a deadline is seen.
SLICE = 0.1


class NotServed(BrokerUnavailable):
    """Nobody will answer: the queue does not exist, or nothing consumes it (exit 3)."""


def hint(url: str) -> str:
    return (f"is the pool running? Start one locally with `workerpool dev`, or check "
            f"AMQP_URL ({redact_url(url)}) with whoever runs the pool")


def new_request_id(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class PoolClient:
    """Requests to the pool's public queues, and their replies (PROTOCOL §3)."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self._user = broker_user(url)
        self._conn = connect(url, name)
        self._replies: dict[str, dict[str, Any]] = {}
        try:
            self._channel = self._conn.channel()
            self._channel.confirm_delivery()
            # consume on the same channel before publishing (a rule of direct reply-to)
            self._channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
        except CONNECTION_ERRORS as exc:
            close_quietly(self._conn)
            raise BrokerUnavailable(f"could not open a channel: {exc!r}") from exc

    def _on_reply(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        try:
            reply = json.loads(body)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            reply = {"status": "rejected", "reason": "the reply is not a JSON object"}
        self._replies[props.correlation_id or ""] = reply

    # --- is anybody there? ------------------------------------------------------------
    def consumers(self, queue: str) -> int | None:
        """How many consumers ``queue`` has; None when this broker user may not look.
        ``NotServed`` when the queue does not exist."""
        try:
            channel = self._conn.channel()  # a refused passive declare closes its channel
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"could not open a channel: {exc!r}") from exc
        try:
            ok = channel.queue_declare(queue, passive=True)
        except CONNECTION_ERRORS as exc:
            code = getattr(exc, "reply_code", None)
            if code == 404:
                raise NotServed(f"the broker has no queue {queue}: {hint(self.url)}") from exc
            if code == 403:
                return None  # the mandatory flag and the reply's deadline will tell instead
            raise BrokerUnavailable(f"could not look at {queue}: {exc!r}") from exc
        close_quietly_channel(channel)
        return int(ok.method.consumer_count)

    def check_served(self, queue: str, patience: float = PATIENCE,
                     gave_up: Callable[[], bool] = lambda: False) -> None:
        """Return once ``queue`` has a consumer (or we may not look); ``NotServed`` when it
        has none for ``patience`` seconds (or the caller ``gave_up``: Ctrl-C)."""
        deadline = time.monotonic() + patience
        while True:
            count = self.consumers(queue)
            if count is None or count > 0:
                return
            if time.monotonic() >= deadline or gave_up():
                raise NotServed(f"no dispatcher is serving {queue} (the queue has no "
                                f"consumer): {hint(self.url)}")
            self.pump(0.5, stop_on_reply=False)

    # --- requests and replies ---------------------------------------------------------
    def send(self, queue: str, body: dict[str, Any], correlation_id: str | None = None) -> str:
        """Publish a request (confirmed, mandatory); returns its correlation id.
        ``NotServed`` when no queue took it, ``BrokerUnavailable`` when the broker refused
        it or the connection is gone."""
        cid = correlation_id or uuid.uuid4().hex
        props = properties(reply_to=DIRECT_REPLY_TO, correlation_id=cid, user_id=self._user)
        try:
            publish_on(self._channel, "", queue, json.dumps(body).encode(), props,
                       mandatory=True)
        except Unroutable as exc:
            raise NotServed(f"the broker has no queue {queue}: {hint(self.url)}") from exc
        return cid

    def take(self, correlation_id: str) -> dict[str, Any] | None:
        """The reply to this request if it has arrived (once)."""
        return self._replies.pop(correlation_id, None)

    def pump(self, seconds: float, *, stop_on_reply: bool = True) -> None:
        """Let the connection work for up to ``seconds`` (returns early when a reply came).
        ``BrokerUnavailable`` when the connection is lost."""
        deadline = time.monotonic() + seconds
        before = len(self._replies)
        while (left := deadline - time.monotonic()) > 0:
            try:
                self._conn.process_data_events(time_limit=min(SLICE, left))
            except CONNECTION_ERRORS as exc:
                raise BrokerUnavailable(f"lost the broker connection: {exc!r}") from exc
            if stop_on_reply and len(self._replies) > before:
                return

    def call(self, queue: str, body: dict[str, Any], timeout: float,
             gave_up: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """``send`` then wait; ``TimeoutError`` when no reply came within ``timeout`` (or
        the caller ``gave_up``: checked every 0.2 s)."""
        cid = self.send(queue, body)
        deadline = time.monotonic() + timeout
        while (reply := self.take(cid)) is None:
            if time.monotonic() >= deadline or gave_up():
                raise TimeoutError(f"no reply on {queue} within {timeout:g}s")
            self.pump(min(0.2, deadline - time.monotonic()))
        return reply

    def close(self) -> None:
        close_quietly(self._conn)


def close_quietly_channel(channel: Any) -> None:
    try:
        channel.close()
    except CONNECTION_ERRORS:
        pass
