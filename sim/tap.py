"""A recorder of ``workerpool.agents``: what the agents really sent, for tests and demos.

It consumes the queue like a dispatcher would (so never run it next to real dispatchers on
the same vhost): every message is decoded as JSON, kept with its arrival time, and acked.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from shared import topology
from shared.broker import Consumer, Delivery


class AgentsTap:
    def __init__(self, amqp_url: str) -> None:
        self.amqp_url = amqp_url
        self.messages: list[dict[str, Any]] = []  # + "_at" (monotonic), "_raw" (bytes)
        self._lock = threading.Lock()
        self._consumer = Consumer(amqp_url, "agent-tap", prefetch=100, tick=0.05)
        self._consumer.subscribe(topology.AGENTS, self._on_message)
        self._thread = threading.Thread(target=self._consumer.run, daemon=True, name="tap")

    def _on_message(self, d: Delivery) -> None:
        msg = json.loads(d.body)
        msg["_at"] = time.monotonic()
        msg["_raw"] = d.body
        with self._lock:
            self.messages.append(msg)
        d.ack()

    def start(self, timeout: float = 10) -> AgentsTap:
        self._thread.start()
        if not self._consumer.connected.wait(timeout):
            raise RuntimeError("the tap could not connect to the broker")
        return self

    def stop(self) -> None:
        self._consumer.stop()
        self._thread.join(5)

    def of(self, instance_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        """Messages from one instance (optionally of one ``type``), in arrival order."""
        with self._lock:
            return [m for m in self.messages if m.get("instance_id") == instance_id
                    and (kind is None or m.get("type") == kind)]

    def __enter__(self) -> AgentsTap:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
