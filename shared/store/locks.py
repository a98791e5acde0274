"""Lease-based locks (``lock#<name>``): one active scaler, one active reaper.

The holder renews ``lockedUntil``; another owner may take the lock once it has passed, and
each takeover raises ``epoch``. ``confirm`` is the fence: a conditional write that succeeds
only while this owner, in this epoch, still holds an unexpired lock (and extends it), made
right before each mutating AWS call. The holder may leave notes on the item (e.g. the
scaler's last raise) for whoever holds it next.
"""

from __future__ import annotations

from typing import Any

from shared.errors import ConditionFailed
from shared.store.schema import lock_key
from shared.store.table import Table


class Locks:
    def __init__(self, table: Table) -> None:
        self.table = table

    def acquire(self, name: str, *, owner: str, ttl: float, now: float
                ) -> dict[str, Any] | None:
        """Take or keep the lock for ``ttl`` seconds: the lock item (with any notes an
        earlier holder left on it, and its ``epoch``), or None if another owner holds it.
        Keeping it leaves the epoch; taking it (no owner, or an expired one) raises it."""
        try:
            return self.table.update(
                lock_key(name), "SET lockedUntil = :until, epoch = if_not_exists(epoch, :zero)",
                {":me": owner, ":until": now + ttl, ":now": now, ":zero": 0},
                condition="#o = :me AND lockedUntil >= :now", names={"#o": "owner"},
                what="not ours, or expired")
        except ConditionFailed:
            pass
        try:
            return self.table.update(
                lock_key(name), "SET #o = :me, lockedUntil = :until ADD epoch :one",
                {":me": owner, ":until": now + ttl, ":now": now, ":one": 1},
                condition="attribute_not_exists(#o) OR lockedUntil < :now",
                names={"#o": "owner"}, what="lock held by another owner")
        except ConditionFailed:
            return None

    def confirm(self, name: str, *, owner: str, epoch: int, ttl: float, now: float) -> bool:
        """The fence: True (and the lock extended to ``now + ttl``) only if this owner still
        holds the lock in ``epoch`` and it has not expired."""
        try:
            self.table.update(
                lock_key(name), "SET lockedUntil = :until",
                {":me": owner, ":until": now + ttl, ":now": now, ":epoch": epoch},
                condition="#o = :me AND epoch = :epoch AND lockedUntil >= :now",
                names={"#o": "owner"}, what="lock lost")
            return True
        except ConditionFailed:
            return False

    def note(self, name: str, *, owner: str, notes: dict[str, Any]) -> bool:
        """Leave ``notes`` (attribute → value) on the lock for whoever holds it next; only
        the holder may. False if we no longer hold it."""
        names = {f"#n{i}": k for i, k in enumerate(notes)}
        values = {f":n{i}": v for i, v in enumerate(notes.values())}
        try:
            self.table.update(
                lock_key(name), "SET " + ", ".join(f"#n{i} = :n{i}" for i in range(len(notes))),
                {":me": owner, **values}, condition="#o = :me", names={"#o": "owner", **names},
                what="lock no longer ours")
            return True
        except ConditionFailed:
            return False

    def release(self, name: str, *, owner: str) -> None:
        """Give the lock up at once (its notes stay for the next holder)."""
        try:
            self.table.update(lock_key(name), "REMOVE #o, lockedUntil", {":me": owner},
                              condition="#o = :me", names={"#o": "owner"},
                              what="lock no longer ours")
        except ConditionFailed:
            pass  # another replica took it over meanwhile: nothing to give up
