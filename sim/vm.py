"""One simulated worker VM: its fakes, its agent process, and what it would be told.

The agent runs as on a real VM: ``python -m agent`` with the VM's IMDS and code-server, the
broker settings, and no AWS credentials. Its stderr is relayed to the fleet's, one JSON
object per line, tagged with the VM's ``instance_id`` and ``"vm": true``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shared.config import Settings
from sim.fakes import FakeCodeServer, FakeImds
from sim.fleetplan import MemberView, State


@dataclass
class SimVm:
    """One simulated worker VM: its fakes and its agent process."""

    instance_id: str
    first_seen: float
    state: State = "booting"
    imds: FakeImds | None = None
    code_server: FakeCodeServer | None = None
    proc: subprocess.Popen[str] | None = None
    health_port: int | None = None
    exit_code: int | None = None
    exited_at: float | None = None
    starts: int = 0
    addresses: dict[str, Any] = field(default_factory=dict)
    boot_delay: float | None = None  # drawn for its type (FLEET_BOOT_TIMES); None: the default

    def view(self) -> MemberView:
        return MemberView(self.instance_id, self.state, self.first_seen, self.exit_code,
                          self.exited_at, self.boot_delay)

    def describe(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id, "state": self.state,
            "pid": self.proc.pid if self.proc else None, "health_port": self.health_port,
            "exit_code": self.exit_code, "starts": self.starts,
            "imds_url": self.imds.url if self.imds else None,
            "code_server_url": self.code_server.url if self.code_server else None,
            "code_server_healthy": self.code_server.healthy if self.code_server else None,
            "code_server_config": (str(self.code_server.config_path)
                                   if self.code_server else None),
            "code_server_last_activity": (self.code_server.last_activity
                                          if self.code_server else None),
            "code_server_active": self.code_server.active if self.code_server else None,
            # where its agent writes lease notices, and the lines it "wall"ed (vm_files)
            **({k: str(v) for k, v in vm_files(self.code_server.config_path.parent).items()}
               if self.code_server and self.code_server.config_path else {}),
            **self.addresses,
        }


def vm_files(vm_dir: Path) -> dict[str, Path]:
    """A VM's lease notice file (AGENT_NOTICE_FILE) and the stand-in for its users'
    terminals: AGENT_WALL_COMMAND appends each line to ``wall_log`` (never the real wall)."""
    return {"notice_file": vm_dir / "WORKERPOOL-NOTICE.txt", "wall_log": vm_dir / "wall.log"}


def agent_env(settings: Settings, imds: FakeImds, code_server: FakeCodeServer, *,
              key_file: Path) -> dict[str, str]:
    """The environment of a VM's agent: ours, pointed at its fakes (and its own key file,
    as on its own disk), without AWS access."""
    env = {**os.environ,
           "AMQP_URL": settings.amqp_url,
           "HEARTBEAT_INTERVAL": repr(settings.heartbeat_interval),
           "LOG_LEVEL": settings.log_level,
           "HEALTH_PORT": "0",
           "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url,
           "CODE_SERVER_URL": code_server.url,
           # per-lease passwords land in this VM's own config file
           "CODE_SERVER_CONFIG": str(code_server.config_path),
           "AGENT_KEY_FILE": str(key_file),
           # the fleet SIGTERMs an agent when its instance leaves the ASG: that is the VM
           # going away, whatever the host's own systemd says (agent/shutdown.py)
           "AGENT_DEREGISTER_ON_STOP": "always",
           # lease notices: a file of its own, and "wall" into a log (sim.vm.vm_files)
           "AGENT_NOTICE_FILE": str(vm_files(key_file.parent)["notice_file"]),
           "AGENT_WALL_COMMAND": "tee -a " + shlex.quote(str(vm_files(key_file.parent)
                                                            ["wall_log"])),
           **({"CODE_SERVER_TLS_DIR": str(code_server.tls_dir)} if code_server.tls_dir
              else {}),
           "PYTHONUNBUFFERED": "1"}
    for leak in [k for k in env if k.startswith("AWS_ENDPOINT_URL")
                 or k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]:
        env.pop(leak)  # a real VM's agent has no AWS credentials and needs none
    return env


def start_agent(vm: SimVm, env: dict[str, str], out_lock: threading.Lock) -> None:
    """Start the VM's agent and relay its log lines (the VM must have its fakes)."""
    vm.proc = subprocess.Popen([sys.executable, "-m", "agent"], env=env, text=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    vm.state, vm.exit_code, vm.exited_at, vm.health_port = "running", None, None, None
    vm.starts += 1
    threading.Thread(target=relay, args=(vm, vm.proc.stderr, out_lock), daemon=True,
                     name=f"log-{vm.instance_id}").start()


def relay(vm: SimVm, stream: IO[str] | None, out_lock: threading.Lock) -> None:
    """The agent's stderr → ours, one JSON object per line, tagged with its VM."""
    if stream is None:
        return
    for line in stream:
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError
        except ValueError:
            obj = {"process": "agent", "msg": line.rstrip("\n")}
        obj.setdefault("instance_id", vm.instance_id)
        obj["vm"] = True
        if obj.get("event") == "ready":
            vm.health_port = obj.get("health_port")
        with out_lock:
            sys.stderr.write(json.dumps(obj, default=str) + "\n")
            sys.stderr.flush()
