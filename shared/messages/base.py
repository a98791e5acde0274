"""The message machinery: the base model, the field types, and ``decode``.

Liberal in what is accepted across versions, strict in what is acted on: a field this
version does not know is ignored (``unknown_fields`` names them, for a metric), so that a
newer agent or client works with an older dispatcher; a missing required field, a wrong type
("3600" for 3600), an out-of-range value or an address that is not an IP address is an
error, with a reason that names the field.
"""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)

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
