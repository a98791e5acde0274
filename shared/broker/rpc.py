"""``RpcClient``: request/reply over direct reply-to, with a timeout.

Following pika's examples/direct_reply_to.py: consume ``amq.rabbitmq.reply-to`` (auto-ack,
as the broker requires) on the same channel before publishing any request. Unlike
rabbitmq-tutorials' rpc_client.py, every wait has a deadline. Requests go out with publisher
confirms (a quorum queue whose leader has just died drops unconfirmed publishes: a request
would vanish unseen), through the same ``publish_on`` as every other message; a nack or a
lost connection is ``BrokerUnavailable`` whether it shows on a send or while waiting. After
one, take a new RpcClient (a nacked channel may keep nacking) and resend what has no reply,
with the same request_id (PROTOCOL §3: the same outcome).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from shared.broker.connection import CONNECTION_ERRORS, DIRECT_REPLY_TO, broker_user, connect
from shared.broker.publisher import properties, publish_on
from shared.errors import BrokerUnavailable


class RpcClient:
    """Requests with replies over direct reply-to (``amq.rabbitmq.reply-to``). One thread."""

    REPLY_TO = DIRECT_REPLY_TO

    def __init__(self, url: str, name: str) -> None:
        self._user = broker_user(url)
        self._conn = connect(url, name)
        self._channel = self._conn.channel()
        self._replies: dict[str, bytes] = {}
        # consume on the same channel before publishing (a rule of direct reply-to)
        self._channel.basic_consume(self.REPLY_TO, self._on_reply, auto_ack=True)
        # confirms: a request the broker did not take raises (BrokerUnavailable) instead of
        # vanishing; a quorum queue whose leader just died drops unconfirmed publishes
        self._channel.confirm_delivery()

    def _on_reply(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        self._replies[props.correlation_id or ""] = body

    def send(self, queue: str, body: bytes, correlation_id: str | None = None) -> str:
        """Publish a request to ``queue``; returns its correlation id. ``BrokerUnavailable``
        if the connection is gone (not retried: the caller decides whether to resend)."""
        cid = correlation_id or uuid.uuid4().hex
        props = properties(reply_to=self.REPLY_TO, correlation_id=cid, user_id=self._user)
        # not mandatory: on a channel without confirms pika raises nothing for a return
        publish_on(self._channel, "", queue, body, props, mandatory=False)
        return cid

    def wait(self, correlation_ids: Iterable[str], timeout: float,
             on_tick: Callable[[], None] | None = None) -> dict[str, bytes]:
        """Replies for these ids that arrive within ``timeout`` (the rest are missing).
        ``BrokerUnavailable`` if the connection is lost meanwhile (its replies with it)."""
        wanted = set(correlation_ids)
        deadline = time.monotonic() + timeout
        while wanted - self._replies.keys() and time.monotonic() < deadline:
            try:
                self._conn.process_data_events(
                    time_limit=max(0.0, min(0.1, deadline - time.monotonic())))
            except CONNECTION_ERRORS as exc:
                lost = BrokerUnavailable(f"lost the connection awaiting replies: {exc!r}")
                raise lost from exc
            if on_tick is not None:
                on_tick()
        return {cid: self._replies.pop(cid) for cid in wanted if cid in self._replies}

    def call(self, queue: str, body: bytes, timeout: float,
             on_tick: Callable[[], None] | None = None) -> bytes:
        """``send`` then ``wait``; ``TimeoutError`` when no reply came within ``timeout``."""
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
