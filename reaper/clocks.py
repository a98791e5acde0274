"""The reaper's reads and writes of lease clocks (idle reclaim and notices), on the table's
own interface (shared.store.table: no SDK here). Each write is conditional on the lease
being exactly as the pass read it (``as_seen``): a renew, new activity, a release or another
reaper's notice that lands meanwhile wins, and the write raises ``ConditionFailed``.

(Store code: it would sit in shared/store/workers.py beside ``LeaseClock`` and the
heartbeat that writes ``lastActivity``, which is at its size limit.)
"""

from __future__ import annotations

from typing import Any

from shared.state import LeaseClock, Worker
from shared.store.schema import LEASE_INDEX, to_lease_clock, to_worker
from shared.store.table import Table

#: Leases read per page: a page is one request, capped at 1 MB by DynamoDB anyway.
PAGE = 1000


def as_seen(c: LeaseClock) -> tuple[str, dict[str, Any]]:
    """The condition "this lease is still exactly as read": same holder, expiry, last
    activity, renewal and notice (an absent attribute must still be absent)."""
    parts = ["#s = :leased", "userId = :u", "leaseExpiry = :exp"]
    values: dict[str, Any] = {":leased": "leased", ":u": c.worker.user_id,
                              ":exp": c.worker.lease_expiry}
    for attr, value, name in (("lastActivity", c.last_activity, ":act"),
                              ("renewedAt", c.renewed_at, ":ren"),
                              ("notice", c.notice, ":old")):
        if value is None:
            parts.append(f"attribute_not_exists({attr})")
        else:
            parts.append(f"{attr} = {name}")
            values[name] = value
    return " AND ".join(parts), values


class LeaseClocks:
    def __init__(self, table: Table) -> None:
        self.table = table

    def read(self, *, ending_before: float | None = None) -> list[LeaseClock]:
        """Leased workers (only those whose lease expires before ``ending_before``): one
        Query on the status-lease index, never a Scan."""
        condition = "#s = :leased"
        values: dict[str, Any] = {":leased": "leased"}
        if ending_before is not None:
            condition += " AND leaseExpiry < :t"
            values[":t"] = ending_before
        return [to_lease_clock(item) for item in
                self.table.query(LEASE_INDEX, condition, values, page_size=PAGE)]

    def expire_idle(self, clock: LeaseClock, *, now: float) -> Worker:
        """leased → draining (reason ``idle``), only while the lease is as seen."""
        condition, values = as_seen(clock)
        item = self.table.update(
            clock.worker.instance_id, "SET #s = :draining, reason = :r, drainedAt = :now",
            {**values, ":draining": "draining", ":r": "idle", ":now": now},
            condition=condition, what="expire_idle: lease renewed or used meanwhile")
        return to_worker(item)

    def set_notice(self, clock: LeaseClock, notice: str, *, now: float) -> None:
        """Remember the notice about to be sent, only while the lease is as seen: two
        reapers, or one restarted, never send it twice; a moved end makes a new key."""
        condition, values = as_seen(clock)
        self.table.update(clock.worker.instance_id, "SET notice = :n, noticeAt = :now",
                          {**values, ":n": notice, ":now": now}, condition=condition,
                          what="notice: lease changed or notice sent meanwhile")

    def undo_notice(self, instance_id: str, *, sent: str, previous: str | None) -> None:
        """Forget a notice that could not be published, so that the next pass sends it;
        only if it is still the one we wrote."""
        values: dict[str, Any] = {":sent": sent}
        update = "REMOVE notice"
        if previous is not None:
            update, values[":p"] = "SET notice = :p", previous
        self.table.update(instance_id, update, values, condition="notice = :sent",
                          what="undo_notice: another notice since")
