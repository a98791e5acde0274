"""Which replica acts, and how events reach it.

One thread (the caller of ``Service.run``) does everything that decides or calls AWS:
refresh the DynamoDB lock (shared.leader), run the Engine, publish capacity status. Events
arrive on a second thread, the consumer of ``workerpool.scaling``, which exists only while
this replica holds the lock: it is started when we become active and stopped when we stop
being active. A standby therefore takes no events at all (they stay in the queue for the
active one), and the active one gets every event. The consumer only decodes, hands the
event to the main thread through a queue, and acks: an event is a hint, and a lost one
costs at most RECONCILE_INTERVAL, because the Engine reconciles on its own schedule.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from scaler.loop import Engine, guarded
from scaler.policy import LastScale
from shared import topology
from shared.broker import Consumer, Delivery, Publisher, connect
from shared.clock import Clock, SystemClock
from shared.config import Settings
from shared.errors import BrokerUnavailable
from shared.leader import Leadership
from shared.messages import CapacityStatus, ScalingEvent, decode

log = logging.getLogger("workerpool.scaler")

TICK_SECONDS = 0.05


class EventFeed:
    """The consumer of workerpool.scaling, on its own thread, for as long as we are active."""

    def __init__(self, url: str, name: str) -> None:
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.consumer = Consumer(url, name, prefetch=1000, tick=TICK_SECONDS)
        self.consumer.subscribe(topology.SCALING, self._on_event)
        self._thread = threading.Thread(target=self.consumer.run, name="scaling-events",
                                        daemon=True)
        self._thread.start()

    def _on_event(self, delivery: Delivery) -> None:
        event = decode(ScalingEvent, delivery.body)  # InvalidMessage → dead-letter
        self.inbox.put(event)
        delivery.ack()

    def drain(self) -> list[Any]:
        out = []
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out

    def stop(self) -> None:
        self.consumer.stop()
        self._thread.join(6)


class Service:
    def __init__(self, *, settings: Settings, engine: Engine, leadership: Leadership,
                 name: str, stopping: Callable[[], bool], clock: Clock | None = None
                 ) -> None:
        self.s, self.engine, self.leadership, self.name = settings, engine, leadership, name
        self.clock = clock or SystemClock()
        self._stopping = stopping
        self.feed: EventFeed | None = None
        self.publisher = Publisher(settings.amqp_url, name, give_up_after=2.0)
        self._probe: tuple[float, bool, str] = (0.0, False, "not probed yet")
        engine.remember = self._remember

    # --- the cooldown across replicas ------------------------------------------------------
    def _remember(self, last: LastScale) -> None:
        self.leadership.note(lastScaleAt=last.at, lastScaleDesired=last.desired,
                             lastScaleMissing=last.missing)

    def _recalled(self) -> LastScale | None:
        n = self.leadership.notes
        if "lastScaleAt" not in n:
            return None
        return LastScale(at=float(n["lastScaleAt"]), desired=int(n["lastScaleDesired"]),
                         missing=int(n.get("lastScaleMissing", 0)))

    # --- capacity status to every dispatcher --------------------------------------------
    def publish_capacity(self, status: CapacityStatus) -> None:
        """Fanout to workerpool.capacity (no dispatcher bound yet is fine: not mandatory)."""
        self.publisher.publish("", status.to_json(), exchange=topology.CAPACITY_EXCHANGE,
                               mandatory=False)

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        next_lock = 0.0
        try:
            while not self._stopping():
                now = self.clock.now()
                if now >= next_lock:
                    self._lead(now)
                    next_lock = now + self.s.lock_ttl_seconds / 3
                if self.feed is not None:
                    for event in self.feed.drain():
                        guarded(lambda e=event: self.engine.handle(e, self.clock.now()),
                                "event", self.engine.m)
                    guarded(lambda: self.engine.tick(self.clock.now()), "reconcile",
                            self.engine.m)
                time.sleep(TICK_SECONDS)
        finally:
            self._stand_down()
            self.leadership.resign()
            self.publisher.close()

    def _lead(self, now: float) -> None:
        active = self.leadership.refresh(now)
        if active and self.feed is None:
            self.feed = EventFeed(self.s.amqp_url, self.name)
            self.engine.resume(self._recalled())  # the previous scaler's cooldown still runs
            self.engine.due_at = now  # reconcile at once: the previous scaler may be long gone
        elif not active:
            self._stand_down()
        self.engine.status["active"] = active
        self.engine.m.active.set(1 if active else 0)

    def _stand_down(self) -> None:
        if self.feed is not None:
            feed, self.feed = self.feed, None
            feed.stop()

    # --- health ---------------------------------------------------------------------------
    def broker_check(self) -> tuple[bool, Any]:
        """Connected while active; a standby probes (at most every 2 s)."""
        feed = self.feed
        if feed is not None:
            up = feed.consumer.connected.is_set()
            return up, "consuming workerpool.scaling" if up else "reconnecting"
        at, ok, detail = self._probe
        if time.monotonic() - at > 2:
            try:
                connect(self.s.amqp_url, self.name).close()
                ok, detail = True, "reachable (standby)"
            except BrokerUnavailable as exc:
                ok, detail = False, str(exc)
            self._probe = (time.monotonic(), ok, detail)
        return ok, detail
