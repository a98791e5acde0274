"""Time as a value. Decisions take ``now`` as an argument; loops ask a Clock for it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    """Wall-clock epoch seconds (what the table stores)."""

    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def iso(epoch: float | None) -> str | None:
    """Epoch seconds to ISO 8601 UTC with a Z (``2026-11-28T10:00:00Z``); None stays None."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(int(epoch), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow_iso() -> str:
    return iso(time.time())  # type: ignore[return-value]
