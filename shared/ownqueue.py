"""A Consumer that also owns one named, exclusive queue (declared anew on every connection).

Two private queues use it: an agent's command queue ``workerpool.agent.<instance-id>`` and a
dispatcher's confirm queue ``workerpool.confirm.<name>`` (per-lease passwords,
docs/dispatcher.md). An exclusive queue must be declared on the connection that consumes
it, so this subclass of ``shared.broker.Consumer`` declares it in an ``on_connect`` hook, on
the consumer's own channel (it lives beside broker.py and uses its Consumer's internals).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from typing import Any

from shared.broker import CONNECTION_ERRORS, Consumer, Handler

log = logging.getLogger("workerpool.broker")

#: After a cut, the broker may still hold our previous connection (until its heartbeat
#: times out) and with it the exclusive queue: 405 RESOURCE_LOCKED. Pause before the
#: reconnect instead of spinning.
LOCKED_PAUSE = 1.0


class OwnQueueConsumer(Consumer):
    """``Consumer`` plus ``queue`` (exclusive, auto-delete), consumed with ``handler``.

    ``bind_exchange``: also bind the queue to that exchange with routing key = its name
    (``amq.topic``, so that publishers confined to a topic can reach it). ``own_ready`` is
    set once the queue is declared and consumed on the current connection.
    """

    def __init__(self, url: str, name: str, *, queue: str, handler: Handler,
                 bind_exchange: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, name, **kwargs)
        self.queue = queue
        self._own_handler = handler
        self._bind_exchange = bind_exchange
        self.own_ready = threading.Event()
        self.on_connect(self._declare_own)  # first hook: before any "ready" hook

    def _declare_own(self) -> None:
        self.own_ready.clear()
        channel = self._channel
        assert channel is not None
        try:
            channel.queue_declare(self.queue, exclusive=True, auto_delete=True)
            if self._bind_exchange:
                channel.queue_bind(self.queue, self._bind_exchange, routing_key=self.queue)
            self._tags[self.queue] = channel.basic_consume(
                self.queue, functools.partial(self._on_message, self._own_handler))
        except CONNECTION_ERRORS as exc:
            log.warning("could not declare our own queue; reconnecting",
                        extra={"queue": self.queue, "error": repr(exc)[:300]})
            self._stop.wait(LOCKED_PAUSE)
            raise
        self.own_ready.set()


# --- the two kinds of private queue -------------------------------------------------------
#: An agent's command queue: ``workerpool.agent.<instance-id>`` (the agents' broker user may
#: configure and read only names of this shape, deploy/rabbitmq/definitions.json).
COMMAND_QUEUE_PREFIX = "workerpool.agent."
#: A dispatcher's confirm queue: ``workerpool.confirm.<its connection name, made safe>``.
CONFIRM_QUEUE_PREFIX = "workerpool.confirm."


def command_queue(instance_id: str) -> str:
    return COMMAND_QUEUE_PREFIX + instance_id


def confirm_queue(connection_name: str) -> str:
    """``dispatcher@host.example:42`` → ``workerpool.confirm.dispatcher-host-example-42``:
    one word of a topic routing key (no dots), unique per process."""
    return CONFIRM_QUEUE_PREFIX + re.sub(r"[^A-Za-z0-9_-]", "-", connection_name)[:200]
