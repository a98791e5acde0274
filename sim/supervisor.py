"""``workerpool dev``'s children: started in their own sessions, their JSON log lines
merged, prefixed and shortened, and stopped in an order that loses nothing.

The stop order: first the fleet (its agents deregister as they go), the scaler and the
reaper; then, once the dispatchers have taken what the agents sent last from
``workerpool.agents``, the dispatchers. Stopped together, the dispatchers used to leave the
agents' deregister messages in the queue for the next run to find.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

COLORS = ["36", "35", "33", "32", "34", "31", "96", "95"]
STOP_GRACE = 12.0  # SIGTERM → SIGKILL, per phase (the fleet itself takes up to ~8 s)
DRAIN_SECONDS = 5.0  # how long the dispatchers get to take the agents' last messages


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[str]
    color: str
    ready: bool = False
    health_port: int | None = None
    buffer: str = field(default="")

    @property
    def running(self) -> bool:
        return self.popen.poll() is None


def stop_phases(names: list[str]) -> tuple[list[str], list[str]]:
    """Who stops first (the agents' fleet and everything else that is no consumer of
    theirs), and who after (the dispatchers, which consume ``workerpool.agents``)."""
    dispatchers = [n for n in names if n.startswith("dispatcher")]
    return ([n for n in reversed(names) if n not in dispatchers], list(reversed(dispatchers)))


def short(line: str) -> str:
    """A JSON log line as ``level msg key=value ...`` (raw text if it is not JSON)."""
    try:
        rec = json.loads(line)
    except ValueError:
        return line
    if not isinstance(rec, dict):
        return line
    skip = {"ts", "level", "process", "logger", "msg", "exc"}
    extras = " ".join(f"{k}={v}" for k, v in rec.items() if k not in skip)
    text = f"{rec.get('level', ''):<7} {rec.get('msg', '')} {extras}".rstrip()
    if rec.get("exc"):
        text += "\n" + rec["exc"]
    return text


class Supervisor:
    def __init__(self, amqp_url: str) -> None:
        self.amqp_url = amqp_url  # where the agents' queue is drained before the dispatchers go
        self.children: list[Child] = []
        self.sel = selectors.DefaultSelector()
        self.tty = sys.stdout.isatty()
        self.stopping = False
        self.hurry = False  # a second Ctrl-C: kill what is left at once

    def say(self, text: str) -> None:
        print(f"\033[1m[dev]\033[0m {text}" if self.tty else f"[dev] {text}", flush=True)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        popen = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, bufsize=1,
                                 start_new_session=True)
        child = Child(name, popen, COLORS[len(self.children) % len(COLORS)])
        self.children.append(child)
        assert popen.stdout is not None
        os.set_blocking(popen.stdout.fileno(), False)
        self.sel.register(popen.stdout, selectors.EVENT_READ, child)
        return child

    def pump(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            child: Child = key.data
            chunk = key.fileobj.read()  # type: ignore[union-attr]
            if not chunk:
                self.sel.unregister(key.fileobj)
                continue
            child.buffer += chunk
            *lines, child.buffer = child.buffer.split("\n")
            for line in lines:
                self.show(child, line)

    def show(self, child: Child, line: str) -> None:
        if not line.strip():
            return
        try:
            rec = json.loads(line)
        except ValueError:
            rec = {}
        if isinstance(rec, dict) and rec.get("event") == "ready" and not child.ready:
            child.ready = True
            child.health_port = rec.get("health_port")
            self.say(f"✓ {child.name} ready (health http://127.0.0.1:{child.health_port}/health)")
        prefix = f"{child.name:<12}|"
        if self.tty:
            prefix = f"\033[{child.color}m{prefix}\033[0m"
        print(f"{prefix} {short(line)}", flush=True)

    # --- stopping ---------------------------------------------------------------------
    def stop_all(self) -> None:
        self.stopping = True
        self.say("stopping: the fleet (its agents deregister), the scaler and the reaper "
                 "first, then the dispatchers (Ctrl-C again: kill them now)")
        first, last = stop_phases([c.name for c in self.children])
        self._stop([c for c in self.children if c.name in first])
        if any(c.running for c in self.children if c.name in last):
            self._drain_agents()
        self._stop([c for c in self.children if c.name in last])
        for c in self.children:
            c.popen.wait()
        self.pump(0)

    def _stop(self, group: list[Child]) -> None:
        """SIGTERM ``group`` (in its order), wait for it, SIGKILL what outlives the grace
        (with its process group: the fleet's agents). SIGTERM goes to the child alone: the
        fleet stops its own agents, and one signal each is what they expect."""
        for c in group:
            if c.running:
                c.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline and not self.hurry and any(c.running for c in group):
            self.pump(0.1)
        for c in group:
            if c.running:
                self.say(f"killing {c.name}" + (" (Ctrl-C again)" if self.hurry else
                                                 ": it did not stop in time"))
                try:
                    os.killpg(c.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _drain_agents(self) -> None:
        """Wait (up to DRAIN_SECONDS) until ``workerpool.agents`` has stayed empty for three
        looks in a row, 0.2 s apart: the dispatchers have taken the agents' last messages.
        (A passive declare counts only ready messages: one a dispatcher has taken but not
        yet acked goes back to the queue when it closes, hence the looks in a row.)"""
        from shared import topology
        from shared.broker import queue_depths
        from shared.errors import BrokerUnavailable

        deadline = time.monotonic() + DRAIN_SECONDS
        quiet, depth = 0, None
        while time.monotonic() < deadline and not self.hurry:
            try:
                depth = queue_depths(self.amqp_url, "dev", [topology.AGENTS])[topology.AGENTS]
            except BrokerUnavailable:
                return  # nothing to wait for that we could see
            quiet = quiet + 1 if not depth else 0
            if quiet >= 3:
                return
            self.pump(0.2)
        if depth:
            self.say(f"{depth} message(s) from the agents are still in {topology.AGENTS}; "
                     "stopping the dispatchers anyway")
