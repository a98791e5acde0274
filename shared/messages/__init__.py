"""Every message and reply of PROTOCOL §3–4 (and our internal events), as frozen models;
``decode(kind, body)`` is the one way in (base.py). By who sends them: client.py (§3),
agent.py (§4 and the agent's commands), internal.py (scaler and dispatcher events),
events.py (v2: events for users on ``workerpool.events``)."""

from shared.messages.agent import (
    AgentCommand,
    AgentMessage,
    Deregister,
    Heartbeat,
    Notice,
    PasswordSet,
    Register,
    SetPassword,
)
from shared.messages.base import Message, decode, now_sent_at, unknown_fields
from shared.messages.client import (
    CancelRequest,
    ClaimReply,
    ClaimRequest,
    LeaseReply,
    LeaseRequest,
    LeaseSummary,
    PoolCounts,
    ReleaseRequest,
    RenewRequest,
    StatusReply,
    StatusRequest,
    WorkerInfo,
)
from shared.messages.events import (
    LeaseEnded,
    LeaseEnding,
    LeaseEvent,
    LeaseExtended,
    UserEvent,
    event_text,
)
from shared.messages.internal import CapacityStatus, LeasedEvent, ScalingEvent, ShortageEvent

__all__ = [
    "AgentCommand", "AgentMessage", "CancelRequest", "CapacityStatus", "ClaimReply",
    "ClaimRequest", "Deregister", "Heartbeat", "LeaseEnded", "LeaseEnding",
    "LeaseEvent", "LeaseExtended", "LeaseReply", "LeaseRequest", "LeaseSummary",
    "LeasedEvent", "Message", "Notice", "PasswordSet", "PoolCounts", "Register",
    "ReleaseRequest", "RenewRequest", "ScalingEvent", "SetPassword", "ShortageEvent",
    "StatusReply", "StatusRequest", "UserEvent", "WorkerInfo", "decode", "event_text",
    "now_sent_at", "unknown_fields",
]
