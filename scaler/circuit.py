"""Memory of capacity errors (pure): which instance types, in which zones, lacked capacity or
quota lately, and the order of types the group should try now.

A launch that fails for lack of capacity (InsufficientInstanceCapacity) or quota
(VcpuLimitExceeded, "vCPU limit", InstanceLimitExceeded) opens a **circuit** for that type
and zone for CAPACITY_COOL_OFF_SECONDS; another failure while it is open extends it; once it
has cooled off the type goes back to its place (and a failure there opens it again). A
quota is regional and AWS's message names no type: it is charged to the type the group
launches first, in every zone (``*``). The group's mixed-instances overrides are then
**ordered**: types with no open circuit first, then types open in some of the group's zones,
then types open in all of them, each in the configured order (WORKER_INSTANCE_TYPES). No
type is ever removed, so when every type is out AWS still tries them all.

While a type behind the failure has an open circuit and another type is not blocked
everywhere, launches are not reported failing: the pool keeps growing on that other type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from shared.state import Activity

ANY_ZONE = "*"
CAPACITY = "InsufficientInstanceCapacity"
QUOTA = "VcpuLimitExceeded"

_TYPE = re.compile(r"\b([a-z][a-z0-9-]*\.(?:nano|micro|small|medium|large|\d*xlarge|metal"
                   r"[a-z0-9-]*))\b")
_ZONE = re.compile(r"\(([a-z]{2}(?:-[a-z]+)+-\d[a-z])\)")


@dataclass(frozen=True)
class CapacityFailure:
    """A launch that failed for capacity or quota: of which type, where, and AWS's words."""

    instance_type: str
    zone: str  # ANY_ZONE: all of them (a quota)
    code: str
    message: str


@dataclass(frozen=True)
class Circuit:
    instance_type: str
    zone: str
    until: float
    code: str
    message: str


def classify(activity: Activity, first_type: str | None) -> CapacityFailure | None:
    """A failed activity that lacked capacity or quota, or None (any other failure, or a
    success). ``first_type``: the type the group launched first (a quota names none)."""
    if not activity.failed:
        return None
    text = f"{activity.status_message} {activity.description}"
    lowered = text.lower()
    if "vcpulimitexceeded" in lowered or "vcpu limit" in lowered or \
            "instancelimitexceeded" in lowered or "instance limit" in lowered:
        code = QUOTA
    elif "insufficientinstancecapacity" in lowered or ("sufficient" in lowered
                                                         and "capacity" in lowered):
        code = CAPACITY
    else:
        return None
    found = _TYPE.search(text)
    itype = found.group(1) if found and code == CAPACITY else first_type
    if itype is None:
        return None
    zone = ANY_ZONE if code == QUOTA else (_detail_zone(activity.details)
                                           or _message_zone(text) or ANY_ZONE)
    return CapacityFailure(itype, zone, code, activity.status_message or activity.description)


def _detail_zone(details: str) -> str | None:
    try:
        zone = json.loads(details).get("Availability Zone") if details else None
    except (ValueError, AttributeError):
        return None
    return zone if isinstance(zone, str) and zone else None


def _message_zone(text: str) -> str | None:
    found = _ZONE.search(text)
    return found.group(1) if found else None


def opened(circuits: Sequence[Circuit], failures: Iterable[CapacityFailure], now: float,
           cool_off: float) -> tuple[tuple[Circuit, ...], list[Circuit]]:
    """(circuits after these failures, the ones newly opened). A failure on an open circuit
    extends it from ``now``."""
    known = {(c.instance_type, c.zone): c for c in circuits}
    new = []
    for f in failures:
        key = (f.instance_type, f.zone)
        circuit = Circuit(f.instance_type, f.zone, now + cool_off, f.code, f.message)
        if key not in known:
            new.append(circuit)
        known[key] = circuit
    return tuple(sorted(known.values(), key=_key)), new


def closed(circuits: Sequence[Circuit], now: float
           ) -> tuple[tuple[Circuit, ...], list[Circuit]]:
    """(circuits still open, the ones that cooled off by ``now``): a closed type goes back to
    its configured place, and a failure there opens it again."""
    keep = tuple(c for c in circuits if c.until > now)
    return keep, [c for c in circuits if c.until <= now]


def _key(c: Circuit) -> tuple[str, str]:
    return c.instance_type, c.zone


def blocked(circuits: Sequence[Circuit], itype: str, zones: Sequence[str]) -> int:
    """0: nowhere; 1: in some of ``zones``; 2: in every one (or a quota, or zones unknown)."""
    mine = {c.zone for c in circuits if c.instance_type == itype}
    if not mine:
        return 0
    if ANY_ZONE in mine or not zones or set(zones) <= mine:
        return 2
    return 1


def priority(configured: Sequence[str], circuits: Sequence[Circuit],
             zones: Sequence[str]) -> tuple[str, ...]:
    """The configured types ordered by how blocked they are (stable: configured order within
    each rank)."""
    return tuple(sorted(configured, key=lambda t: blocked(circuits, t, zones)))


def growing_on(order: Sequence[str], circuits: Sequence[Circuit],
               zones: Sequence[str]) -> str | None:
    """The first type in ``order`` that is not blocked everywhere: what the pool grows on."""
    return next((t for t in order if blocked(circuits, t, zones) < 2), None)


def to_notes(circuits: Sequence[Circuit]) -> list[list[object]]:
    return [[c.instance_type, c.zone, c.until, c.code, c.message[:300]] for c in circuits]


def from_notes(value: object, now: float) -> tuple[Circuit, ...]:
    """Circuits a predecessor noted (those still open at ``now``); none if unreadable."""
    out = []
    try:
        for itype, zone, until, code, message in value or []:  # type: ignore[attr-defined]
            if float(until) > now:
                out.append(Circuit(str(itype), str(zone), float(until), str(code),
                                   str(message)))
    except (TypeError, ValueError):
        return ()
    return tuple(sorted(out, key=_key))


def describe(circuits: Sequence[Circuit], now: float) -> list[Mapping[str, object]]:
    """For /health and logs."""
    return [{"instance_type": c.instance_type, "zone": c.zone, "code": c.code,
             "seconds_left": round(c.until - now, 1)} for c in circuits]
