"""The agent's judgement, as pure functions: what to publish next, and whether it is healthy.

The loop (agent/loop.py) keeps a ``BeatState``, asks ``next_step`` what to do at ``now``
(monotonic seconds), does it, and folds the outcome back in with ``after_register``,
``after_heartbeat`` or ``after_failure``. Nothing here does I/O or reads a clock.

Rules:
* register first; the first heartbeat goes right after a confirmed registration;
* a failed publish means the broker may have lost us (the dispatcher may have declared us
  dead meanwhile): once publishing works again, register before the next heartbeat;
* register again every ``REREGISTER_EVERY`` heartbeats anyway: it is idempotent and heals a
  registration lost some other way (e.g. the dispatcher refused it before the ASG knew us);
* after a failure, back off (jittered, capped) so a fleet does not stampede a broker that
  has just come back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

REREGISTER_EVERY = 20


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


@dataclass(frozen=True)
class Timing:
    """Every duration the agent uses, derived from HEARTBEAT_INTERVAL."""

    interval: float

    @property
    def give_up_after(self) -> float:
        """How long one publish may retry inside the Publisher: not at all. One attempt
        (with a reconnect when the connection is gone), so that the loop learns of every
        failure, registers again after it, and retries with its own jittered backoff
        while SIGTERM stays noticed."""
        return 0.0

    @property
    def probe_timeout(self) -> float:
        """code-server's /healthz must answer within this to count as healthy."""
        return _clamp(self.interval / 2, 0.5, 2.0)

    @property
    def max_backoff(self) -> float:
        return _clamp(self.interval, 1.0, 15.0)

    @property
    def fresh_for(self) -> float:
        """A heartbeat confirmed longer ago than this no longer makes the agent healthy."""
        return max(2 * self.interval, self.interval + 1.0)


@dataclass(frozen=True)
class BeatState:
    registered: bool = False  # a registration confirmed since the last failed publish
    beats_since_register: int = 0
    next_beat_at: float = 0.0  # 0: due at once (the first heartbeat follows registration)
    retry_at: float = 0.0
    failures: int = 0  # consecutive failed publishes
    last_confirmed: float | None = None  # when the last heartbeat was confirmed
    registrations: int = 0  # confirmed registrations so far


Action = Literal["register", "heartbeat", "wait"]


@dataclass(frozen=True)
class Step:
    action: Action
    until: float = 0.0  # for "wait": sleep until then


def next_step(state: BeatState, now: float) -> Step:
    """What to do at ``now``."""
    if now < state.retry_at:
        return Step("wait", state.retry_at)
    if not state.registered:
        return Step("register")
    if now < state.next_beat_at:
        return Step("wait", state.next_beat_at)
    if state.beats_since_register >= REREGISTER_EVERY:
        return Step("register")
    return Step("heartbeat")


def after_register(state: BeatState, now: float) -> BeatState:
    # next_beat_at is left alone: it is already due after a start or an outage, so the
    # heartbeat follows at once; a periodic re-registration adds no extra heartbeat
    return replace(state, registered=True, beats_since_register=0, failures=0, retry_at=0.0,
                   registrations=state.registrations + 1)


def after_heartbeat(state: BeatState, now: float, timing: Timing) -> BeatState:
    # keep the cadence anchored to the schedule (no drift), unless we fell behind
    nxt = state.next_beat_at + timing.interval
    if nxt <= now:
        nxt = now + timing.interval
    return replace(state, beats_since_register=state.beats_since_register + 1, failures=0,
                   retry_at=0.0, next_beat_at=nxt, last_confirmed=now)


def backoff(failures: int, timing: Timing, jitter: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures; ``jitter`` in [0, 1)."""
    base = min(timing.max_backoff, 0.25 * 2 ** max(0, failures - 1))
    return base * (0.5 + jitter / 2)


def after_failure(state: BeatState, now: float, timing: Timing, jitter: float) -> BeatState:
    failures = state.failures + 1
    return replace(state, registered=False, failures=failures,
                   retry_at=now + backoff(failures, timing, jitter))


def heartbeat_verdict(state: BeatState | None, now: float, timing: Timing,
                      waiting_for: str | None = None) -> tuple[bool, str]:
    """The ``heartbeat`` check of the agent's /health: (ok, reason in words)."""
    if state is None or state.registrations == 0:
        return False, waiting_for or "not registered yet"
    if state.last_confirmed is None:
        return False, "no heartbeat confirmed by the broker yet"
    age = now - state.last_confirmed
    if age > timing.fresh_for:
        why = f"last heartbeat confirmed {age:.1f}s ago (limit {timing.fresh_for:g}s)"
        if state.failures:
            why += f"; {state.failures} publish(es) failed since: broker unreachable?"
        return False, why
    return True, f"last heartbeat confirmed {age:.1f}s ago"
