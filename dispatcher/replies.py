"""What the dispatcher says: replies (PROTOCOL §3) and the reasons in them.

Reasons are written for an operator who must act on them: what is missing, how many, and
which knob changes it. Nothing here decides anything (dispatcher.assign does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.clock import iso
from shared.messages import ClaimReply, LeaseReply, WorkerInfo
from shared.state import AsgState, Worker

if TYPE_CHECKING:
    from dispatcher.assign import Outlook, PoolView

#: The ``reason`` of a worker taken out because its agent did not confirm the password.
PASSWORD_NOT_CONFIRMED = "password not confirmed"
#: The ``reason`` of an ``assigned`` reply without the password: a repeated request, or a
#: user at MAX_LEASES_PER_USER getting their worker back. The password is never stored.
PASSWORD_SENT_ONCE = ("password: sent only in the first reply for this lease (never stored); "
                      "release the worker and claim again for a new one")
LEASE_STATUSES = ("released", "renewed", "not_found", "cancelled")
CANCELLED = "cancelled by its user: it will never be assigned"
#: What a repeat of a claim whose reply could not be delivered is told.
UNDELIVERABLE = ("the reply to this claim could not be delivered (its reply queue was gone); "
                 "its worker was recycled: claim again with a new request_id")
#: A request refused under CLIENT_AUTH=broker: its user_id is not the sender's broker user.
USER_ID_NOT_SENDER = ("user_id: does not match the broker user that sent the request "
                      "(CLIENT_AUTH=broker)")


# --- claims ---------------------------------------------------------------------------------
def assigned_reply(request_id: str, worker: Worker, port: int) -> ClaimReply:
    """``assigned`` with the worker's addresses and its current lease expiry."""
    return ClaimReply(
        request_id=request_id, status="assigned", reason=None,
        worker=WorkerInfo(instance_id=worker.instance_id, public_ip=worker.public_ip,
                          private_ip=worker.private_ip, url=worker.url(port), password=None,
                          tls_fingerprint=worker.tls_fingerprint,
                          instance_type=worker.instance_type),
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
                            lease_expiry=float(outcome.get("lease_expiry") or 0),
                            tls_fingerprint=outcome.get("tls_fingerprint"))
        return assigned_reply(request_id, worker, port)
    if status in ("unavailable", "cancelled"):
        return ClaimReply(request_id=request_id, status=status, reason=outcome.get("reason"))
    return ClaimReply(request_id=request_id, status="rejected",
                      reason="request_id: already used by a release or renew of this user")


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


# --- releases and renewals ------------------------------------------------------------------
def repeated_lease_reply(request_id: str, outcome: dict[str, Any]) -> LeaseReply:
    """The same outcome for a repeated release/renew request_id."""
    status = outcome.get("status")
    if status in LEASE_STATUSES:
        return LeaseReply(request_id=request_id, status=status,
                          reason=outcome.get("reason"),
                          instance_id=outcome.get("instance_id"),
                          lease_expiry=outcome.get("lease_expiry"))
    return LeaseReply(request_id=request_id, status="rejected",
                      reason="request_id: already used by a claim of this user")


def lease_reply_outcome(reply: LeaseReply) -> dict[str, Any]:
    return {"status": reply.status, "instance_id": reply.instance_id,
            "lease_expiry": reply.lease_expiry, "reason": reply.reason}


def cancelled_outcome() -> dict[str, Any]:
    """What a cancelled claim's request_id is remembered as (PROTOCOL v2 §3 cancel)."""
    return {"status": "cancelled", "reason": CANCELLED}


def not_waiting_reason(user_id: str, claim_request_id: str) -> str:
    return (f"claim_request_id: no claim {claim_request_id} of {user_id} is waiting (if it "
            "arrives after all, it is answered cancelled)")


def already_answered_reason(status: str) -> str:
    return f"claim_request_id: that claim was already answered {status}"


# --- reasons an operator can act on ---------------------------------------------------------
def _asg_words(asg: AsgState | None) -> str:
    if asg is None:
        return "ASG size unknown"
    at_max = " (at MaxSize)" if asg.desired >= asg.max_size else ""
    return f"ASG desired {asg.desired}/max {asg.max_size}{at_max}"


def timeout_reason(wait_seconds: int, pool: PoolView) -> str:
    """Why a claim that waited its whole wait (or, with 0, did not wait) got no worker."""
    if pool.aws_error is not None:
        return aws_down_reason(wait_seconds, pool.aws_error)
    if wait_seconds <= 0:
        head = "no free worker right now (wait_seconds is 0)"
    else:
        head = f"no worker became free within {wait_seconds} s"
    free = "unknown" if pool.free is None else str(pool.free)
    return (f"{head}; the pool has {free} free of target {pool.target}, "
            f"{_asg_words(pool.asg)}; see `workerpool status` and the ASG's activity")


def aws_down_reason(wait_seconds: int, error: str) -> str:
    """Why a claim got no worker while AWS (DynamoDB) does not answer."""
    head = ("no worker right now (wait_seconds is 0)" if wait_seconds <= 0
            else f"no worker within {wait_seconds} s")
    return (f"{head}: AWS does not answer (DynamoDB: {error[:200]}); the pool cannot lease "
            "or see its workers until it does")


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
