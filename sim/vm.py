"""One simulated worker VM: its fakes, its agent process, and what it would be told.

The agent runs as on a real VM: ``python -m agent`` with the VM's IMDS and code-server, the
broker settings, and no AWS credentials. Its stderr is relayed to the fleet's, one JSON
object per line, tagged with the VM's ``instance_id`` and ``"vm": true``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shared.config import Settings
from sim.fakes import FakeCodeServer, FakeImds
from sim.fleetplan import MemberView, State

#: RFC 5737's documentation networks: a made-up public IP that can never be someone's host.
DOCUMENTATION_NETS = ("192.0.2", "198.51.100", "203.0.113")


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

    def view(self) -> MemberView:
        return MemberView(self.instance_id, self.state, self.first_seen, self.exit_code,
                          self.exited_at)

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
            **self.addresses,
        }


def made_up_addresses(instance_id: str) -> dict[str, Any]:
    """Stable fake IPs for an instance EC2 cannot describe: a private 10.x address and a
    public one from the documentation networks (RFC 5737), never a real AWS address."""
    h = zlib.crc32(instance_id.encode())
    net = DOCUMENTATION_NETS[(h >> 16) % len(DOCUMENTATION_NETS)]
    return {"private_ip": f"10.0.{(h >> 8) % 250 + 1}.{h % 250 + 1}",
            "public_ip": f"{net}.{h % 254 + 1}",
            "instance_type": "t3.medium", "availability_zone": "us-east-1a"}


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
           **({"CODE_SERVER_TLS_DIR": str(code_server.tls_dir)} if code_server.tls_dir
              else {}),
           "PYTHONUNBUFFERED": "1"}
    for leak in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(leak, None)  # a real VM's agent has no AWS credentials and needs none
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
