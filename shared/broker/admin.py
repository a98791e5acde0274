"""Administration on short-lived connections: declare the topology, purge, look at queues.

For processes at start-up (``Broker.declare``), operators (``workerpool`` CLI) and tests.
Each function opens its own connection and closes it before returning.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pika.exceptions as pe
from pika.adapters.blocking_connection import BlockingChannel

from shared import topology
from shared.broker.connection import connect, retrying


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


def declare(url: str, name: str, *, give_up_after: float = 30.0) -> None:
    """Declare the topology on a short-lived connection, retrying ``BrokerUnavailable``."""
    for attempt in retrying(give_up_after):
        with attempt:
            conn = connect(url, name)
            try:
                declare_topology(conn.channel())
            finally:
                conn.close()


def queue_depths(url: str, name: str, queues: Iterable[str]) -> dict[str, int | None]:
    """Ready-message counts by passive declare (None where a queue does not exist)."""
    conn = connect(url, name)
    out: dict[str, int | None] = {}
    try:
        for q in queues:
            channel = conn.channel()  # a 404 closes the channel: one per queue
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
