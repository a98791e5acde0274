"""Every message and reply of PROTOCOL §3–4 (and our internal events), as frozen models.

``decode(kind, body)`` is the one way in: raw bytes → a model, or ``InvalidMessage`` whose
reason names the field. Liberal in what is accepted across versions, strict in what is acted
on: a field this version does not know is ignored (``unknown_fields`` names them, for a
metric), so that a newer agent or client works with an older dispatcher; a missing required
field, a wrong type ("3600" for 3600), an out-of-range value or an address that is not an IP
address is an error. Replies always carry every field (``null``, never omitted).
"""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.clock import utcnow_iso
from shared.errors import InvalidMessage

REQUEST_ID = r"^[A-Za-z0-9._:-]{1,128}$"
USER_ID = r"^[A-Za-z0-9._@-]{1,128}$"
INSTANCE_ID = r"^i-[A-Za-z0-9]{1,40}$"

RequestId = Annotated[str, Field(pattern=REQUEST_ID)]
UserId = Annotated[str, Field(pattern=USER_ID)]
InstanceId = Annotated[str, Field(pattern=INSTANCE_ID)]
LeaseSeconds = Annotated[int, Field(ge=10, le=86400)]
WaitSeconds = Annotated[int, Field(ge=0, le=900)]
ShortText = Annotated[str, Field(max_length=256)]


def _ip_address(value: str) -> str:
    """An IPv4 or IPv6 address, in its canonical text form."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("must be an IP address") from None


Ip = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_ip_address)]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


def unknown_fields(message: BaseModel) -> tuple[str, ...]:
    """The fields of a decoded message that this version does not know (ignored)."""
    return tuple(sorted(message.model_extra or ()))


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


# --- §4 agent messages -------------------------------------------------------------------
#: base64 of a raw 32-byte Ed25519 public key.
AGENT_KEY = r"^[A-Za-z0-9+/]{43}=$"
#: SHA-256 of a certificate, hex (colons allowed, as openssl prints it).
FINGERPRINT = r"^([0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$"


class Register(Message):
    type: Literal["register"]
    instance_id: InstanceId
    private_ip: Ip | None = None
    public_ip: Ip | None = None
    instance_type: ShortText | None = None
    availability_zone: ShortText | None = None
    agent_version: ShortText | None = None
    sent_at: datetime | None = None
    # v2 (§4): attestation and the agent's key
    identity_document: Annotated[str, Field(max_length=8192)] | None = None
    identity_signature: Annotated[str, Field(max_length=4096)] | None = None
    agent_key: Annotated[str, Field(pattern=AGENT_KEY)] | None = None
    # v2: the SHA-256 fingerprint of code-server's TLS certificate on the VM
    tls_fingerprint: Annotated[str, Field(pattern=FINGERPRINT)] | None = None


class Heartbeat(Message):
    type: Literal["heartbeat"]
    instance_id: InstanceId
    healthy: bool
    sent_at: datetime | None = None


class Deregister(Message):
    type: Literal["deregister"]
    instance_id: InstanceId
    reason: ShortText | None = None
    sent_at: datetime | None = None


AgentMessage = Annotated[Register | Heartbeat | Deregister, Field(discriminator="type")]


# --- internal: dispatcher → scaler (workerpool.scaling) ----------------------------------
class ShortageEvent(Message):
    """The pool is short (free below target, or claims waiting): the scaler should look."""

    type: Literal["shortage"]
    free: int = Field(ge=0)
    waiting: int = Field(ge=0)
    sent_at: datetime


class LeasedEvent(Message):
    """A worker was leased: the scaler protects its instance from scale-in."""

    type: Literal["leased"]
    instance_id: InstanceId
    sent_at: datetime


ScalingEvent = Annotated[ShortageEvent | LeasedEvent, Field(discriminator="type")]


# --- internal: scaler → dispatchers (workerpool.capacity fanout) -------------------------
class CapacityStatus(Message):
    """The machines as the active scaler saw them in its last reconcile (sent on every one).

    Dispatchers use it to tell which waiting claims the pool can still serve: the oldest
    ``free + coming`` claims keep waiting, the newer ones are answered ``unavailable`` at once
    (dispatcher.assign.refused_waiters). ``ok`` says whether launches work: False means the
    ASG's newest launch failed, ``reason`` carries AWS's message, and machines not launched
    yet (``pending``, and what MaxSize would still allow) are not coming.
    """

    type: Literal["capacity"] = "capacity"
    ok: bool
    reason: str | None = None
    desired: int | None = None
    max_size: int | None = None
    free: int | None = Field(default=None, ge=0)  # free and healthy: a claim can have it now
    booting: int | None = Field(default=None, ge=0)  # launched, not registered yet
    pending: int | None = Field(default=None, ge=0)  # asked for, not launched yet
    sent_at: datetime


# --- internal: dispatcher <-> one agent (per-lease code-server passwords) ---------------
#: code-server's ``hashed-password``: an argon2 PHC string or the 64-hex SHA-256 of the
#: password (code-server's src/node/util.ts getPasswordMethod). Strict, because the agent
#: writes it into a YAML file: no spaces, quotes or newlines can get through.
HASHED_PASSWORD = r"^([0-9a-f]{64}|\$argon2(id|i|d)\$[A-Za-z0-9+/=$,.-]{20,300})$"
#: Where a confirmation goes: a dispatcher's own queue (also its amq.topic routing key).
CONFIRM_QUEUE = r"^workerpool\.confirm\.[A-Za-z0-9_-]{1,200}$"
#: Command ids are random and single-use (they are what makes a confirmation credible).
COMMAND_ID = r"^[A-Za-z0-9_-]{16,64}$"


class SetPassword(Message):
    """Dispatcher → ``workerpool.agent.<instance-id>``: set code-server's hashed-password,
    restart it, then confirm to ``confirm_to``. Carries a hash only, never the password."""

    type: Literal["set_password"]
    request_id: Annotated[str, Field(pattern=COMMAND_ID)]
    hashed_password: Annotated[str, Field(pattern=HASHED_PASSWORD)]
    confirm_to: Annotated[str, Field(pattern=CONFIRM_QUEUE)]
    sent_at: datetime

    def __repr_args__(self) -> Any:  # never show the hash in a repr or a traceback
        return [(k, "***" if k == "hashed_password" else v) for k, v in super().__repr_args__()]


class PasswordSet(Message):
    """Agent → the dispatcher's confirm queue: the command ``request_id`` is applied and
    code-server answers ``/healthz`` again."""

    type: Literal["password_set"]
    instance_id: InstanceId
    request_id: Annotated[str, Field(pattern=COMMAND_ID)]
    sent_at: datetime


# --- decoding ----------------------------------------------------------------------------
M = TypeVar("M")

_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(kind: Any) -> TypeAdapter[Any]:
    if kind not in _ADAPTERS:
        _ADAPTERS[kind] = TypeAdapter(kind)
    return _ADAPTERS[kind]


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        # drop the union tag pydantic puts in the path ("release.instance_id" → "instance_id")
        if len(loc) > 1 and loc[0] in {"release", "renew", "register", "heartbeat", "deregister",
                                         "shortage", "leased", "set_password",
                                         "password_set"}:
            loc = loc[1:]
        field = ".".join(loc) or "body"
        if err["type"] == "union_tag_invalid":
            field = "type"
            expected = err.get("ctx", {}).get("expected_tags", "")
            parts.append(f"{field}: must be one of {expected}".replace("'", ""))
        elif err["type"] == "union_tag_not_found":
            parts.append("type: field required")
        elif err["type"] == "missing":
            parts.append(f"{field}: field required")
        elif err["type"] == "json_invalid":
            parts.append(f"body is not valid JSON ({err.get('ctx', {}).get('error', '')})")
        elif err["type"] == "model_type" and field == "body":
            parts.append("body: must be a JSON object")
        else:
            parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)


def _request_id_of(body: bytes) -> str | None:
    """The request_id of a body that parsed as JSON, if it is a valid one (else None)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    rid = data.get("request_id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) and re.match(REQUEST_ID, rid) else None


def decode(kind: type[M] | Any, body: bytes) -> M:
    """Bytes → model of ``kind`` (a Message class or an Annotated union), or InvalidMessage."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidMessage("body is not UTF-8") from None
    try:
        return _adapter(kind).validate_json(text)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise InvalidMessage(_reason(exc), request_id=_request_id_of(body)) from None


def now_sent_at() -> datetime:
    return datetime.fromisoformat(utcnow_iso().replace("Z", "+00:00"))
