"""v2: events for users on the topic exchange ``workerpool.events``, routing key
``user.<user_id>`` (shared.topology.events_key): a lease is about to end, was extended, or
has ended. The reaper sends them (reaper/notify.py); ``workerpool watch`` shows them, and the
agent on the worker tells the VM's user (a ``notice`` command, agent/notice.py).

    {"type": "lease_ending", "user_id": "alice", "instance_id": "i-0abc",
     "reason": "idle", "ends_at": "2026-11-28T11:00:00Z", "sent_at": "2026-11-28T10:55:00Z"}

``reason`` is why the lease ends (or ended) at ``ends_at``: ``expiry`` (its lease_expiry)
or ``idle`` (IDLE_SECONDS without activity). ``lease_extended`` follows a renew, or activity
after an idle warning, that moved the end; it carries the end announced before.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import Field

from shared.messages.base import InstanceId, Message, UserId

EndReason = Literal["expiry", "idle"]


class LeaseEnding(Message):
    """Sent WARN_BEFORE_SECONDS before the lease ends (once per end time)."""

    type: Literal["lease_ending"]
    user_id: UserId
    instance_id: InstanceId
    reason: EndReason
    ends_at: datetime
    sent_at: datetime


class LeaseExtended(Message):
    """The end announced by a ``lease_ending`` moved later (a renew, or new activity)."""

    type: Literal["lease_extended"]
    user_id: UserId
    instance_id: InstanceId
    reason: EndReason
    ends_at: datetime
    previous_ends_at: datetime | None = None
    sent_at: datetime


class LeaseEnded(Message):
    """The reaper ended the lease (the worker is recycled next)."""

    type: Literal["lease_ended"]
    user_id: UserId
    instance_id: InstanceId
    reason: EndReason
    ends_at: datetime
    sent_at: datetime


LeaseEvent = LeaseEnding | LeaseExtended | LeaseEnded
UserEvent = Annotated[LeaseEvent, Field(discriminator="type")]


def at(epoch: float) -> datetime:
    """Epoch seconds → an aware UTC datetime in whole seconds (``…T11:00:00Z`` on the wire)."""
    return datetime.fromtimestamp(int(epoch), tz=UTC)


def _clock(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%H:%M:%S UTC")


def _left(seconds: float) -> str:
    """``4 min``, ``45 s``: how long until the end, for people."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min" if seconds >= 120 else f"{seconds} s"


def event_text(event: LeaseEvent) -> str:
    """One line for people (a terminal via ``wall``, the notice file, ``watch`` on a pipe).
    Built from validated fields only, so it cannot carry control characters."""
    iid, user, ends = event.instance_id, event.user_id, _clock(event.ends_at)
    left = _left((event.ends_at - event.sent_at).total_seconds())
    if isinstance(event, LeaseEnding):
        if event.reason == "idle":
            return (f"workerpool: {iid} ({user}) has been idle; it will be reclaimed at "
                    f"{ends} (in {left}) unless it is used again or the lease is renewed.")
        return (f"workerpool: the lease of {iid} ({user}) ends at {ends} (in {left}); run "
                "`workerpool renew` to keep it, or save your work elsewhere.")
    if isinstance(event, LeaseExtended):
        why = "inactivity" if event.reason == "idle" else "lease expiry"
        return (f"workerpool: {iid} ({user}) is kept: it now ends at {ends} by {why} "
                f"(in {left}).")
    why = "it was idle" if event.reason == "idle" else "the lease expired"
    return (f"workerpool: the lease of {iid} ({user}) ended at {ends} ({why}); this "
            "machine is being recycled and its files deleted.")
