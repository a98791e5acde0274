"""Cancel (PROTOCOL v2 §3): a user gives up on a claim (Ctrl-C), and it is never assigned.

The cancel arrives on ``workerpool.leases`` at any dispatcher, while the claim it names may
be waiting in another dispatcher's waiting room (the single active consumer of
``workerpool.claims.waiting``), still in flight, or answered already. So:

1. The claim's request_id is settled as ``cancelled`` with a conditional write: from then on
   no lease can be granted for it (the lease transaction requires the request to be new),
   and any copy of the claim that is still to be answered is answered ``cancelled``.
2. If that write won, the cancel goes on to the waiting queue, behind the claim it names:
   the dispatcher holding the waiting claims answers the claim ``cancelled`` on its own reply
   address, and the cancel ``cancelled`` (or ``not_found`` when it holds no such claim).
3. If the claim had an outcome already: ``assigned`` → its lease ends as by a release
   (``released``); ``cancelled`` (an earlier cancel) → ``cancelled``; anything else →
   ``not_found``, saying what it was answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dispatcher import replies
from shared.messages import CancelRequest, LeaseReply

#: Header marking a cancel forwarded to the waiting queue (which accepts our services'
#: messages only: PROTOCOL §2 v2); the claims there carry none.
KIND_HEADER = "x-workerpool-kind"
CANCEL_KIND = "cancel"


@dataclass(frozen=True)
class Forward:
    """Hand the cancel to whoever holds the waiting claims."""


@dataclass(frozen=True)
class Release:
    """The claim was assigned: end that lease as by a release."""

    instance_id: str


def cancel_plan(req: CancelRequest, won: bool, stands: dict[str, Any]
                ) -> Forward | Release | LeaseReply:
    """What a cancel does, given whether it settled the claim as cancelled (``won``) or
    found the outcome that ``stands``."""
    if won:
        return Forward()
    status = str(stands.get("status"))
    if status == "assigned" and stands.get("instance_id"):
        return Release(str(stands["instance_id"]))
    if status == "cancelled":
        return LeaseReply(request_id=req.request_id, status="cancelled",
                          reason=replies.CANCELLED)
    return LeaseReply(request_id=req.request_id, status="not_found",
                      reason=replies.already_answered_reason(status))


def forwarded_headers() -> dict[str, Any]:
    return {KIND_HEADER: CANCEL_KIND}


def is_forwarded_cancel(headers: dict[str, Any]) -> bool:
    return headers.get(KIND_HEADER) == CANCEL_KIND
