"""Connections: parameters, connect, which errors mean "gone", and the two retry policies.

pika's rule, which every other module here follows: a connection (and its channels) belongs
to the one thread that opened it. Nothing in this module keeps a connection; callers own
theirs.

``AMQP_URL`` may name several brokers, the nodes of one cluster, comma-separated:
``amqp://u:p@h1:5672/%2F,amqp://u:p@h2:5672/%2F``. Every connection (a consumer's, a
publisher's, a reconnect) tries them in a random order and takes the first that answers, so
connections spread over the nodes and a reconnect after a node is lost lands on a survivor.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

import pika
import pika.exceptions as pe
from pika.adapters.blocking_connection import BlockingConnection
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from shared.config import redact_url, split_urls
from shared.errors import BrokerUnavailable

log = logging.getLogger(__name__)

#: Errors that mean "this connection or channel is gone": drop it and reconnect. pika's
#: UnroutableError and NackError are channel errors too; publish_on translates them first.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pe.AMQPConnectionError,
    pe.AMQPChannelError,
    pe.StreamLostError,
    pe.ConnectionWrongStateError,
    pe.ChannelWrongStateError,
    ConnectionError,
    OSError,
)

#: What a consumer thread treats as "reconnect": pika's errors, and ours once translated.
LOST: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, BrokerUnavailable)

JSON = "application/json"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def broker_urls(url: str) -> list[str]:
    """The URLs that ``url`` (an AMQP_URL) lists, in the order written: one for one broker."""
    return split_urls(url)


def _parameters(url: str, name: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": name, "product": "workerpool"}
    if "heartbeat=" not in url:
        params.heartbeat = 30
    if "blocked_connection_timeout=" not in url:
        params.blocked_connection_timeout = 30
    if "socket_timeout=" not in url:
        params.socket_timeout = 5
    params.connection_attempts = 1  # retries are ours (bounded, logged), not pika's
    return params


def connection_parameters(url: str, name: str) -> list[pika.URLParameters]:
    """For each broker ``url`` lists (in the order written): URL parameters plus the
    connection name, heartbeat and blocked-connection timeout.

    pika's defaults leave ``blocked_connection_timeout`` unset, so a publisher blocked by a
    broker alarm would hang forever; we give up after 30 s and reconnect instead. The brokers
    of a list must share one user and vhost: every message carries the user as its
    ``user_id`` (``broker_user``), which the broker checks against the connection's.
    """
    params = [_parameters(u, name) for u in broker_urls(url)]
    if len({(p.credentials.username, p.virtual_host) for p in params}) > 1:
        raise ValueError("the brokers of an AMQP_URL list must share one user and vhost")
    return params


def broker_user(url: str) -> str:
    """The user a connection to ``url`` authenticates as (pika's default: guest). Every
    message we publish carries it as the AMQP ``user_id`` property, which RabbitMQ checks
    against the connection's user (a mismatch closes the channel), so a receiver can trust
    it (PROTOCOL §2 v2)."""
    return str(pika.URLParameters(broker_urls(url)[0]).credentials.username)


def connect(url: str, name: str) -> BlockingConnection:
    """A new blocking connection to the first broker of ``url`` that answers, trying them in
    a random order (pika's blocking_consume_recover_multiple_hosts.py shuffles likewise), or
    ``BrokerUnavailable`` naming each (redacted) URL and why it failed.

    We walk the list ourselves rather than hand pika all of it: pika ends its pass over the
    list at the first host name that does not resolve, without trying the rest."""
    urls = broker_urls(url)
    pairs = list(zip(urls, connection_parameters(url, name), strict=True))
    random.shuffle(pairs)
    failures: list[str] = []
    last: BaseException | None = None
    for one, params in pairs:
        try:
            return BlockingConnection(params)
        except CONNECTION_ERRORS as exc:
            if len(urls) == 1:
                raise BrokerUnavailable(
                    f"broker at {redact_url(one)} does not answer: {exc!r}") from exc
            failures.append(f"{redact_url(one)}: {exc!r}")
            last = exc
    raise BrokerUnavailable(f"none of the {len(urls)} brokers answers: {'; '.join(failures)}"
                            ) from last


def close_quietly(conn: BlockingConnection | None) -> None:
    """Close ``conn`` if it is open; a connection that dies while closing is closed too."""
    if conn is not None and conn.is_open:
        try:
            conn.close()
        except CONNECTION_ERRORS:
            pass


def retrying(max_seconds: float) -> Retrying:
    """For one operation on a short-lived connection (a publish, a declare): retry
    ``BrokerUnavailable`` with jittered exponential backoff for up to ``max_seconds``."""
    return Retrying(
        retry=retry_if_exception_type(BrokerUnavailable),
        wait=wait_exponential(multiplier=0.2, max=5) + wait_random(0, 0.2),
        stop=stop_after_delay(max_seconds),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )


def reconnecting(stop: threading.Event) -> Retrying:
    """For a long-lived consumer: retry ``BrokerUnavailable`` until ``stop`` is set. A fresh
    one per connection attempt series, so the backoff resets after a healthy session
    (pika's asynchronous_consumer_example ``_get_reconnect_delay``)."""

    def sleep(seconds: float) -> Any:
        stop.wait(seconds)  # SIGTERM (stop.set) wakes it at once

    return Retrying(
        retry=retry_if_exception_type(BrokerUnavailable),
        wait=wait_exponential(multiplier=0.5, max=10) + wait_random(0, 0.5),
        stop=lambda state: stop.is_set(),
        sleep=sleep,
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
