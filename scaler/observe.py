"""Pure readings of a snapshot: what is booting, which instances need (un)protecting, whether
launches fail, and how many claims wait. No I/O; the loop feeds them what it read."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shared.state import Activity, AsgState

#: Activities that started this long before our SetDesiredCapacity still count as ours:
#: AWS stamps StartTime with its clock, we compare with ours.
CLOCK_SKEW_SECONDS = 5.0


@dataclass(frozen=True)
class Arriving:
    """Machines that will become workers but are not yet (from one snapshot)."""

    booting: int  # live ASG instances without a registered item (none, or status booting)
    pending: int  # desired above the live count: launches AWS has not started

    @property
    def total(self) -> int:
        return self.booting + self.pending


def arriving(asg: AsgState, registered: Iterable[str]) -> Arriving:
    """What is on its way: launched instances that have not registered, and launches AWS has
    not started yet (the ones a failing launch dooms)."""
    live = asg.live_ids
    return Arriving(booting=len(live - set(registered)),
                    pending=max(0, asg.desired - len(live)))


def booting(asg: AsgState, registered: Iterable[str]) -> int:
    """Instances that will become workers but are not yet: both kinds of ``arriving``."""
    return arriving(asg, registered).total


def protection_plan(asg: AsgState, leased: Iterable[str]) -> tuple[list[str], list[str]]:
    """(to protect, to unprotect): protected exactly while leased, so that a scale-in never
    picks a VM someone works on, and never keeps a VM nobody does."""
    leased = set(leased)
    protect, unprotect = [], []
    for inst in asg.instances:
        if inst.leaving:
            continue
        if inst.instance_id in leased and not inst.protected:
            protect.append(inst.instance_id)
        elif inst.instance_id not in leased and inst.protected:
            unprotect.append(inst.instance_id)
    return sorted(protect), sorted(unprotect)


@dataclass(frozen=True)
class LaunchStatus:
    ok: bool
    reason: str | None = None
    failed: tuple[Activity, ...] = ()  # failed activities since ``since`` (newest first)


def launch_status(activities: Sequence[Activity], since: float) -> LaunchStatus:
    """Whether the ASG launches what we asked for since ``since`` (our raise).

    The newest activity decides (AWS retries a failed launch as a new activity, so a later
    success means the quota or capacity problem went away); every failed one is reported.
    """
    recent = sorted((a for a in activities if a.start_time >= since - CLOCK_SKEW_SECONDS),
                    key=lambda a: a.start_time, reverse=True)
    failed = tuple(a for a in recent if a.failed)
    if not recent or not recent[0].failed:
        return LaunchStatus(ok=True, failed=failed)
    newest = recent[0]
    return LaunchStatus(ok=False, reason=f"instances fail to launch ({newest.status_code}): "
                        f"{newest.status_message or newest.description}", failed=failed)


@dataclass(frozen=True)
class WaitingBook:
    """The dispatcher's latest count of waiting claims, kept honest between reports.

    The dispatcher reports on change, not periodically, so a count would otherwise live for
    ever: every lease after the report serves a waiting claim (they go first, in arrival
    order) and takes one off; a report older than ``memory`` seconds is dropped.
    """

    waiting: int = 0
    sent_at: float = 0.0  # the report's own time (events are compared by it)
    received_at: float = 0.0  # our clock, for expiry

    def reported(self, waiting: int, sent_at: float, now: float) -> WaitingBook:
        if sent_at < self.sent_at:  # an older report overtaken by a newer one
            return self
        return WaitingBook(waiting=waiting, sent_at=sent_at, received_at=now)

    def leased(self, sent_at: float) -> WaitingBook:
        if sent_at < self.sent_at or self.waiting == 0:
            return self
        return WaitingBook(self.waiting - 1, self.sent_at, self.received_at)

    def current(self, now: float, memory: float) -> int:
        return self.waiting if now - self.received_at <= memory else 0
