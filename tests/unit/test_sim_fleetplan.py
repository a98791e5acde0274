"""The simulated fleet's pure parts: which agents to start, stop or restart, and the
addresses it makes up for an instance EC2 cannot describe."""

from __future__ import annotations

import ipaddress

import pytest

from sim.addresses import made_up_addresses
from sim.fleetplan import FleetAction, MemberView, new_instances, plan


def m(iid: str, state: str, first_seen: float = 0.0, **kw: object) -> MemberView:
    return MemberView(iid, state, first_seen, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "members", "live", "now", "expected"),
    [
        ("a booting instance waits out the boot delay", {"i-a": m("i-a", "booting", 10.0)},
         {"i-a"}, 11.0, []),
        ("then its agent starts", {"i-a": m("i-a", "booting", 10.0)}, {"i-a"}, 12.0,
         [FleetAction("start", "i-a")]),
        ("unless it is told to fail boot", {"i-b": m("i-b", "booting", 10.0)}, {"i-b"}, 12.0,
         [FleetAction("fail_boot", "i-b")]),
        ("an instance that left the ASG has its agent stopped",
         {"i-a": m("i-a", "running")}, set(), 12.0, [FleetAction("stop", "i-a")]),
        ("a hung one too", {"i-a": m("i-a", "hung")}, set(), 12.0,
         [FleetAction("stop", "i-a")]),
        ("a stopped one is left alone", {"i-a": m("i-a", "stopped")}, set(), 12.0, []),
        ("a crashed agent restarts after a second",
         {"i-a": m("i-a", "exited", exit_code=-9, exited_at=11.5)}, {"i-a"}, 12.6,
         [FleetAction("restart", "i-a")]),
        ("not before", {"i-a": m("i-a", "exited", exit_code=1, exited_at=11.5)}, {"i-a"},
         12.0, []),
        ("an agent that exited 0 stays down",
         {"i-a": m("i-a", "exited", exit_code=0, exited_at=1.0)}, {"i-a"}, 12.0, []),
    ],
)
def test_the_fleet_plan(case: str, members: dict[str, MemberView], live: set[str], now: float,
                        expected: list[FleetAction]) -> None:
    assert plan(members, live, now, boot_delay=2.0, fail_boot={"i-b"}) == expected, case


def test_new_instances_are_the_live_ones_not_yet_tracked() -> None:
    assert new_instances({"i-a": 1}, {"i-a", "i-c", "i-b"}) == ["i-b", "i-c"]


def test_made_up_public_ips_are_documentation_addresses_and_stable() -> None:
    documentation = [ipaddress.ip_network(net) for net in
                     ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
    for k in range(500):
        iid = f"i-{k * 7919:017x}"
        got = made_up_addresses(iid)
        public = ipaddress.ip_address(got["public_ip"])
        assert any(public in net for net in documentation), (iid, public)
        assert ipaddress.ip_address(got["private_ip"]).is_private, iid
        assert made_up_addresses(iid) == got
