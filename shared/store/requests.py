"""Remembered request outcomes (``req#<user>#<request_id>``): a request repeated by the same
user with the same request_id gets the same answer (PROTOCOL §3, at least 24 h)."""

from __future__ import annotations

import json
from typing import Any

from shared.store.schema import TTL_ATTRIBUTE, request_key
from shared.store.table import Table


def outcome_item(user_id: str, request_id: str, outcome: dict[str, Any], *, now: float,
                 remember_seconds: int) -> dict[str, Any]:
    """The item that remembers ``outcome`` (also written inside the lease transaction)."""
    return {"instanceId": request_key(user_id, request_id), "outcome": json.dumps(outcome),
            "createdAt": now, TTL_ATTRIBUTE: int(now + remember_seconds)}


class Requests:
    def __init__(self, table: Table) -> None:
        self.table = table

    def recall(self, user_id: str, request_id: str) -> dict[str, Any] | None:
        """The outcome remembered for this request, or None."""
        item = self.table.get(request_key(user_id, request_id))
        return json.loads(item["outcome"]) if item else None

    def remember(self, user_id: str, request_id: str, outcome: dict[str, Any], *,
                 now: float, remember_seconds: int) -> dict[str, Any]:
        """Store an outcome unless one exists; returns the outcome that stands."""
        return self.settle(user_id, request_id, outcome, now=now,
                           remember_seconds=remember_seconds)[1]

    def settle(self, user_id: str, request_id: str, outcome: dict[str, Any], *,
               now: float, remember_seconds: int) -> tuple[bool, dict[str, Any]]:
        """``remember``, also telling whether this call stored it (True) or found one."""
        if self.table.put_new(outcome_item(user_id, request_id, outcome, now=now,
                                           remember_seconds=remember_seconds)):
            return True, outcome
        return False, self.recall(user_id, request_id) or outcome

    def replace(self, user_id: str, request_id: str, outcome: dict[str, Any], *,
                now: float, remember_seconds: int) -> None:
        """Overwrite the outcome (a lease undone: the first one no longer holds)."""
        self.table.put(outcome_item(user_id, request_id, outcome, now=now,
                                    remember_seconds=remember_seconds))

    def forget(self, user_id: str, request_id: str) -> None:
        self.table.delete(request_key(user_id, request_id))
