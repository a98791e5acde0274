"""PROTOCOL §3: what clients send (``workerpool.claims``, ``workerpool.leases``) and the
replies they get. Replies always carry every field (``null``, never omitted)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from shared.messages.base import (
    InstanceId,
    LeaseSeconds,
    Message,
    RequestId,
    UserId,
    WaitSeconds,
)


# --- §3 client requests ------------------------------------------------------------------
class ClaimRequest(Message):
    request_id: RequestId
    user_id: UserId
    lease_seconds: LeaseSeconds | None = None
    wait_seconds: WaitSeconds | None = None


class ReleaseRequest(Message):
    type: Literal["release"]
    request_id: RequestId
    user_id: UserId
    instance_id: InstanceId


class RenewRequest(Message):
    type: Literal["renew"]
    request_id: RequestId
    user_id: UserId
    instance_id: InstanceId
    lease_seconds: LeaseSeconds | None = None


class CancelRequest(Message):
    """v2: the user gave up on a claim (Ctrl-C): it is never assigned, or, if it already
    was, its lease ends as by a release."""

    type: Literal["cancel"]
    request_id: RequestId
    user_id: UserId
    claim_request_id: RequestId


class StatusRequest(Message):
    """v2: the pool's counts and the caller's leases, for people without AWS keys."""

    type: Literal["status"]
    request_id: RequestId
    user_id: UserId


LeaseRequest = Annotated[ReleaseRequest | RenewRequest | CancelRequest | StatusRequest,
                         Field(discriminator="type")]


# --- §3 replies --------------------------------------------------------------------------
class WorkerInfo(Message):
    instance_id: str
    public_ip: str | None
    private_ip: str | None
    url: str
    password: str | None = None
    #: v2: SHA-256 of code-server's TLS certificate (the url is then https): the one to
    #: expect (``workerpool open`` checks it)
    tls_fingerprint: str | None = None
    #: the EC2 instance type the user got (the pool may fall back to another type when
    #: the first lacks capacity); null when the worker did not say
    instance_type: str | None = None


ClaimStatus = Literal["assigned", "unavailable", "rejected", "cancelled"]
LeaseStatus = Literal["released", "renewed", "not_found", "rejected", "cancelled"]


class ClaimReply(Message):
    request_id: str | None
    status: ClaimStatus
    reason: str | None = None
    worker: WorkerInfo | None = None
    lease_expiry: str | None = None
    #: ours, beyond the contract: True when the worker is one the user already held
    #: (``MAX_LEASES_PER_USER`` reached: its expiry unchanged, ``lease_seconds`` not applied)
    existing: bool | None = None

    def to_json(self) -> bytes:
        # the extension appears only when it says something: the contract's fields stay the
        # whole reply for every other claim
        return self.model_dump_json(exclude={"existing"} if self.existing is None
                                    else None).encode()


class LeaseReply(Message):
    request_id: str | None
    status: LeaseStatus
    reason: str | None = None
    instance_id: str | None = None
    lease_expiry: str | None = None


class PoolCounts(Message):
    free: int
    leased: int
    booting: int
    draining: int
    dead: int
    waiting: int
    desired: int
    max_size: int


class LeaseSummary(Message):
    instance_id: str
    url: str
    lease_expiry: str | None
    #: ours: seconds since the user's last activity in code-server, when known
    idle_seconds: int | None = None


class StatusReply(Message):
    """v2: the reply to ``status``; ``status`` is ``ok`` (or ``rejected``, with a reason)."""

    request_id: str | None
    status: Literal["ok", "rejected"]
    reason: str | None = None
    pool: PoolCounts | None = None
    leases: list[LeaseSummary] = Field(default_factory=list)
    #: ours: AWS's reason while launches fail (e.g. a vCPU quota), else null
    launch_error: str | None = None
