"""Our internal events: dispatcher → scaler (``workerpool.scaling``) and scaler → every
dispatcher (the ``workerpool.capacity`` fanout)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from shared.messages.base import InstanceId, Message


# --- internal: dispatcher → scaler (workerpool.scaling) ----------------------------------
class ShortageEvent(Message):
    """The pool is short (free below target, or claims waiting): the scaler should look."""

    type: Literal["shortage"]
    free: int = Field(ge=0)
    waiting: int = Field(ge=0)
    sent_at: datetime
    #: which dispatcher counted (its connection name): the scaler sums their counts
    reporter: Annotated[str, Field(max_length=256)] | None = None


class LeasedEvent(Message):
    """A worker was leased: the scaler protects its instance from scale-in."""

    type: Literal["leased"]
    instance_id: InstanceId
    sent_at: datetime
    #: every instance leased since the dispatcher's last event (``instance_id`` among them,
    #: first): one event per batch instead of one per lease
    instance_ids: list[InstanceId] | None = None

    def leased_ids(self) -> list[str]:
        return list(self.instance_ids or [self.instance_id])


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
    #: the rest of the scaler's count, for ``status`` requests (PROTOCOL v2 §3) without a
    #: read of their own: every dispatcher answers them from the latest of these
    leased: int | None = Field(default=None, ge=0)
    draining: int | None = Field(default=None, ge=0)
    dead: int | None = Field(default=None, ge=0)
    waiting: int | None = Field(default=None, ge=0)  # every dispatcher's, summed
    sent_at: datetime
