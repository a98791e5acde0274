"""``python -m sim.fleet``: the whole worker fleet on one machine.

Watches the ASG (the emulator at AWS_ENDPOINT_URL) every ~0.5 s. For each instance that
appears, after FLEET_BOOT_DELAY seconds, it starts a real ``python -m agent`` with its own
FakeImds (that instance's id, and its private IP, type and zone from the emulated EC2; its
public IP a documentation address standing in for EC2's, sim/addresses.py) and
FakeCodeServer (sim/vm.py). When the instance leaves the ASG, its agent gets SIGTERM (so it
deregisters, as at a shutdown).

The agents' JSON log lines are merged into the fleet's stderr, one JSON object per line,
each with the ``instance_id`` of its VM and ``"vm": true``.

Control API (for tests and demos) on FLEET_CONTROL_PORT (0: a free port, logged in the
ready line as ``control_port``), see sim/fleetctl.py. FLEET_FAIL_BOOT=<n> makes the
first n instances fail to boot; FLEET_FAIL_BOOT=i-a,i-b names them.

A new instance gets the group's first mixed-instances override as its type (moto launches
the launch template's) and a boot delay drawn for that type (FLEET_BOOT_TIMES, FLEET_SEED).
With FLEET_CAPACITY_ERRORS (or the control API) its type and zone may lack capacity: it fails
to launch as on AWS (sim/fleetplan.py ``activity``, GET /activities).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.tls import ensure_certificate
from shared.asg import Asg
from shared.config import Settings
from shared.errors import WorkerpoolError
from shared.runtime import Runtime
from sim.addresses import PublicIps, made_up_addresses
from sim.fakes import FakeCodeServer, FakeImds
from sim.fleetctl import ControlServer
from sim.fleetplan import activity, boot_delay, launch_error, new_instances, options, plan
from sim.identity import IdentityAuthority
from sim.vm import SimVm, agent_env, start_agent

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
STOP_GRACE = 7.0  # SIGTERM → SIGKILL for agents when the fleet stops (fleet exits < 10 s)


class Fleet:
    def __init__(self, *, settings: Settings, asg: Asg, fail_boot: set[str],
                 fail_next: int, authority: IdentityAuthority | None = None,
                 tls: bool = False, boot_times: dict[str, tuple[float, float]] | None = None,
                 capacity_errors: dict[tuple[str, str], str] | None = None,
                 seed: int | None = None) -> None:
        self.settings = settings
        self.authority = authority  # signs each VM's identity document (FLEET_IDENTITY_KEY)
        self.tls = tls  # code-server over https, as on a real VM (FLEET_TLS)
        self.asg = asg
        self.fail_boot = fail_boot
        self.fail_next = fail_next
        self.vms: dict[str, SimVm] = {}
        self.public_ips = PublicIps()  # RFC 5737 stand-ins for EC2's public IPs
        self.boot_times = boot_times or {}  # type -> (median, p90) seconds
        self.capacity_errors = capacity_errors or {}  # (type, zone) -> AWS error code
        self.activities: deque[dict[str, Any]] = deque(maxlen=100)  # newest last
        self.rng = random.Random(seed)
        self.lock = threading.RLock()
        self.last_describe_ok: float | None = None
        self._out_lock = threading.Lock()
        self.config_dir = Path(tempfile.mkdtemp(prefix="workerpool-fleet-"))

    # --- one pass ---------------------------------------------------------------------
    def tick(self, now: float) -> None:
        try:
            state = self.asg.describe()
            live = state.live_ids
        except WorkerpoolError as exc:
            log.warning("cannot describe the ASG; retrying", extra={"error": str(exc)})
            return
        self.last_describe_ok = now
        with self.lock:
            self._reap(now)
            for iid in new_instances(self.vms, live):
                self._appeared(SimVm(iid, first_seen=now), state.instance_types)
            views = {iid: vm.view() for iid, vm in self.vms.items()}
            for action in plan(views, live, now, boot_delay=self.settings.fleet_boot_delay,
                               fail_boot=self.fail_boot):
                vm = self.vms[action.instance_id]
                if action.verb in ("start", "restart"):
                    self._start(vm)
                elif action.verb == "fail_boot":
                    vm.state = "failed_boot"
                    log.info("instance failed to boot (on request): no agent",
                             extra={"instance_id": vm.instance_id})
                else:
                    self._stop(vm, "instance left the ASG")

    def _appeared(self, vm: SimVm, types: tuple[str, ...]) -> None:
        """A new instance: its type (the group's first choice), then a failed launch (its
        type and zone lack capacity) or a boot of the delay drawn for its type."""
        iid = vm.instance_id
        self.vms[iid], vm.addresses = vm, self._addresses(iid)
        itype = vm.addresses["instance_type"] = (types or (vm.addresses["instance_type"],))[0]
        zone = vm.addresses["availability_zone"]
        code = launch_error(itype, zone, self.capacity_errors)
        self.activities.append(activity(iid, zone, datetime.now(UTC).isoformat(), code, itype))
        if code is not None:
            vm.state = "launch_failed"
            self.public_ips.release(iid)
            log.info("instance failed to launch (simulated %s)", code, extra={
                "instance_id": iid, "instance_type": itype, "zone": zone})
            try:  # AWS never had it; moto launches the replacement AWS would retry with
                self.asg.terminate(iid, decrement=False)
            except WorkerpoolError as exc:
                log.warning("could not drop the failed instance", extra={"error": str(exc)})
            return
        if self.fail_next > 0:
            self.fail_next -= 1
            self.fail_boot.add(iid)
        vm.boot_delay = boot_delay(itype, self.boot_times, self.settings.fleet_boot_delay,
                                   self.rng.random())
        log.info("instance appeared; booting", extra={
            "instance_id": iid, "boot_delay": vm.boot_delay, "instance_type": itype,
            "will_fail_boot": iid in self.fail_boot})

    def _reap(self, now: float) -> None:
        for vm in self.vms.values():
            if vm.proc is None or vm.state in ("stopped", "exited"):
                continue
            code = vm.proc.poll()
            if code is None:
                continue
            vm.exit_code, vm.exited_at = code, now
            vm.state = "stopped" if vm.state == "stopping" else "exited"
            log.log(logging.INFO if code == 0 else logging.WARNING, "agent exited",
                    extra={"instance_id": vm.instance_id, "exit_code": code,
                           "state": vm.state})
            if vm.state == "stopped":
                self._drop_fakes(vm)

    # --- agents -----------------------------------------------------------------------
    def _addresses(self, iid: str) -> dict[str, Any]:
        try:  # the emulated EC2 gives every instance IPs: the pool hands out what EC2 says
            found = self.asg.instance_addresses(iid)
            addresses = {**found, "instance_type": found["instance_type"] or "t3.medium",
                         "availability_zone": found["availability_zone"] or "us-east-1a"}
        except Exception as exc:  # any failure: made-up but stable values
            log.info("no EC2 description; using made-up IPs",
                     extra={"instance_id": iid, "error": repr(exc)[:200]})
            addresses = made_up_addresses(iid)
        # ...except its public IP: moto's are real AWS addresses (54.214.0.0/16). The VM's
        # IMDS and certificate get a documentation one (RFC 5737), so the registration, the
        # claim reply's URL and TLS all name it (sim/addresses.py)
        addresses["public_ip"] = self.public_ips.assign(iid, addresses["public_ip"])
        return addresses

    def _start(self, vm: SimVm) -> None:
        if vm.imds is None:
            vm.addresses = vm.addresses or self._addresses(vm.instance_id)
            vm.imds = FakeImds(instance_id=vm.instance_id, authority=self.authority,
                               **vm.addresses).start()
            tls_dir = None
            if self.tls:  # the agent makes it at its first start; here first, for the fake
                tls_dir = self.config_dir / vm.instance_id / "tls"
                ensure_certificate(tls_dir, [vm.addresses.get("private_ip"),
                                             vm.addresses.get("public_ip")])
            vm.code_server = FakeCodeServer(
                config_path=self.config_dir / vm.instance_id / "config.yaml",
                tls_dir=tls_dir).start()
        assert vm.code_server is not None
        env = agent_env(self.settings, vm.imds, vm.code_server,
                        key_file=self.config_dir / vm.instance_id / "agent.key")
        start_agent(vm, env, self._out_lock)
        assert vm.proc is not None
        log.info("agent started", extra={"instance_id": vm.instance_id, "pid": vm.proc.pid,
                                         "imds": vm.imds.url, "starts": vm.starts,
                                         "public_ip": vm.addresses.get("public_ip")})

    def _stop(self, vm: SimVm, why: str) -> None:
        proc = vm.proc
        if proc is not None and proc.poll() is None:
            if vm.state == "hung":  # a frozen VM cannot deregister: it just disappears
                proc.kill()
            else:
                proc.send_signal(signal.SIGTERM)
            vm.state = "stopping"
        else:
            vm.state = "stopped"
            self._drop_fakes(vm)
        log.info("stopping agent", extra={"instance_id": vm.instance_id, "reason": why})

    def _drop_fakes(self, vm: SimVm) -> None:
        for fake in (vm.imds, vm.code_server):
            if fake is not None:
                fake.stop()
        vm.imds = vm.code_server = None
        self.public_ips.release(vm.instance_id)

    # --- control (from the control server's threads) ----------------------------------
    def control(self, iid: str, verb: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            vm = self.vms.get(iid)
            if verb == "fail-boot":
                self.fail_boot.add(iid)
                return 200, {"instance_id": iid, "fail_boot": True}
            if vm is None:
                return 404, {"error": f"no instance {iid} in the fleet"}
            proc = vm.proc if vm.proc is not None and vm.proc.poll() is None else None
            if verb == "hang" and proc is not None:
                proc.send_signal(signal.SIGSTOP)  # heartbeats stop, no deregister
                vm.state = "hung"
            elif verb == "resume" and proc is not None and vm.state == "hung":
                proc.send_signal(signal.SIGCONT)
                vm.state = "running"
            elif verb == "kill" and proc is not None:
                proc.kill()  # a crash: systemd (here: the fleet) starts it again
            elif verb in ("unhealthy", "healthy") and vm.code_server is not None:
                vm.code_server.healthy = verb == "healthy"
            else:
                return 409, {"error": f"cannot {verb} {iid} in state {vm.state}"}
            log.info("control: %s", verb, extra={"instance_id": iid, "state": vm.state})
            return 200, vm.describe()

    def fail_next_boots(self, n: int) -> dict[str, Any]:
        with self.lock:
            self.fail_next += n
            return {"fail_next": self.fail_next}


    def listing(self) -> list[dict[str, Any]]:
        with self.lock:
            return [vm.describe() for vm in self.vms.values()]

    # --- shutdown ---------------------------------------------------------------------
    def stop_all(self) -> None:
        with self.lock:
            for vm in self.vms.values():
                if vm.proc is not None and vm.proc.poll() is None:
                    self._stop(vm, "fleet stopping")
            procs = [vm.proc for vm in self.vms.values() if vm.proc is not None]
        deadline = time.monotonic() + STOP_GRACE
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        with self.lock:
            self._reap(time.monotonic())
            for vm in self.vms.values():
                self._drop_fakes(vm)
        shutil.rmtree(self.config_dir, ignore_errors=True)


def main() -> int:
    with Runtime("fleet") as rt:
        s = rt.settings
        key = os.environ.get("FLEET_IDENTITY_KEY")
        fleet = Fleet(settings=s, asg=Asg.from_settings(s),
                      authority=IdentityAuthority.from_key_file(key) if key else None,
                      tls=os.environ.get("FLEET_TLS", "") not in ("", "0", "false"),
                      **options(os.environ))

        def aws_check() -> tuple[bool, str]:
            last = fleet.last_describe_ok
            ok = last is not None and time.monotonic() - last < 5
            return ok, "ASG described" if ok else "cannot describe the ASG"

        rt.health.add_check("aws", aws_check)
        control = ControlServer(fleet, port=int(os.environ.get("FLEET_CONTROL_PORT", "0")))
        control.start()
        fleet.tick(time.monotonic())
        rt.ready(control_port=control.port, asg=s.asg_name, attested=key is not None)
        try:
            while not rt.wait(POLL_SECONDS):
                fleet.tick(time.monotonic())
        finally:
            control.stop()
            fleet.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
