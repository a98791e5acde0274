"""The dispatcher's /health checks: connected to the broker, DynamoDB answering."""

from __future__ import annotations

import time

from shared.broker import ConsumerLike
from shared.store import Store

#: A health probe pings DynamoDB at most this often (the last answer is kept meanwhile).
AWS_CHECK_SECONDS = 5.0


class HealthChecks:
    def __init__(self, consumer: ConsumerLike, store: Store) -> None:
        self.consumer = consumer
        self.store = store
        self._aws_checked: tuple[float, bool, str] = (0.0, False, "not checked yet")

    def broker(self) -> tuple[bool, str]:
        ok = self.consumer.connected.is_set()
        return ok, "connected" if ok else "not connected to the broker"

    def aws(self) -> tuple[bool, str]:
        at, ok, detail = self._aws_checked
        if time.monotonic() - at < AWS_CHECK_SECONDS:
            return ok, detail
        try:
            self.store.ping()
            result = (time.monotonic(), True, f"table {self.store.table.name} reachable")
        except Exception as exc:
            result = (time.monotonic(), False, f"DynamoDB: {exc}")
        self._aws_checked = result
        return result[1], result[2]
