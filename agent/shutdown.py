"""Is this SIGTERM the VM shutting down (deregister) or only the agent stopping (keep going)?

PROTOCOL §4 v2: the agent deregisters only when the VM itself is shutting down; an agent
restart on a leased VM keeps the lease. A deregister ends a lease (draining, then recycled),
so an upgrade or a ``systemctl restart workerpool-agent`` must not send one.

How it is told (docs/agent.md, "Stop or shutdown"): ``systemctl is-system-running``.
systemd reports ``stopping`` from the moment ``shutdown.target`` has a start job, which every
poweroff, reboot, halt and kexec has (EC2's stop and terminate, a spot interruption and an
ASG termination all reach the VM as an ACPI power-off), and only then: a unit's restart or
stop leaves it ``running``/``degraded``, or ``starting`` during boot. It needs no privilege
(a property read over D-Bus; the unit orders the agent after dbus.service so that the bus
outlives it at shutdown). Where systemd is not init (a container, the simulated fleet, the
tests), ``systemctl`` is missing or prints ``offline``: there a stop is all the agent will
ever hear of the machine going away, so it deregisters, as before.

``AGENT_DEREGISTER_ON_STOP`` (``auto`` | ``always`` | ``never``) overrides the question.

``system_state()`` asks (I/O); ``stop_decision()`` decides (pure, tested as a table).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

VARIABLE = "AGENT_DEREGISTER_ON_STOP"
Mode = Literal["auto", "always", "never"]
MODES: tuple[str, ...] = get_args(Mode)

#: Longest wait for systemctl: well inside the 9 s stop budget, with room for the deregister.
SYSTEMCTL_TIMEOUT = 2.0

#: systemd's words for "up and not shutting down": only the agent is stopping.
SYSTEM_UP = frozenset({"running", "degraded", "starting", "initializing", "maintenance"})


@dataclass(frozen=True)
class SystemState:
    """What ``systemctl is-system-running`` said: its one word, or why there is none."""

    state: str | None = None  # "running", "stopping", "offline", ...; None: no answer
    missing: bool = False  # no systemctl at all: no systemd here
    error: str | None = None  # why there is no answer (timed out, no bus, ...)

    def describe(self) -> str:
        if self.missing:
            return "no systemctl"
        return self.state if self.state is not None else f"no answer ({self.error})"


@dataclass(frozen=True)
class StopDecision:
    deregister: bool
    reason: str  # in words, for the "stopping" log line


def stop_decision(mode: Mode, system: SystemState | None) -> StopDecision:
    """Deregister on this stop? ``system`` is systemd's answer (None: not asked)."""
    if mode == "always":
        return StopDecision(True, f"{VARIABLE}=always")
    if mode == "never":
        return StopDecision(False, f"{VARIABLE}=never")
    if system is None or system.missing:
        return StopDecision(True, "no systemd (no systemctl): a stop means the machine goes")
    if system.state == "stopping":
        return StopDecision(True, "systemd is shutting the VM down (stopping)")
    if system.state == "offline":
        return StopDecision(True, "systemd is not init here (offline): a stop means the "
                                  "machine goes")
    if system.state in SYSTEM_UP:
        return StopDecision(False, f"systemd is {system.state}, not shutting down: only the "
                                   "agent stops (restart, upgrade); the lease is kept")
    # Unsure. Deregistering a VM that stays up ends its user's lease for nothing; keeping a
    # VM that goes costs at most HEARTBEAT_TIMEOUT before the pool calls it dead.
    return StopDecision(False, f"systemd gave {system.describe()}: keeping the registration "
                               "(if the VM is going, the heartbeat timeout tells the pool)")


def system_state(run: Callable[..., Any] = subprocess.run,
                 timeout: float = SYSTEMCTL_TIMEOUT) -> SystemState:
    """Ask ``systemctl is-system-running`` (found on PATH). Never raises."""
    try:
        done = run(["systemctl", "is-system-running"], stdin=subprocess.DEVNULL,
                   capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return SystemState(missing=True)
    except subprocess.TimeoutExpired:
        return SystemState(error=f"systemctl timed out after {timeout:g}s")
    except OSError as exc:
        return SystemState(error=f"systemctl could not run: {exc}")
    # it exits non-zero for every state but "running": the word on stdout is the answer
    words = (done.stdout or "").split()
    if words:
        return SystemState(state=words[0])
    why = (done.stderr or "").strip().splitlines()
    return SystemState(error=f"exit {done.returncode}: {why[0][:200] if why else 'no output'}")
