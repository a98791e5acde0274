"""When a lease ends, and what its user is told: pure functions of a ``LeaseClock``, ``now``
and the settings (no I/O, no clock). ``reaper.rules.plan`` asks ``lease_actions`` for each
lease it read; ``reaper.actions`` applies the answer.

A lease ends at the earlier of its expiry and, with IDLE_SECONDS, its idle end: the last
sign of its user (code-server activity, the lease's start, a renew) + IDLE_SECONDS. An idle
end that has passed is reclaimed like an expired lease (``ExpireIdle``). WARN_BEFORE_SECONDS
before the end its user is warned (``lease_ending``), once per end: the item remembers the
key of the last notice (``ending:<reason>:<end>``), so an end that moves makes a new key. An
end announced and then moved later (a renew, new activity) is announced as
``lease_extended`` (key ``extended:…``); coming close again, it is warned about again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.config import Settings
from shared.messages.events import (
    EndReason,
    LeaseEnded,
    LeaseEnding,
    LeaseExtended,
    at,
)
from shared.state import LeaseClock, Worker

NoticeKind = Literal["lease_ending", "lease_extended"]
_KEY_KIND = {"lease_ending": "ending", "lease_extended": "extended"}


@dataclass(frozen=True)
class End:
    at: float
    reason: EndReason


@dataclass(frozen=True)
class ExpireIdle:
    """leased → draining for idleness, only while the lease is as read (a renew or new
    activity wins), then ``lease_ended``."""

    clock: LeaseClock
    end: End

    @property
    def worker(self) -> Worker:
        return self.clock.worker


@dataclass(frozen=True)
class Notify:
    """Remember ``key`` on the lease (conditional), then tell its user."""

    clock: LeaseClock
    kind: NoticeKind
    end: End
    previous_at: float | None = None  # lease_extended: the end announced before

    @property
    def worker(self) -> Worker:
        return self.clock.worker

    @property
    def key(self) -> str:
        return notice_key(self.kind, self.end)


def notice_key(kind: NoticeKind, end: End) -> str:
    return f"{_KEY_KIND[kind]}:{end.reason}:{int(end.at)}"


def parse_notice(key: str | None) -> tuple[str, str, int] | None:
    """``ending:idle:1764324000`` → ("ending", "idle", 1764324000); None if not a key."""
    parts = (key or "").split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


def lease_end(c: LeaseClock, idle_seconds: float) -> End:
    """The earlier of the lease's expiry and (IDLE_SECONDS > 0) its idle end."""
    end = End(c.worker.lease_expiry, "expiry")
    since = c.idle_since
    if idle_seconds > 0 and since is not None and since + idle_seconds < end.at:
        return End(since + idle_seconds, "idle")
    return end


def lease_actions(c: LeaseClock, now: float, settings: Settings
                  ) -> list[ExpireIdle | Notify]:
    """What to do about one lease now: reclaim it for idleness, warn, say it moved, or
    nothing. An expiry that has passed is rule 1's (the expired-lease read), not ours."""
    w = c.worker
    if w.status != "leased" or not 0 < now < w.lease_expiry or not w.user_id:
        return []
    end = lease_end(c, settings.idle_seconds)
    if end.at <= now:
        return [ExpireIdle(c, end)] if end.reason == "idle" else []
    warn = settings.warn_before_seconds
    if warn <= 0:
        return []
    if now >= end.at - warn:
        return [] if c.notice == notice_key("lease_ending", end) else [
            Notify(c, "lease_ending", end)]
    last = parse_notice(c.notice)
    if last is not None and last[0] == "ending" and int(end.at) > last[2]:
        return [Notify(c, "lease_extended", end, previous_at=float(last[2]))]
    return []


def notice_event(n: Notify, now: float) -> LeaseEnding | LeaseExtended:
    """The event a Notify sends (to workerpool.events and the worker's agent)."""
    w = n.worker
    assert w.user_id is not None
    if n.kind == "lease_ending":
        return LeaseEnding(type="lease_ending", user_id=w.user_id, instance_id=w.instance_id,
                           reason=n.end.reason, ends_at=at(n.end.at), sent_at=at(now))
    return LeaseExtended(type="lease_extended", user_id=w.user_id, instance_id=w.instance_id,
                         reason=n.end.reason, ends_at=at(n.end.at), sent_at=at(now),
                         previous_ends_at=at(n.previous_at) if n.previous_at else None)


def ended_event(w: Worker, reason: EndReason, ended: float, now: float) -> LeaseEnded | None:
    """``lease_ended`` for a lease the reaper ended (None for a worker with no user)."""
    if not w.user_id:
        return None
    return LeaseEnded(type="lease_ended", user_id=w.user_id, instance_id=w.instance_id,
                      reason=reason, ends_at=at(ended), sent_at=at(now))
