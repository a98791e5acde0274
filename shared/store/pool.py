"""Every worker by status, read without walking the pool on every pass: the scaler's
reconcile and the reaper's sweep (issue 15: DynamoDB reads at idle must not grow with the
pool; the sweep was a Scan of the whole table).

Every status but ``leased`` holds few items: ``free`` about the warm target, ``booting`` the
launches in flight, ``draining`` and ``dead`` what the reaper has yet to take. Those are read
on every pass (one index Query each). The leased are most of a big pool and change little
between two passes, so they are read in full only when this replica becomes active, then
kept:

* a worker that leaves ``leased`` shows up in another status's read (released: free;
  expired, idle or deregistered: draining; silent: dead) and leaves the kept set;
* a live instance of the group that no read placed and that is not kept (leased since the
  last pass, or launched and not yet tracked by the reaper) is looked up by key, at most
  LOOKUPS a pass; more than that (a burst of leases, a big launch) and the pass reads the
  leased in full instead;
* a full read also comes every RESYNC_SECONDS, so that nothing the rules above miss (an
  item deleted while leased) lingers for long, like the resync of a Kubernetes informer.

What a pass returns is what a full read would have returned, as far as the scaler's
decisions go (counts, who is registered, who is leased); ``read`` says how it read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from shared.state import STATUSES, Status, Worker
from shared.store.workers import Workers

#: The statuses read on every pass: few items each.
FEW: tuple[Status, ...] = tuple(s for s in STATUSES if s != "leased")
#: Most workers a pass looks up by key before it reads the leased in full instead.
LOOKUPS = 50
#: The longest the kept leased set goes without a full read.
RESYNC_SECONDS = 600.0

Read = Literal["full", "incremental"]


@dataclass(frozen=True)
class Plan:
    """What one pass reads beyond the FEW statuses."""

    full: bool
    look_up: frozenset[str] = frozenset()


def plan(live: Iterable[str], seen: Iterable[str], kept: Mapping[str, Worker], *,
         synced_at: float | None, now: float) -> Plan:
    """A full read of the leased when none was made yet, the last is RESYNC_SECONDS old, or
    more than LOOKUPS live instances are neither in this pass's reads nor kept leased;
    else a lookup of those."""
    if synced_at is None or now - synced_at >= RESYNC_SECONDS:
        return Plan(full=True)
    unplaced = frozenset(live) - frozenset(seen) - frozenset(kept)
    if len(unplaced) > LOOKUPS:
        return Plan(full=True)
    return Plan(full=False, look_up=unplaced)


def kept_leased(kept: Mapping[str, Worker], seen: Iterable[str],
                found: Iterable[Worker]) -> dict[str, Worker]:
    """The kept leased set after a pass without a full read: those seen in another status
    leave it, those looked up and found leased join it (with their item as read now)."""
    out = {i: w for i, w in kept.items() if i not in set(seen)}
    out.update({w.instance_id: w for w in found if w.status == "leased"})
    return out


class PoolReader:
    """Reads the workers for one pass (one thread: the scaler's loop, or the reaper's)."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self.kept: dict[str, Worker] = {}
        self.synced_at: float | None = None

    def forget(self) -> None:
        """The next pass reads in full (this replica becomes active: another one may have
        been meanwhile, and what we kept is old)."""
        self.kept, self.synced_at = {}, None

    def read(self, now: float, live: Iterable[str]) -> tuple[dict[Status, list[Worker]], Read]:
        """Every worker by status, and how the leased were read."""
        return self.complete(self.read_few(), now, live)

    def read_few(self) -> dict[Status, list[Worker]]:
        """The FEW statuses, one index Query each (a caller that reads them anyway passes
        its own to ``complete``)."""
        return {st: self.workers.by_status(st) for st in FEW}

    def complete(self, few: dict[Status, list[Worker]], now: float, live: Iterable[str]
                 ) -> tuple[dict[Status, list[Worker]], Read]:
        """``few`` (the FEW statuses, read before the group's ``live`` instances were) with
        the leased added: kept, looked up or read in full. Lookups are only of live
        instances, so nothing read after the group counts as out of it."""
        by_status: dict[Status, list[Worker]] = {st: list(few[st]) for st in FEW}
        seen = {w.instance_id for ws in by_status.values() for w in ws}
        p = plan(live, seen, self.kept, synced_at=self.synced_at, now=now)
        if p.full:
            self.kept = {w.instance_id: w for w in self.workers.by_status("leased")}
            self.synced_at = now
        else:
            found = [w for i in sorted(p.look_up) if (w := self.workers.get(i)) is not None]
            self.kept = kept_leased(self.kept, seen, found)
            for w in found:  # placed since this pass's reads (e.g. registered just now)
                if w.status != "leased" and w.instance_id not in seen:
                    by_status[w.status].append(w)
        by_status["leased"] = list(self.kept.values())
        return by_status, ("full" if p.full else "incremental")
