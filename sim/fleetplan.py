"""The simulated fleet's judgement (pure): which agents to start, stop or restart.

An instance that appears in the ASG "boots" for FLEET_BOOT_DELAY seconds, then its agent
starts (or, when told to fail boot, never does: that is what the reaper's boot timeout is
for). An instance that leaves the ASG has its agent stopped (SIGTERM, as at a real
shutdown). An agent that exits with an error is started again after ``RESTART_SEC``, as
systemd's ``Restart=on-failure`` does on a real VM.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

RESTART_SEC = 1.0

State = Literal["booting", "running", "hung", "failed_boot", "stopping", "stopped", "exited"]
Verb = Literal["start", "fail_boot", "stop", "restart"]


@dataclass(frozen=True)
class MemberView:
    """What the plan needs to know of one simulated VM."""

    instance_id: str
    state: State
    first_seen: float
    exit_code: int | None = None
    exited_at: float | None = None


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
        elif m.state == "booting" and now - m.first_seen >= boot_delay:
            actions.append(FleetAction("fail_boot" if iid in fail_boot else "start", iid))
        elif (m.state == "exited" and m.exit_code not in (0, None) and m.exited_at is not None
              and now - m.exited_at >= RESTART_SEC):
            actions.append(FleetAction("restart", iid))
    return actions


def new_instances(members: Collection[str], live: Collection[str]) -> list[str]:
    """Live instances the fleet has not seen yet, in a stable order."""
    return sorted(set(live) - set(members))
