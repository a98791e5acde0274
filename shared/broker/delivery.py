"""One message in hand (``Delivery``) and the rules every consumer applies to it.

The rules live here, apart from the pika consumer, so that the in-memory test broker
(tests/stubbroker.py) applies the very same ones:

* ``run_handler``: a handler that raises ``InvalidMessage`` gets its message dead-lettered;
  any other exception requeues it (a bug must not kill the consumer); a lost connection
  propagates (the consumer reconnects and the broker redelivers).
* ``settle_in_order``: a dead-letter copy first, then the optional ``rejected`` reply, then
  the ack, so that nothing is acked before both went out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from shared import topology
from shared.broker.connection import LOST
from shared.errors import InvalidMessage, Unroutable

log = logging.getLogger(__name__)

#: How a delivery ends: acked, requeued, rejected (dropped, or dead-lettered by the broker's
#: policy), or copied to workerpool.dead-letter by us and then acked.
Outcome = Literal["ack", "requeue", "reject", "dead-letter", "retry"]


class PublishFn(Protocol):
    """The publish call a consumer offers on its own connection (``publish_here``)."""

    def __call__(self, routing_key: str, body: bytes, *, exchange: str = "",
                 reply_to: str | None = None, correlation_id: str | None = None,
                 headers: dict[str, Any] | None = None, mandatory: bool = True,
                 persistent: bool = True) -> None: ...


@dataclass
class Delivery:
    """One message in hand. ``ack``/``nack``/``dead_letter`` are safe from any thread; the
    first one wins, later ones do nothing."""

    queue: str
    body: bytes
    delivery_tag: int
    redelivered: bool
    reply_to: str | None
    correlation_id: str | None
    headers: dict[str, Any]
    #: the consumer's settle function: (delivery, outcome, reason)
    _settle: Callable[[Delivery, Outcome, str | None], None] = field(repr=False)
    #: which connection of the consumer delivered it (acks for an older one are dropped)
    _generation: int = field(default=0, repr=False)
    _settled: bool = field(default=False, repr=False)
    _reply: bytes | None = field(default=None, repr=False)
    #: the sender's broker user (the AMQP user_id property, which RabbitMQ validates), or
    #: None when the sender did not set it
    user_id: str | None = None

    def ack(self) -> None:
        self._settle(self, "ack", None)

    def nack(self, requeue: bool = True) -> None:
        self._settle(self, "requeue" if requeue else "reject", None)

    @property
    def attempt(self) -> int:
        """How many times this message was sent back to wait out a transient failure."""
        value = self.headers.get(topology.ATTEMPT_HEADER)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def retry_later(self, reason: str) -> None:
        """A transient failure (AWS unreachable): send a copy back to wait in a delay queue
        (shared.topology.retry_tier) and ack this one, without spending the queue's delivery
        limit; after the last tier, dead-letter it with ``reason``."""
        self._settle(self, "retry", reason)

    def dead_letter(self, reason: str, reply: bytes | None = None) -> None:
        """Copy to workerpool.dead-letter with ``x-workerpool-reason``; then, if given and
        the message has ``reply_to``, publish ``reply`` (e.g. a ``rejected`` reply) with its
        correlation_id; then ack. In that order: once the client has its answer, the
        dead-letter entry is already there, and nothing is acked before both went out."""
        self._reply = reply
        self._settle(self, "dead-letter", reason)


Handler = Callable[[Delivery], None]


def dead_letter_headers(d: Delivery, reason: str | None) -> dict[str, Any]:
    """The message's own headers plus why, where from and who sent it (the copy itself is
    published by us: its own user_id is ours)."""
    sender = {topology.SENDER_HEADER: d.user_id} if d.user_id else {}
    return {**d.headers, topology.REASON_HEADER: (reason or "unknown")[:1000],
            topology.SOURCE_HEADER: d.queue, **sender}


def from_senders(senders: frozenset[str], handler: Handler, *,
                 on_refused: Callable[[Delivery], None] | None = None) -> Handler:
    """The handler of an internal queue (PROTOCOL §2 v2): a message whose sender (its
    RabbitMQ-validated user_id) is not one of ``senders`` is dead-lettered with reason
    ``untrusted sender`` and changes nothing; the others go to ``handler``."""

    def checked(d: Delivery) -> None:
        if d.user_id not in senders:
            log.warning("message from an untrusted sender refused",
                        extra={"queue": d.queue, "sender": d.user_id})
            if on_refused is not None:
                on_refused(d)
            d.dead_letter(topology.UNTRUSTED_SENDER)
            return
        handler(d)

    return checked


def _send_back(d: Delivery, reason: str | None, publish: PublishFn
               ) -> tuple[Outcome, str | None]:
    """The copy to the delay tier, then "ack"; or "dead-letter" when the tiers are spent."""
    attempt = d.attempt + 1
    tier = topology.retry_tier(attempt)
    if tier is None:
        return "dead-letter", f"gave up after {d.attempt} tries: {reason}"
    sender = {topology.SENDER_HEADER: d.user_id} if d.user_id else {}
    publish(d.queue, d.body, exchange=tier, correlation_id=d.correlation_id,
            reply_to=d.reply_to,
            headers={**d.headers, **sender, topology.ATTEMPT_HEADER: attempt})
    log.info("message sent back to be tried again", extra={
        "queue": d.queue, "attempt": attempt, "delay": tier, "reason": reason})
    return "ack", reason


def settle_in_order(d: Delivery, how: Outcome, reason: str | None, *, publish: PublishFn,
                    ack: Callable[[int], None], nack: Callable[[int, bool], None],
                    dead_letter_exchange: str = "") -> None:
    """Settle ``d`` with the consumer's ``publish``/``ack``/``nack`` (by delivery tag),
    dead-letter copy and reply first. A failing dead-letter publish raises before the
    ack, so the message stays unacked (redelivered) rather than lost."""
    if how == "retry":
        how, reason = _send_back(d, reason, publish)
    if how == "dead-letter":
        publish(topology.DEAD_LETTER, d.body, headers=dead_letter_headers(d, reason),
                correlation_id=d.correlation_id, reply_to=d.reply_to,
                exchange=dead_letter_exchange)
        log.warning("message dead-lettered", extra={"queue": d.queue, "reason": reason})
        if d._reply is not None and d.reply_to:
            try:
                publish(d.reply_to, d._reply, correlation_id=d.correlation_id)
            except Unroutable:
                log.info("reply queue gone; rejected reply dropped", extra={"queue": d.queue})
        how = "ack"
    d._settled = True
    if how == "ack":
        ack(d.delivery_tag)
    else:
        nack(d.delivery_tag, how == "requeue")


def run_handler(handler: Handler, d: Delivery) -> None:
    """Call ``handler``; settle what it left unsettled by what it raised (see above)."""
    try:
        handler(d)
    except InvalidMessage as exc:
        if not d._settled:
            d.dead_letter(exc.reason)
    except LOST:
        raise
    except Exception as exc:  # a bug in a handler must not kill the consumer
        log.exception("handler failed; message requeued",
                      extra={"queue": d.queue, "error": repr(exc)})
        if not d._settled:
            d.nack(requeue=True)
