"""One active replica among several: a lock item with a lease in DynamoDB (store.acquire_lock).

The active one renews every loop; a replica that dies stops renewing and another takes over
after ``ttl`` seconds. Decisions never depend on being active; only the loop asks. The
active one may leave notes on the lock item (``note``) that its successor reads when it takes
over: the scaler's last raise, so that a failover does not restart the cooldown from zero.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from shared.errors import AwsError, AwsUnavailable, LockLost
from shared.store import Store

log = logging.getLogger(__name__)


class Leadership:
    def __init__(self, store: Store, *, name: str, owner: str, ttl: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.name, self.owner, self.ttl = store, name, owner, ttl
        self.clock = clock
        self.active = False
        self.epoch: int | None = None  # the lock's epoch while we hold it
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
        self.epoch = int(item.get("epoch") or 0) if item is not None else None
        if got != self.active:
            log.info("became active" if got else "standing by",
                     extra={"event": "active" if got else "standby", "lock": self.name,
                            "owner": self.owner})
        self.active = got
        return got

    def fence(self) -> None:
        """Prove, right before a mutating AWS call, that we still hold the lock in our epoch
        (and extend it by a TTL, which the call must fit in: shared.aws FAST); LockLost
        otherwise, and we are a standby from now on. So two replicas never both act on
        stale absolute capacities, even when one of them was paused or slowed by AWS."""
        confirmed = False
        if self.active and self.epoch is not None:
            try:
                confirmed = self.store.locks.confirm(self.name, owner=self.owner,
                                                     epoch=self.epoch, ttl=self.ttl,
                                                     now=self.clock())
            except (AwsUnavailable, AwsError) as exc:
                log.warning("lock not confirmed", extra={"lock": self.name, "error": str(exc)})
        if not confirmed:
            if self.active:
                log.warning("lost the lock before acting; standing by",
                            extra={"event": "standby", "lock": self.name, "owner": self.owner})
            self.active, self.epoch = False, None
            raise LockLost(f"{self.name} lock not held by {self.owner}")

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
