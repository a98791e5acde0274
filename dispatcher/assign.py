"""The dispatcher's judgement, as pure functions: state + ``now`` + settings in, decisions out.

Nothing here does I/O or reads the clock; ``loop.py`` reads the table and the broker, asks
these functions what to do, and does it. Each function is tested as a table of cases in
``tests/unit/test_dispatcher_assign.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shared.clock import iso
from shared.messages import CapacityStatus, ClaimReply, LeaseReply, WorkerInfo
from shared.state import AsgState, Worker
from shared.topology import ARRIVED_HEADER

#: The scaler's count of free and coming machines is believed this long after it was sent: a
#: scaler that died must not keep refusing claims on an old count.
OUTLOOK_FRESH_SECONDS = 60.0
#: A shortage event is repeated this often while the pool stays short.
SHORTAGE_REPEAT_SECONDS = 5.0
#: A worker this dispatcher just tried to lease is skipped this long by its other threads
#: (the index may still list it as free for a moment).
RECENTLY_TRIED_SECONDS = 2.0
#: The ASG membership cache is refreshed at most this often (DescribeAutoScalingGroups).
ASG_REFRESH_SECONDS = 1.0


# --- values the loop hands in -------------------------------------------------------------
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
    """A waiting claim as the waiting room sees it (``key`` identifies it to the loop)."""

    key: int
    request_id: str
    user_id: str
    arrived_at: float
    wait_seconds: int

    @property
    def deadline(self) -> float:
        return self.arrived_at + self.wait_seconds


@dataclass(frozen=True)
class PoolView:
    """What the dispatcher last knew about the pool, for the wording of reasons."""

    free: int | None
    target: int
    asg: AsgState | None = None


@dataclass(frozen=True)
class WaitPlan:
    """``expire``: (waiter key, reason) to answer ``unavailable`` now; ``serve``: waiter keys
    to try to assign, oldest first."""

    expire: tuple[tuple[int, str], ...]
    serve: tuple[int, ...]


# --- a claim ------------------------------------------------------------------------------
ClaimStep = Literal["repeat", "existing", "lease"]


def claim_step(recalled: dict[str, Any] | None, held: Sequence[Worker], max_leases: int
               ) -> ClaimStep:
    """What to do with a valid claim before looking for a free worker.

    ``repeat``: this (user, request_id) was answered before: answer the same outcome.
    ``existing``: the user already holds MAX_LEASES_PER_USER leases: give one back.
    ``lease``: look for a free worker.
    """
    if recalled is not None:
        return "repeat"
    if len(held) >= max_leases:
        return "existing"
    return "lease"


def untried(candidates: Sequence[Worker], busy: frozenset[str]) -> list[Worker]:
    """Candidates no thread of ours is leasing now or tried a moment ago, in the order
    given (the loop shuffles: several dispatchers read the same index page)."""
    return [w for w in candidates if w.instance_id not in busy]


def no_free_worker(wait_seconds: int) -> Literal["unavailable", "wait"]:
    """``wait_seconds: 0`` means a free worker now or ``unavailable`` now (PROTOCOL §3)."""
    return "unavailable" if wait_seconds <= 0 else "wait"


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


# --- the waiting room -----------------------------------------------------------------------
def plan_waiting(waiters: Sequence[Waiter], now: float, pool: PoolView) -> WaitPlan:
    """Waiters past their deadline are answered ``unavailable``; the others are tried in
    arrival order (oldest first, ties by delivery order)."""
    expire: list[tuple[int, str]] = []
    serve: list[Waiter] = []
    for w in waiters:
        if now >= w.deadline:
            expire.append((w.key, timeout_reason(w.wait_seconds, pool)))
        else:
            serve.append(w)
    serve.sort(key=lambda w: (w.arrived_at, w.key))
    return WaitPlan(expire=tuple(expire), serve=tuple(w.key for w in serve))


def refused_waiters(remaining: Sequence[Waiter], outlook: Outlook | None, now: float
                    ) -> tuple[tuple[int, str], ...]:
    """After assigning what was free: the waiting claims the pool cannot serve.

    In arrival order, the oldest ``free + coming`` claims keep waiting (each for its own
    machine: free now, booting, or still to be launched within MaxSize); the ones after them
    are answered now. So the newest are refused first, and only when the pool can never
    reach them. Without a recent count from the scaler nobody is refused: claims wait to
    their deadline.
    """
    if outlook is None or now - outlook.sent_at > OUTLOOK_FRESH_SECONDS:
        return ()
    supply = outlook.free + outlook.coming
    ordered = sorted(remaining, key=lambda w: (w.arrived_at, w.key))
    return tuple((w.key, beyond_supply_reason(outlook, ahead=i))
                 for i, w in enumerate(ordered) if i >= supply)


# --- wording an operator can act on ------------------------------------------------------
def _asg_words(pool: PoolView) -> str:
    if pool.asg is None:
        return "ASG size unknown"
    at_max = " (at MaxSize)" if pool.asg.desired >= pool.asg.max_size else ""
    return f"ASG desired {pool.asg.desired}/max {pool.asg.max_size}{at_max}"


def timeout_reason(wait_seconds: int, pool: PoolView) -> str:
    """Why a claim that waited its whole wait got no worker."""
    free = "unknown" if pool.free is None else str(pool.free)
    if wait_seconds <= 0:
        head = "no free worker right now (wait_seconds is 0)"
    else:
        head = f"no worker became free within {wait_seconds} s"
    return (f"{head}; the pool has {free} free of target {pool.target}, "
            f"{_asg_words(pool)}; see `workerpool status` and the ASG's activity")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def beyond_supply_reason(outlook: Outlook, ahead: int) -> str:
    """Why a waiting claim is answered before its wait is over: it is beyond what the pool
    can serve, and why the pool cannot serve more (MaxSize, or AWS's launch failure)."""
    supply = outlook.free + outlook.coming
    head = (f"no machine for this claim: {_plural(ahead, 'claim')} ahead of it and "
            f"{_plural(supply, 'machine')} free or coming ({outlook.free} free, "
            f"{outlook.booting} booting")
    if outlook.launch_failure is not None:
        return (f"{head}); no more can come while {outlook.launch_failure} "
                f"(ASG desired {outlook.desired}/max {outlook.max_size})")
    return (f"{head}, {outlook.pending + outlook.launchable} still to launch); the pool is "
            f"at its limit, ASG MaxSize {outlook.max_size}: raise ASG_MAX_SIZE / the group's "
            "MaxSize")


def not_in_asg_reason(instance_id: str, asg_name: str) -> str:
    return f"instance {instance_id} is not in Auto Scaling Group {asg_name}"


# --- replies --------------------------------------------------------------------------------
def assigned_reply(request_id: str, worker: Worker, port: int) -> ClaimReply:
    """``assigned`` with the worker's addresses and its current lease expiry."""
    return ClaimReply(
        request_id=request_id, status="assigned", reason=None,
        worker=WorkerInfo(instance_id=worker.instance_id, public_ip=worker.public_ip,
                          private_ip=worker.private_ip, url=worker.url(port), password=None),
        lease_expiry=iso(worker.lease_expiry) if worker.lease_expiry else None,
    )


def repeated_claim_reply(request_id: str, outcome: dict[str, Any], worker: Worker | None,
                         port: int) -> ClaimReply:
    """The same outcome for a repeated request_id. For ``assigned``: the same worker, with
    its current lease expiry (only renew extends it)."""
    status = outcome.get("status")
    if status == "assigned" and outcome.get("instance_id"):
        if worker is None:
            # recycled since: the same worker, as the remembered outcome describes it
            worker = Worker(instance_id=str(outcome["instance_id"]), status="draining",
                            last_heartbeat=0.0, public_ip=outcome.get("public_ip"),
                            private_ip=outcome.get("private_ip"),
                            lease_expiry=float(outcome.get("lease_expiry") or 0))
        return assigned_reply(request_id, worker, port)
    if status == "unavailable":
        return ClaimReply(request_id=request_id, status="unavailable",
                          reason=outcome.get("reason"))
    return ClaimReply(request_id=request_id, status="rejected",
                      reason="request_id: already used by a release or renew of this user")


# --- per-lease passwords (LEASE_PASSWORDS) -------------------------------------------------
#: The ``reason`` of a worker taken out because its agent did not confirm the password.
PASSWORD_NOT_CONFIRMED = "password not confirmed"
#: The ``reason`` of an ``assigned`` reply without the password: a repeated request, or a
#: user at MAX_LEASES_PER_USER getting their worker back. The password is never stored.
PASSWORD_SENT_ONCE = ("password: sent only in the first reply for this lease (never stored); "
                      "release the worker and claim again for a new one")


def with_password(reply: ClaimReply, password: str) -> ClaimReply:
    """The assigned reply carrying the lease's password (to the claimant only)."""
    assert reply.worker is not None
    return reply.model_copy(update={"worker": reply.worker.model_copy(
        update={"password": password})})


def password_note(reply: ClaimReply) -> ClaimReply:
    """An ``assigned`` reply that cannot carry the password says why in ``reason``."""
    if reply.status != "assigned" or (reply.worker and reply.worker.password):
        return reply
    return reply.model_copy(update={"reason": PASSWORD_SENT_ONCE})


def unavailable_outcome(reason: str) -> dict[str, Any]:
    return {"status": "unavailable", "reason": reason}


# --- leases ---------------------------------------------------------------------------------
LEASE_STATUSES = ("released", "renewed", "not_found")


def repeated_lease_reply(request_id: str, outcome: dict[str, Any]) -> LeaseReply:
    """The same outcome for a repeated release/renew request_id."""
    status = outcome.get("status")
    if status in LEASE_STATUSES:
        return LeaseReply(request_id=request_id, status=status,
                          instance_id=outcome.get("instance_id"),
                          lease_expiry=outcome.get("lease_expiry"))
    return LeaseReply(request_id=request_id, status="rejected",
                      reason="request_id: already used by a claim of this user")


def release_was_ours(item: dict[str, Any] | None, user_id: str) -> bool:
    """A release whose conditional write failed because this user's release already landed
    (a redelivery after a crash between write and reply) still answers ``released``."""
    return bool(item and item.get("status") == "draining" and item.get("userId") == user_id
                and item.get("reason") == "released")


def lease_reply_outcome(reply: LeaseReply) -> dict[str, Any]:
    return {"status": reply.status, "instance_id": reply.instance_id,
            "lease_expiry": reply.lease_expiry}


# --- registration ---------------------------------------------------------------------------
AsgLookup = Literal["known", "unknown", "refresh"]


def asg_lookup(instance_id: str, live_ids: frozenset[str], refreshed_at: float | None,
               seen_at: float) -> AsgLookup:
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
    return max(0.0, refreshed_at + ASG_REFRESH_SECONDS - now)


# --- shortage -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShortageSent:
    free: int
    waiting: int
    at: float


def shortage_due(free: int, waiting: int, last: ShortageSent | None, now: float,
                 target: int) -> bool:
    """Tell the scaler when the pool is short (free below target, or claims waiting) and
    the counts changed since the last event, or it has been a while (one event per change;
    the scaler also reconciles on its own)."""
    if free >= target and waiting == 0:
        return False
    if last is None or (last.free, last.waiting) != (free, waiting):
        return True
    return now - last.at >= SHORTAGE_REPEAT_SECONDS


# --- heartbeats -----------------------------------------------------------------------------
def latest_heartbeat(beats: Sequence[tuple[float, bool]]) -> tuple[float, bool]:
    """Of several heartbeats of one instance waiting to be written, the newest wins (one
    DynamoDB write instead of several): (sent_at, healthy)."""
    return max(beats, key=lambda b: b[0])
