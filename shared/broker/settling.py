"""Settling deliveries from any thread (``Settling``, the Consumer's), acks in batches.


pika's BlockingConnection is not thread-safe: a worker thread's ack must run on the
consumer's thread (``add_callback_threadsafe``). One callback per ack, each flushing the
socket (``BlockingChannel.basic_ack``), cost more CPU than the heartbeat write it acked
(bench/heartbeats.py). So acks queue here, one callback drains all that queued meanwhile,
each ack is a frame put in the output buffer, and the consumer loop's next turn writes them
in one go. A connection lost meanwhile drops them: unacked deliveries are redelivered,
never acked twice (their generation no longer matches).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from shared.broker.connection import CONNECTION_ERRORS, LOST
from shared.broker.delivery import Delivery, Outcome, settle_in_order

log = logging.getLogger(__name__)


class AckBatch:
    def __init__(self) -> None:
        self._pending: list[Delivery] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def add(self, d: Delivery) -> bool:
        """Queue an ack; True if the caller must schedule a drain (none is scheduled)."""
        with self._lock:
            self._pending.append(d)
            if self._scheduled:
                return False
            self._scheduled = True
            return True

    def drain(self, channel: Any, generation: int) -> int:
        """Ack everything queued on ``channel`` (the consumer's thread only); returns how
        many were acked. Frames are buffered, not flushed: the loop's next turn sends them."""
        with self._lock:
            batch, self._pending, self._scheduled = self._pending, [], False
        acked = 0
        for d in batch:
            if d._settled:
                continue
            d._settled = True
            if channel is None or not channel.is_open or d._generation != generation:
                continue  # its channel is gone: the broker redelivers it
            channel._impl.basic_ack(delivery_tag=d.delivery_tag)  # no flush per ack
            acked += 1
        return acked

    def reset(self) -> None:
        """A new connection: what was queued for the old one is moot."""
        with self._lock:
            self._pending, self._scheduled = [], False

    @staticmethod
    def schedule(conn: Any, drain: Callable[[], None],
                 errors: tuple[type[BaseException], ...]) -> None:
        try:
            conn.add_callback_threadsafe(drain)
        except errors:
            pass  # closed meanwhile: redelivered, never double-acked


class Settling:
    """The Consumer's settling of deliveries (any thread may settle one). Expects the
    Consumer's ``_thread``, ``_conn``, ``_channel``, ``_generation``, ``_acks``,
    ``_dead_letter_exchange`` and ``publish_here``."""

    _thread: int | None
    _conn: Any
    _channel: Any
    _generation: int
    _acks: AckBatch
    _dead_letter_exchange: str
    publish_here: Callable[..., None]

    def _settle(self, d: Delivery, how: Outcome, reason: str | None) -> None:
        if threading.get_ident() == self._thread:
            self._settle_now(d, how, reason)
            return
        conn = self._conn
        if conn is None:
            return  # the channel is gone; the broker will redeliver
        if how == "ack":  # the bulk: batched (acks.py)
            if self._acks.add(d):
                AckBatch.schedule(conn, self._drain_acks, CONNECTION_ERRORS)
            return
        settle = functools.partial(self._settle_now, d, how, reason)

        def guarded() -> None:
            try:
                settle()
            except LOST:
                raise  # out of process_data_events: run() reconnects
            except Exception:  # e.g. the dead-letter queue was deleted: log, keep consuming
                log.exception("settling a delivery failed", extra={"queue": d.queue})

        try:
            conn.add_callback_threadsafe(guarded)
        except CONNECTION_ERRORS:
            pass  # closed meanwhile: redelivered, never double-acked

    def _drain_acks(self) -> None:
        self._acks.drain(self._channel, self._generation)

    def _settle_now(self, d: Delivery, how: Outcome, reason: str | None) -> None:
        if d._settled:
            return
        channel = self._channel
        if channel is None or not channel.is_open or d._generation != self._generation:
            d._settled = True  # delivered on a channel that is gone: the broker redelivers it
            return
        settle_in_order(
            d, how, reason, publish=self.publish_here,
            dead_letter_exchange=self._dead_letter_exchange,
            ack=lambda tag: channel.basic_ack(tag),
            nack=lambda tag, requeue: channel.basic_nack(tag, requeue=requeue),
        )

