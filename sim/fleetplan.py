"""The simulated fleet's judgement (pure): which agents to start, stop or restart, how long an
instance boots, and which launches fail for capacity (with the activity AWS would log).

An instance that appears in the ASG "boots" for FLEET_BOOT_DELAY seconds (or a delay drawn
for its type from FLEET_BOOT_TIMES), then its agent starts (or, when told to fail boot,
never does: that is what the reaper's boot timeout is for). An instance that leaves the
ASG has its agent stopped (SIGTERM, as at a real shutdown). An agent that exits with an
error is started again after ``RESTART_SEC``, as systemd's ``Restart=on-failure`` does on a
real VM.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

RESTART_SEC = 1.0

State = Literal["booting", "running", "hung", "failed_boot", "stopping", "stopped", "exited",
                "launch_failed"]
Verb = Literal["start", "fail_boot", "stop", "restart"]


@dataclass(frozen=True)
class MemberView:
    """What the plan needs to know of one simulated VM."""

    instance_id: str
    state: State
    first_seen: float
    exit_code: int | None = None
    exited_at: float | None = None
    boot_delay: float | None = None  # its own (drawn for its type); None: FLEET_BOOT_DELAY


@dataclass(frozen=True)
class FleetAction:
    verb: Verb
    instance_id: str


def plan(members: Mapping[str, MemberView], live: Collection[str], now: float, *,
         boot_delay: float, fail_boot: Collection[str]) -> list[FleetAction]:
    """Actions for the members already tracked (new instances are tracked by the loop)."""
    actions: list[FleetAction] = []
    for iid in sorted(members):
        m = members[iid]
        if iid not in live:
            if m.state in ("booting", "running", "hung", "failed_boot", "exited"):
                actions.append(FleetAction("stop", iid))
        elif m.state == "booting" and now - m.first_seen >= (
                boot_delay if m.boot_delay is None else m.boot_delay):
            actions.append(FleetAction("fail_boot" if iid in fail_boot else "start", iid))
        elif (m.state == "exited" and m.exit_code not in (0, None) and m.exited_at is not None
              and now - m.exited_at >= RESTART_SEC):
            actions.append(FleetAction("restart", iid))
    return actions


def new_instances(members: Collection[str], live: Collection[str]) -> list[str]:
    """Live instances the fleet has not seen yet, in a stable order."""
    return sorted(set(live) - set(members))


def parse_fail_boot(value: str) -> tuple[set[str], int]:
    """FLEET_FAIL_BOOT: ``"2"`` (the first two instances) or ``"i-a,i-b"`` (those)."""
    value = value.strip()
    if not value:
        return set(), 0
    if value.isdigit():
        return set(), int(value)
    return {v.strip() for v in value.split(",") if v.strip()}, 0


# --- boot times -----------------------------------------------------------------------
def parse_boot_times(value: str) -> dict[str, tuple[float, float]]:
    """FLEET_BOOT_TIMES: ``t3.medium=40:70,m5.large=30:45,*=45:80``: per instance type (``*``:
    any other), the median and the 90th percentile of its boot delay, in seconds."""
    out = {}
    for part in (p.strip() for p in value.split(",") if p.strip()):
        itype, _, times = part.partition("=")
        median, _, p90 = times.partition(":")
        m, q = float(median), float(p90 or median)
        if m < 0 or q < m:
            raise ValueError(f"FLEET_BOOT_TIMES: {part!r}: want median:p90 with p90 >= median")
        out[itype.strip()] = (m, q)
    return out


def boot_delay(instance_type: str, spec: Mapping[str, tuple[float, float]], default: float,
               u: float) -> float:
    """A boot delay for an instance of this type: log-normal with the median and p90 of
    ``spec`` (its type's, else ``*``'s), at quantile ``u`` in (0, 1); ``default`` without."""
    median, p90 = spec.get(instance_type) or spec.get("*") or (default, default)
    if median <= 0 or p90 <= median:
        return median
    sigma = math.log(p90 / median) / NormalDist().inv_cdf(0.9)
    return median * math.exp(sigma * NormalDist().inv_cdf(min(max(u, 1e-6), 1 - 1e-6)))


# --- capacity errors (moto never fails a launch: the fleet does, as AWS would) ---------
CAPACITY_CODES = ("InsufficientInstanceCapacity", "VcpuLimitExceeded")
ANY_ZONE = "*"


def parse_capacity_errors(value: str) -> dict[tuple[str, str], str]:
    """FLEET_CAPACITY_ERRORS: ``t3.medium@us-east-1a=InsufficientInstanceCapacity,m5.large``:
    launches of that type (in that zone; any without ``@``) fail with that code (default
    InsufficientInstanceCapacity)."""
    out = {}
    for part in (p.strip() for p in value.split(",") if p.strip()):
        where, _, code = part.partition("=")
        itype, _, zone = where.partition("@")
        code = code.strip() or CAPACITY_CODES[0]
        if code not in CAPACITY_CODES:
            raise ValueError(f"FLEET_CAPACITY_ERRORS: {part!r}: code must be one of "
                             f"{', '.join(CAPACITY_CODES)}")
        out[(itype.strip(), zone.strip() or ANY_ZONE)] = code
    return out


def launch_error(instance_type: str, zone: str, errors: Mapping[tuple[str, str], str]
                 ) -> str | None:
    """The code a launch of this type in this zone fails with, or None."""
    return errors.get((instance_type, zone)) or errors.get((instance_type, ANY_ZONE))


def aws_message(code: str, instance_type: str, zone: str) -> str:
    """AWS's own words for a failed launch (StatusMessage of the scaling activity)."""
    if code == "VcpuLimitExceeded":
        return ("You have requested more vCPU capacity than your current vCPU limit of 32 "
                "allows for the instance bucket that the specified instance type belongs to. "
                "Please visit http://aws.amazon.com/contact-us/ec2-request to request an "
                "adjustment to this limit. Launching EC2 instance failed.")
    return (f"We currently do not have sufficient {instance_type} capacity in the "
            f"Availability Zone you requested ({zone}). Our system will be working on "
            f"provisioning additional capacity. You can currently get {instance_type} "
            "capacity by not specifying an Availability Zone in your request or choosing "
            "another zone. Launching EC2 instance failed.")


def activity(instance_id: str, zone: str, started: str, code: str | None = None,
             instance_type: str = "") -> dict[str, Any]:
    """One DescribeScalingActivities entry, as AWS shapes it (StartTime ISO 8601): the
    launch of ``instance_id`` succeeded, or (``code``) failed for capacity."""
    details = json.dumps({"Subnet ID": "subnet-sim", "Availability Zone": zone})
    if code is None:
        return {"ActivityId": f"launch-{instance_id}", "StatusCode": "Successful",
                "StatusMessage": "", "Description": f"Launching a new EC2 instance: "
                f"{instance_id}", "Details": details, "StartTime": started}
    message = aws_message(code, instance_type, zone)
    return {"ActivityId": f"failed-{instance_id}", "StatusCode": "Failed",
            "StatusMessage": message, "Details": details, "StartTime": started,
            "Description": f"Launching a new EC2 instance.  Status Reason: {message}"}


def options(environ: Mapping[str, str]) -> dict[str, Any]:
    """The fleet's own variables (FLEET_FAIL_BOOT, FLEET_BOOT_TIMES, FLEET_CAPACITY_ERRORS,
    FLEET_SEED) as keyword arguments of sim.fleet.Fleet."""
    fail_boot, fail_next = parse_fail_boot(environ.get("FLEET_FAIL_BOOT", ""))
    seed = environ.get("FLEET_SEED", "").strip()
    return {"fail_boot": fail_boot, "fail_next": fail_next,
            "boot_times": parse_boot_times(environ.get("FLEET_BOOT_TIMES", "")),
            "capacity_errors": parse_capacity_errors(environ.get("FLEET_CAPACITY_ERRORS", "")),
            "seed": int(seed) if seed else None}
