"""The broker layer: the only package that imports pika. One module per role:

* ``connection``: parameters (connection name, heartbeat, blocked-connection timeout),
  ``connect``, the errors that mean "gone", the retry and reconnect backoff.
* ``publisher``: ``publish_on``, the one publish path and its one error translation
  (``Unroutable``, ``BrokerUnavailable``); ``Publisher`` (confirms, mandatory, persistent,
  one per thread) and ``Broker`` (a thread-local Publisher for each thread).
* ``delivery``: ``Delivery`` and the rules for settling one (dead-letter order, what a
  handler's exception means).
* ``consumer`` (+ ``subscriptions``): ``Consumer``: manual acks, dead-lettering,
  thread-safe settling, reconnects, own exclusive queues (``subscribe_own``).
* ``rpc``: ``RpcClient`` over direct reply-to, with a timeout.
* ``admin``: ``declare_topology``, ``purge``, ``queue_depths``, ``get_one``.
* ``interface``: the Protocols the processes depend on (``tests/stubbroker.py`` implements
  them in memory).

Pika's threading rule holds throughout: a connection belongs to one thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.broker.admin import declare_topology, get_one, purge, queue_depths
from shared.broker.connection import (
    CONNECTION_ERRORS,
    DIRECT_REPLY_TO,
    JSON,
    connect,
    connection_parameters,
)
from shared.broker.consumer import Consumer
from shared.broker.delivery import Delivery, Handler, from_senders
from shared.broker.interface import BrokerLike, ConsumerLike, DeliveryLike, PublisherLike
from shared.broker.publisher import Broker, Publisher, properties, publish_on
from shared.broker.rpc import RpcClient
from shared.broker.subscriptions import LOCKED_PAUSE

__all__ = [
    "CONNECTION_ERRORS",
    "DIRECT_REPLY_TO",
    "JSON",
    "LOCKED_PAUSE",
    "Broker",
    "BrokerLike",
    "Consumer",
    "ConsumerLike",
    "Delivery",
    "from_senders",
    "DeliveryLike",
    "Handler",
    "Publisher",
    "PublisherLike",
    "RpcClient",
    "connect",
    "connection_parameters",
    "declare_topology",
    "get_one",
    "properties",
    "publish_on",
    "purge",
    "queue_depths",
]

if TYPE_CHECKING:  # mypy proves that the RabbitMQ classes implement the Protocols
    _publisher: PublisherLike = Publisher("", "")
    _broker: BrokerLike = Broker("", "")
    _consumer: ConsumerLike = Consumer("", "")
    _delivery: DeliveryLike = Delivery("", b"", 0, False, None, None, {}, lambda *a: None)
