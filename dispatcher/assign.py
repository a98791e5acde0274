"""The dispatcher's judgement, as pure functions: what was read + ``now`` + settings in,
decisions out. Nothing here does I/O or reads the clock; the services (claims.py,
waiting.py, agents.py, leases.py) read, ask these functions, and apply. Each is tested as a
table of cases in ``tests/unit/test_dispatcher_assign.py``. The words of replies and
reasons are in replies.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dispatcher import replies
from shared.messages import CapacityStatus, ClaimReply
from shared.state import AsgState, Worker
from shared.topology import ARRIVED_HEADER, ATTEMPT_HEADER, SENDER_HEADER

#: The scaler's count of free and coming machines is believed this long after it was sent: a
#: scaler that died must not keep refusing claims on an old count.
OUTLOOK_FRESH_SECONDS = 60.0
#: A shortage event is repeated this often while the pool stays short.
SHORTAGE_REPEAT_SECONDS = 5.0
#: A worker this dispatcher just tried to lease is skipped this long by its other threads
#: (the index may still list it as free for a moment).
RECENTLY_TRIED_SECONDS = 2.0


# --- what the services hand in --------------------------------------------------------------
@dataclass(frozen=True)
class PoolView:
    """What the dispatcher last knew about the pool, for the wording of reasons."""

    free: int | None
    target: int
    asg: AsgState | None = None
    aws_error: str | None = None  # DynamoDB does not answer (why), for the wording


@dataclass(frozen=True)
class ClaimView:
    """What the claim path read for one claim: the remembered outcome of its request, the
    user's leases, and free workers from the index (in the order to try them)."""

    recalled: dict[str, Any] | None
    held: tuple[Worker, ...] = ()
    candidates: tuple[Worker, ...] = ()


@dataclass(frozen=True)
class Outlook:
    """The scaler's latest count of machines (a CapacityStatus; ``sent_at`` in epoch s)."""

    free: int  # free and healthy
    booting: int  # launched, not registered yet
    pending: int  # asked for, not launched yet
    desired: int
    max_size: int
    launch_failure: str | None  # AWS's reason while launches fail, else None
    sent_at: float

    @property
    def launchable(self) -> int:
        """Machines MaxSize still allows beyond what was asked for."""
        return max(0, self.max_size - self.desired)

    @property
    def coming(self) -> int:
        """Machines that will still register: while launches fail, only those launched."""
        if self.launch_failure is not None:
            return self.booting
        return self.booting + self.pending + self.launchable


def outlook(status: CapacityStatus) -> Outlook | None:
    """The scaler's message as an Outlook (None if it lacks a count: nobody is refused)."""
    if (status.free is None or status.booting is None or status.pending is None
            or status.desired is None or status.max_size is None):
        return None
    return Outlook(free=status.free, booting=status.booting, pending=status.pending,
                   desired=status.desired, max_size=status.max_size,
                   launch_failure=None if status.ok else (status.reason or "launches fail"),
                   sent_at=status.sent_at.timestamp())


@dataclass(frozen=True)
class Waiter:
    """A waiting claim as the waiting room sees it (``key`` identifies it to the room)."""

    key: int
    request_id: str
    user_id: str
    arrived_at: float
    wait_seconds: int

    @property
    def deadline(self) -> float:
        return self.arrived_at + self.wait_seconds


# --- a claim ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Repeat:
    """This (user, request_id) was answered before: answer the same outcome."""

    outcome: dict[str, Any]


@dataclass(frozen=True)
class Existing:
    """The user holds MAX_LEASES_PER_USER leases already: give this one back."""

    worker: Worker


@dataclass(frozen=True)
class TryLease:
    """Lease the first of these free workers that is still free."""

    order: tuple[Worker, ...]


@dataclass(frozen=True)
class Wait:
    """No worker now: wait for one (in the waiting room, or go on waiting there)."""


@dataclass(frozen=True)
class Unavailable:
    """No worker now and the claim may not wait (``wait_seconds: 0``)."""

    reason: str


ClaimPlan = Repeat | Existing | TryLease | Wait | Unavailable


@dataclass(frozen=True)
class Assignment:
    """A claim's answer, and the worker if it was leased just now (not a repeat)."""

    reply: ClaimReply
    new_lease: Worker | None = None
    #: a repeat's: where its outcome was first answered (reply_to#correlation_id, if known)
    answered_to: str | None = None


def reply_key(reply_to: str | None, correlation_id: str | None) -> str | None:
    """Where a claim's answer goes, as its outcome remembers it: a redelivery of a claim
    already answered (an ack lost with a broker node) has the same key and is not answered
    twice; a client's repeat is a new message, with a new correlation_id."""
    return f"{reply_to}#{correlation_id or ''}" if reply_to else None


def answered_already(redelivered: bool, key: str | None, answered_to: str | None) -> bool:
    """Whether this delivery is one the stored outcome was already sent for."""
    return redelivered and key is not None and key == answered_to


def claim_plan(view: ClaimView, *, busy: frozenset[str], max_leases: int,
               wait_seconds: int | None, pool: PoolView) -> ClaimPlan:
    """What to do with a valid claim, given what was read for it.

    A repeated request gets its first outcome; a user at the limit gets a held worker back;
    otherwise the free workers no thread of ours is leasing (or tried a moment ago) are
    tried in the order read (the reader shuffles: several dispatchers read the same page).
    With none: ``wait_seconds: 0`` means unavailable now (PROTOCOL §3); a claim that is
    already waiting (``wait_seconds=None``) or may wait, waits.
    """
    if view.recalled is not None:
        return Repeat(view.recalled)
    if len(view.held) >= max_leases:
        return Existing(view.held[0])
    order = tuple(w for w in view.candidates if w.instance_id not in busy)
    if order:
        return TryLease(order)
    if wait_seconds is not None and wait_seconds <= 0:
        return Unavailable(replies.timeout_reason(0, pool))
    return Wait()


def arrived_at(header: Any, now: float) -> float:
    """First arrival of a claim: the header a previous hop set (epoch microseconds; whole
    seconds from older dispatchers), else now. A header that is not a sane epoch (garbled,
    or in the future) is replaced by now."""
    if not isinstance(header, (int, float)) or isinstance(header, bool) or header <= 0:
        return now
    seconds = header / 1_000_000 if header > 1e14 else float(header)
    return seconds if seconds <= now else now


def waiting_headers(headers: dict[str, Any], arrived: float) -> dict[str, Any]:
    """Headers of a claim sent to wait: the client's own, plus its first arrival in epoch
    microseconds (AMQP tables carry no floats; claims of one burst arrive within the same
    second, and their order is what decides which of them wait); the broker's delivery count
    is its own."""
    kept = {k: v for k, v in headers.items() if not k.startswith("x-delivery-")}
    return {**kept, ARRIVED_HEADER: int(arrived * 1_000_000)}


# --- the waiting room -------------------------------------------------------------------------
@dataclass(frozen=True)
class WaitPlan:
    """``expire``: (waiter key, reason) to answer ``unavailable`` now; ``serve``: waiter keys
    to try to assign, oldest first."""

    expire: tuple[tuple[int, str], ...]
    serve: tuple[int, ...]


def plan_waiting(waiters: Sequence[Waiter], now: float, pool: PoolView) -> WaitPlan:
    """Waiters past their deadline are answered ``unavailable``; the others are tried in
    arrival order (oldest first, ties by delivery order)."""
    expire: list[tuple[int, str]] = []
    serve: list[Waiter] = []
    for w in waiters:
        if now >= w.deadline:
            expire.append((w.key, replies.timeout_reason(w.wait_seconds, pool)))
        else:
            serve.append(w)
    serve.sort(key=lambda w: (w.arrived_at, w.key))
    return WaitPlan(expire=tuple(expire), serve=tuple(w.key for w in serve))


def refused_waiters(remaining: Sequence[Waiter], seen: Outlook | None, now: float
                    ) -> tuple[tuple[int, str], ...]:
    """After assigning what was free: the waiting claims the pool cannot serve.

    In arrival order, the oldest ``free + coming`` claims keep waiting (each for its own
    machine: free now, booting, or still to be launched within MaxSize); the ones after them
    are answered now. So the newest are refused first, and only when the pool can never
    reach them. Without a recent count from the scaler nobody is refused: claims wait to
    their deadline.
    """
    if seen is None or now - seen.sent_at > OUTLOOK_FRESH_SECONDS:
        return ()
    supply = seen.free + seen.coming
    ordered = sorted(remaining, key=lambda w: (w.arrived_at, w.key))
    return tuple((w.key, replies.beyond_supply_reason(seen, ahead=i))
                 for i, w in enumerate(ordered) if i >= supply)


# --- who may act for whom ----------------------------------------------------------------
def sender_of(user_id: str | None, headers: dict[str, Any], services: frozenset[str]
              ) -> str | None:
    """Who sent a request: its RabbitMQ-validated user_id, except for a copy one of our
    services sent back to be tried again (it names the original sender in a header, which
    only a service's word makes credible)."""
    original = headers.get(SENDER_HEADER)
    if user_id in services and isinstance(original, str) and ATTEMPT_HEADER in headers:
        return original
    return user_id


def acts_for(client_auth: str, sender: str | None, user_id: str, privileged: frozenset[str]
             ) -> bool:
    """Whether a request's sender may act for ``user_id``. ``field``: the request says who
    it is for. ``broker``: only for the broker user RabbitMQ authenticated (the AMQP user_id
    property it validated), unless the sender is a service or a gateway (a portal acting
    for its users)."""
    if client_auth != "broker":
        return True
    return sender is not None and (sender == user_id or sender in privileged)


# --- releases ---------------------------------------------------------------------------------
def release_was_ours(item: dict[str, Any] | None, user_id: str) -> bool:
    """A release whose conditional write failed because this user's release already landed
    (a redelivery after a crash between write and reply) still answers ``released``."""
    return bool(item and item.get("status") == "draining" and item.get("userId") == user_id
                and item.get("reason") == "released")


# --- shortage -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ShortageSent:
    free: int
    waiting: int
    at: float


def shortage_due(free: int, waiting: int, last: ShortageSent | None, now: float,
                 target: int) -> bool:
    """Tell the scaler when the pool is short (free below target, or claims waiting) and
    the counts changed since the last event, or it has been a while (one event per change;
    the scaler also reconciles on its own); and once when our claims stopped waiting, so
    that our last count does not linger in the scaler's sum."""
    if free >= target and waiting == 0:
        return last is not None and last.waiting > 0
    if last is None or (last.free, last.waiting) != (free, waiting):
        return True
    return now - last.at >= SHORTAGE_REPEAT_SECONDS


# --- heartbeats -----------------------------------------------------------------------------
def latest_heartbeat(beats: Sequence[tuple[float, bool]]) -> tuple[float, bool]:
    """Of several heartbeats of one instance waiting to be written, the newest wins (one
    DynamoDB write instead of several): (sent_at, healthy)."""
    return max(beats, key=lambda b: b[0])
