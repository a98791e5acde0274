"""Which instances are in our Auto Scaling Group: a registration is believed only for one
of them (PROTOCOL §4). A cached DescribeAutoScalingGroups, refreshed on a miss at most once
a second, so a fresh instance is never refused because of an old cache."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from shared.asg import Asg
from shared.errors import AwsError, AwsUnavailable
from shared.state import AsgState

log = logging.getLogger(__name__)

#: The cache is refreshed at most this often (DescribeAutoScalingGroups).
REFRESH_SECONDS = 1.0

Lookup = Literal["known", "unknown", "refresh"]


def lookup(instance_id: str, live_ids: frozenset[str], refreshed_at: float | None,
           seen_at: float) -> Lookup:
    """Is the instance in the ASG? ``refresh`` when the cache may predate the instance: it
    misses and was last refreshed before the message arrived."""
    if instance_id in live_ids:
        return "known"
    if refreshed_at is not None and refreshed_at >= seen_at:
        return "unknown"
    return "refresh"


def refresh_delay(refreshed_at: float | None, now: float) -> float:
    """Seconds to wait before the next DescribeAutoScalingGroups (at most one a second)."""
    if refreshed_at is None:
        return 0.0
    return max(0.0, refreshed_at + REFRESH_SECONDS - now)


class AsgMembers:
    """The ASG's live instances, cached; thread-safe."""

    def __init__(self, asg: Asg, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.asg = asg
        self._mono = monotonic
        self._ids: frozenset[str] = frozenset()
        self._refreshed_at: float | None = None
        self._lock = threading.Lock()
        self.state: AsgState | None = None  # the last AsgState, for the wording of reasons

    def contains(self, instance_id: str, seen_at: float) -> bool:
        """``seen_at``: monotonic time the message arrived (a refresh after it is enough)."""
        with self._lock:  # one DescribeAutoScalingGroups at a time; the others reuse it
            verdict = lookup(instance_id, self._ids, self._refreshed_at, seen_at)
            if verdict != "refresh":
                return verdict == "known"
            delay = refresh_delay(self._refreshed_at, self._mono())
            if delay:
                time.sleep(delay)
            self._refresh()
            return instance_id in self._ids

    def recent_state(self, max_age: float = 10.0) -> AsgState | None:
        """The ASG as of at most ``max_age`` seconds ago, for the numbers in an
        ``unavailable`` reason (one describe per ``max_age`` at most; stale if AWS fails)."""
        with self._lock:
            fresh = (self._refreshed_at is not None
                     and self._mono() - self._refreshed_at <= max_age)
            if self.state is None or not fresh:
                try:
                    self._refresh()
                except (AwsError, AwsUnavailable) as exc:
                    log.info("ASG not described for a reason's wording",
                             extra={"error": str(exc)})
            return self.state

    def _refresh(self) -> None:
        started = self._mono()
        self.state = self.asg.describe()
        self._ids, self._refreshed_at = self.state.live_ids, started
