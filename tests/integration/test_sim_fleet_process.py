"""``python -m sim.fleet`` against moto's ASG and the real broker: instances the ASG
launches get real agents that register (EC2's private IP, a documentation public IP in
place of moto's real-AWS one); terminated ones deregister; the control API makes an
instance hang, fail boot, or turn unhealthy."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import ssl
import time
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509

from shared.asg import Asg
from shared.config import Settings
from sim.addresses import is_documentation
from sim.tap import AgentsTap
from tests.conftest import env_for
from tests.helpers import Proc, wait_for

INTERVAL = 0.5


@pytest.fixture
def tap(pool: Settings) -> Iterator[AgentsTap]:
    with AgentsTap(pool.amqp_url) as t:
        yield t


@pytest.fixture
def asg(pool: Settings) -> Asg:
    return Asg.from_settings(pool)


@pytest.fixture
def fleet(pool: Settings) -> Iterator[Proc]:
    proc = Proc("sim.fleet", env_for(pool, heartbeat_interval=INTERVAL,
                                      fleet_boot_delay=0.3, fleet_fail_boot="", fleet_tls=1))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.kill()


def control(fleet: Proc, path: str, method: str = "POST") -> Any:
    port = fleet.wait_ready()["control_port"]
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def instances(fleet: Proc) -> dict[str, dict[str, Any]]:
    return {i["instance_id"]: i for i in control(fleet, "/instances", "GET")}


def certificate_ips(url: str) -> set[str]:
    """The IP addresses a TLS server's certificate names (its subjectAltName)."""
    parts = urlsplit(url)
    pem = ssl.get_server_certificate((parts.hostname or "", parts.port or 443), timeout=5)
    san = x509.load_pem_x509_certificate(pem.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def test_agents_register_ec2s_private_ip_and_a_documentation_public_ip(
        fleet: Proc, tap: AgentsTap, asg: Asg) -> None:
    asg.set_desired(2)
    ids = sorted(asg.describe().live_ids)
    assert len(ids) == 2
    listing: dict[str, dict[str, Any]] = {}
    for iid in ids:
        reg = wait_for(lambda iid=iid: tap.of(iid, "register"), timeout=15,
                       what=f"{iid} registered")[0]
        described = asg.ec2.describe_instances(InstanceIds=[iid])
        inst = described["Reservations"][0]["Instances"][0]
        assert reg["private_ip"] == inst["PrivateIpAddress"]
        assert ipaddress.ip_address(reg["private_ip"]) in ipaddress.ip_network("10.0.0.0/8")
        # moto's public IP is a real AWS address: the VM is told a documentation one
        assert not is_documentation(inst["PublicIpAddress"])
        assert is_documentation(reg["public_ip"]), reg["public_ip"]
        wait_for(lambda iid=iid: tap.of(iid, "heartbeat"), what=f"{iid} heartbeats")
        listing = instances(fleet)
        assert listing[iid]["public_ip"] == reg["public_ip"]  # the fleet says the same
        # and code-server's certificate names the address the agent registered
        assert {reg["public_ip"], reg["private_ip"]} <= certificate_ips(
            listing[iid]["code_server_url"])
    assert len({listing[i]["public_ip"] for i in ids}) == 2
    assert {listing[i]["state"] for i in ids} == {"running"}
    assert all(listing[i]["pid"] for i in ids)
    # the agents' own lines come through the fleet's stderr, tagged with their VM
    wait_for(lambda: {l.get("instance_id") for l in fleet.lines
                      if l.get("vm") and l.get("event") == "registered"} >= set(ids),
             what="agent lines merged into the fleet's log")


def test_a_terminated_instance_has_its_agent_deregister_and_stop(
        fleet: Proc, tap: AgentsTap, asg: Asg) -> None:
    asg.set_desired(1)
    (iid,) = asg.describe().live_ids
    wait_for(lambda: tap.of(iid, "heartbeat"), timeout=15, what="heartbeats")
    pid = instances(fleet)[iid]["pid"]
    asg.terminate(iid, decrement=True)
    dereg = wait_for(lambda: tap.of(iid, "deregister"), timeout=10, what="a deregister")
    assert dereg[0]["reason"] == "shutdown"
    wait_for(lambda: instances(fleet)[iid]["state"] == "stopped", what="the agent stopped")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_control_hang_stops_heartbeats_without_a_deregister(
        fleet: Proc, tap: AgentsTap, asg: Asg) -> None:
    asg.set_desired(1)
    (iid,) = asg.describe().live_ids
    wait_for(lambda: tap.of(iid, "heartbeat"), timeout=15, what="heartbeats")
    assert control(fleet, f"/instances/{iid}/hang")["state"] == "hung"
    time.sleep(INTERVAL)  # a heartbeat in flight may still land
    count = len(tap.of(iid, "heartbeat"))
    time.sleep(4 * INTERVAL)
    assert len(tap.of(iid, "heartbeat")) == count
    assert tap.of(iid, "deregister") == []
    control(fleet, f"/instances/{iid}/resume")
    wait_for(lambda: len(tap.of(iid, "heartbeat")) > count, what="heartbeats after resume")


def test_an_instance_told_to_fail_boot_never_registers_and_unhealthy_shows_in_heartbeats(
        fleet: Proc, tap: AgentsTap, asg: Asg) -> None:
    control(fleet, "/fail-boot?next=1")
    asg.set_desired(2)
    wait_for(lambda: any(i["state"] == "failed_boot" for i in instances(fleet).values()),
             timeout=10, what="one instance failing boot")
    listing = instances(fleet)
    failed = next(i for i, v in listing.items() if v["state"] == "failed_boot")
    good = next(i for i in listing if i != failed)
    wait_for(lambda: tap.of(good, "heartbeat"), timeout=15, what="the good one heartbeats")
    assert listing[failed]["pid"] is None
    control(fleet, f"/instances/{good}/unhealthy")
    wait_for(lambda: any(m["healthy"] is False for m in tap.of(good, "heartbeat")),
             what="healthy false")
    assert tap.of(failed) == []


def test_the_fleet_stops_its_agents_on_sigterm(fleet: Proc, tap: AgentsTap, asg: Asg) -> None:
    asg.set_desired(1)
    (iid,) = asg.describe().live_ids
    wait_for(lambda: tap.of(iid, "heartbeat"), timeout=15, what="heartbeats")
    fleet.signal(signal.SIGTERM)
    assert fleet.popen.wait(10) == 0
    wait_for(lambda: tap.of(iid, "deregister"), what="the agent deregistered")
