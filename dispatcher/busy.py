"""Workers this dispatcher is leasing now or leased a moment ago (thread-safe).

Our own claim threads skip them: without this, 8 threads reading the same index page race
each other for the same few workers, and every lost race is a wasted transaction. The
"moment ago" part covers the index lag of DynamoDB (a GSI is eventually consistent: a
worker leased just now may still be listed as free for a fraction of a second).
"""

from __future__ import annotations

import threading

from dispatcher.assign import RECENTLY_TRIED_SECONDS


class Busy:
    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def snapshot(self, now: float) -> frozenset[str]:
        with self._lock:
            for iid in [i for i, t in self._until.items() if t <= now]:
                del self._until[iid]
            return frozenset(self._until)

    def take(self, instance_id: str, now: float) -> bool:
        """Mark it ours for the attempt; False if another thread of ours has it."""
        with self._lock:
            if self._until.get(instance_id, 0.0) > now:
                return False
            self._until[instance_id] = float("inf")
            return True

    def done(self, instance_id: str, now: float, taken: bool) -> None:
        """After the attempt: skipped a little longer if the worker is no longer free."""
        with self._lock:
            if taken:
                self._until[instance_id] = now + RECENTLY_TRIED_SECONDS
            else:
                self._until.pop(instance_id, None)
