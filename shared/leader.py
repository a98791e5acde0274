"""One active replica among several: a lock item with a lease in DynamoDB (store.acquire_lock).

The active one renews every loop; a replica that dies stops renewing and another takes over
after ``ttl`` seconds. Decisions never depend on being active; only the loop asks. The
active one may leave notes on the lock item (``note``) that its successor reads when it takes
over: the scaler's last raise, so that a failover does not restart the cooldown from zero.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.errors import AwsError, AwsUnavailable
from shared.store import Store

log = logging.getLogger(__name__)


class Leadership:
    def __init__(self, store: Store, *, name: str, owner: str, ttl: float) -> None:
        self.store, self.name, self.owner, self.ttl = store, name, owner, ttl
        self.active = False
        self.notes: dict[str, Any] = {}  # the lock item as last read (see ``note``)

    def refresh(self, now: float) -> bool:
        """Take or keep the lock; returns whether this replica is the active one now."""
        try:
            item = self.store.locks.acquire(self.name, owner=self.owner, ttl=self.ttl, now=now)
        except (AwsUnavailable, AwsError) as exc:
            log.warning("lock refresh failed", extra={"lock": self.name, "error": str(exc)})
            item = None
        got = item is not None
        self.notes = item if item is not None else self.notes
        if got != self.active:
            log.info("became active" if got else "standing by",
                     extra={"event": "active" if got else "standby", "lock": self.name,
                            "owner": self.owner})
        self.active = got
        return got

    def note(self, **notes: Any) -> None:
        """Leave notes on the lock item for the next active replica (best effort: losing one
        costs the next replica a little memory, never correctness)."""
        try:
            if self.store.locks.note(self.name, owner=self.owner, notes=notes):
                self.notes.update(notes)
        except (AwsUnavailable, AwsError) as exc:
            log.warning("could not note on the lock", extra={"lock": self.name,
                                                             "error": str(exc)})

    def resign(self) -> None:
        if self.active:
            try:
                self.store.locks.release(self.name, owner=self.owner)
            except (AwsUnavailable, AwsError):
                pass
            self.active = False
