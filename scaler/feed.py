"""Dispatcher events (``workerpool.scaling``) for the active scaler only.

The consumer runs on its own thread and exists only while this replica is active: it is
started when it becomes active and stopped when it stops being active. A standby therefore
takes no events at all (they stay in the queue for the active one). The consumer only
decodes, hands the event to the loop's thread through a queue, and acks: an event is a hint,
and a lost one costs at most RECONCILE_INTERVAL, since the scaler reconciles on its own.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from shared import topology
from shared.broker import Consumer, ConsumerLike, Delivery, from_senders
from shared.messages import LeasedEvent, ScalingEvent, ShortageEvent, decode

#: How often the feed's consumer looks at its connection.
TICK_SECONDS = 0.05


def scaling_consumer(url: str, name: str) -> Consumer:
    """The feed's own connection: events are small and many, a burst is taken at once."""
    return Consumer(url, name, prefetch=1000, tick=TICK_SECONDS)


class EventFeed:
    """The consumer of workerpool.scaling, on its own thread, for as long as we are active."""

    def __init__(self, consumer: ConsumerLike, *, senders: frozenset[str],
                 on_refused: Callable[[Delivery], None] | None = None) -> None:
        self.inbox: queue.SimpleQueue[ShortageEvent | LeasedEvent] = queue.SimpleQueue()
        self.consumer = consumer
        # an internal queue: only the dispatchers' (SERVICE_USERS) events act; a forged
        # shortage must not push the ASG to MaxSize
        self.consumer.subscribe(topology.SCALING,
                                from_senders(senders, self._on_event, on_refused=on_refused))
        self._thread = threading.Thread(target=self.consumer.run, name="scaling-events",
                                        daemon=True)
        self._thread.start()

    def _on_event(self, delivery: Delivery) -> None:
        event = decode(ScalingEvent, delivery.body)  # InvalidMessage → dead-letter
        self.inbox.put(event)
        delivery.ack()

    @property
    def connected(self) -> bool:
        return self.consumer.connected.is_set()

    def drain(self) -> list[ShortageEvent | LeasedEvent]:
        out = []
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out

    def stop(self) -> None:
        self.consumer.stop()
        self._thread.join(6)
