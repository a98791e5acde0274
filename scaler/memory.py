"""What the active scaler has learned of its pool, kept between passes and across a failover:
claim arrivals and boot times (the learned warm target, scaler/demand.py) and open capacity
circuits (scaler/circuit.py). It holds the state; the judgement is in those two modules. No
I/O: the loop notes ``notes()`` on the lock item (shared.leader ``note``) and a successor
reads them back with ``restore``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from scaler import circuit, demand
from scaler.circuit import Circuit
from scaler.demand import BootTimes, Demand, Launches, WarmTarget
from shared.state import Activity, AsgState, Worker

#: the lock item's attribute that holds the memory (one JSON string: DynamoDB stores no
#: floats inside maps the way our table adapter writes them)
NOTE = "scalerMemory"


class MemorySettings(Protocol):
    """The part of shared.config.Settings the warm target reads."""

    @property
    def warm_target(self) -> str: ...
    @property
    def target_available(self) -> int: ...
    @property
    def warm_margin(self) -> int: ...
    @property
    def demand_window_seconds(self) -> float: ...


@dataclass
class PoolMemory:
    demand: Demand = Demand()
    boots: BootTimes = BootTimes()
    launches: Launches = Launches()
    circuits: tuple[Circuit, ...] = ()
    last_seen: float | None = None  # our previous snapshot

    # --- claim arrivals and boot times ----------------------------------------------------
    def leased(self, t: float, window: float) -> None:
        """A dispatcher leased a worker at ``t``: one claim arrived."""
        self.demand = self.demand.arrived(t, window)

    def observe(self, state: AsgState, workers: Iterable[Worker], now: float,
                last_raise: float | None, limit: float) -> list[tuple[str, float]]:
        """One snapshot: instances seen launching, and boot times of the ones registered
        since (returned as (type, seconds))."""
        after = None if self.last_seen is None else max(self.last_seen, last_raise or 0.0)
        # registration: its own time, or its newest heartbeat (never earlier), or now
        registered = {w.instance_id: (w.instance_type, w.registered_at or (
            min(w.last_heartbeat, now) if w.last_heartbeat else None))
            for w in workers if w.status != "booting"}
        self.launches, samples = demand.launches_seen(self.launches, state.live_ids,
                                                      registered, now, after)
        self.boots = self.boots.added(samples, limit)
        self.last_seen = now
        return samples

    def warm(self, now: float, s: MemorySettings, first_type: str | None) -> WarmTarget:
        """The warm target now (fixed or learned), with its reasons."""
        return demand.warm_target(
            s.warm_target, s.target_available, s.warm_margin,
            self.demand.per_second(now, s.demand_window_seconds), self.boots.p90(first_type))

    # --- capacity circuits --------------------------------------------------------------
    def failed(self, activities: Iterable[Activity], first_type: str | None, now: float,
               cool_off: float) -> list[Circuit]:
        """Failed launches seen for the first time; returns the circuits they opened."""
        failures = [f for a in activities if (f := circuit.classify(a, first_type))]
        self.circuits, new = circuit.opened(self.circuits, failures, now, cool_off)
        return new

    def cooled(self, now: float) -> list[Circuit]:
        self.circuits, gone = circuit.closed(self.circuits, now)
        return gone

    def order(self, configured: Sequence[str], zones: Sequence[str]) -> tuple[str, ...]:
        return circuit.priority(configured, self.circuits, zones)

    def covered(self, newest: Activity | None, first_type: str | None,
                order: Sequence[str], zones: Sequence[str]) -> str | None:
        """When the newest launch failed for capacity or quota on a type whose circuit is
        open, the type the pool grows on instead (None: no other type to grow on)."""
        failure = circuit.classify(newest, first_type) if newest is not None else None
        if failure is None or not any((c.instance_type, c.zone) ==
                                      (failure.instance_type, failure.zone)
                                      for c in self.circuits):
            return None
        return circuit.growing_on(order, self.circuits, zones)

    # --- across a failover ------------------------------------------------------------
    def notes(self) -> dict[str, str]:
        return {NOTE: json.dumps({**demand.noted(self.demand, self.boots),
                                  "circuits": circuit.to_notes(self.circuits)})}

    def restore(self, notes: Mapping[str, Any], now: float) -> bool:
        """Take over a predecessor's memory (if it left one); True if it did."""
        try:
            data = json.loads(notes.get(NOTE) or "{}")
        except (TypeError, ValueError):
            return False
        if not isinstance(data, dict) or not data:
            return False
        self.demand, self.boots = demand.restored(data)
        self.circuits = circuit.from_notes(data.get("circuits"), now)
        return True

    def status(self, now: float) -> dict[str, Any]:
        """For /health."""
        return {"boot_samples": {k: len(v) for k, v in self.boots.by_type},
                "boot_seconds": {k: {"p50": demand.percentile(v, 50),
                                     "p90": demand.percentile(v, 90)}
                                 for k, v in self.boots.by_type},
                "circuits": circuit.describe(self.circuits, now)}
