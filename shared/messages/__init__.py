"""Every message and reply of PROTOCOL §3–4 (and our internal events), as frozen models;
``decode(kind, body)`` is the one way in (base.py). By who sends them: client.py (§3),
agent.py (§4 and the password command), internal.py (scaler and dispatcher events)."""

from shared.messages.agent import (
    AgentMessage,
    Deregister,
    Heartbeat,
    PasswordSet,
    Register,
    SetPassword,
)
from shared.messages.base import Message, decode, now_sent_at, unknown_fields
from shared.messages.client import (
    ClaimReply,
    ClaimRequest,
    LeaseReply,
    LeaseRequest,
    ReleaseRequest,
    RenewRequest,
    WorkerInfo,
)
from shared.messages.internal import CapacityStatus, LeasedEvent, ScalingEvent, ShortageEvent

__all__ = [
    "AgentMessage", "CapacityStatus", "ClaimReply", "ClaimRequest", "Deregister",
    "Heartbeat", "LeaseReply", "LeaseRequest", "LeasedEvent", "Message", "PasswordSet",
    "Register", "ReleaseRequest", "RenewRequest", "ScalingEvent", "SetPassword",
    "ShortageEvent", "WorkerInfo", "decode", "now_sent_at", "unknown_fields",
]
