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


LeaseRequest = Annotated[ReleaseRequest | RenewRequest, Field(discriminator="type")]


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


ClaimStatus = Literal["assigned", "unavailable", "rejected"]
LeaseStatus = Literal["released", "renewed", "not_found", "rejected"]


class ClaimReply(Message):
    request_id: str | None
    status: ClaimStatus
    reason: str | None = None
    worker: WorkerInfo | None = None
    lease_expiry: str | None = None


class LeaseReply(Message):
    request_id: str | None
    status: LeaseStatus
    reason: str | None = None
    instance_id: str | None = None
    lease_expiry: str | None = None
