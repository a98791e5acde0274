"""The simulated fleet's public IPs: RFC 5737 documentation addresses standing in for the
real AWS ones moto hands out, the same for an instance all its life, never shared by two
live instances."""

from __future__ import annotations

import ipaddress

import pytest

from sim.addresses import DOCUMENTATION_HOSTS, PublicIps, is_documentation, made_up_addresses

RFC_5737 = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24",
                                                "203.0.113.0/24")]


def in_rfc_5737(ip: str) -> bool:
    return any(ipaddress.ip_address(ip) in net for net in RFC_5737)


def moto_ip(k: int) -> str:
    """What moto gives an instance: an address in AWS's 54.214.0.0/16."""
    return f"54.214.{k // 250}.{k % 250 + 1}"


def test_the_documentation_hosts_are_exactly_rfc_5737s_without_network_and_broadcast() -> None:
    assert len(DOCUMENTATION_HOSTS) == len(set(DOCUMENTATION_HOSTS)) == 3 * 254
    assert all(in_rfc_5737(ip) for ip in DOCUMENTATION_HOSTS)
    assert "192.0.2.0" not in DOCUMENTATION_HOSTS and "203.0.113.255" not in DOCUMENTATION_HOSTS


@pytest.mark.parametrize(("ip", "expected"), [
    ("192.0.2.1", True), ("198.51.100.254", True), ("203.0.113.7", True),
    ("198.51.101.1", False), ("54.214.3.4", False), ("10.0.0.1", False)])
def test_is_documentation(ip: str, expected: bool) -> None:
    assert is_documentation(ip) is expected


def test_every_moto_public_ip_becomes_a_documentation_address_unique_among_live_instances(
        ) -> None:
    ips = PublicIps()
    given = {f"i-{k:017x}": ips.assign(f"i-{k:017x}", moto_ip(k)) for k in range(700)}
    assert all(ip is not None and in_rfc_5737(ip) for ip in given.values())
    assert len(set(given.values())) == 700


def test_an_instance_keeps_its_address_until_released() -> None:
    ips = PublicIps()
    first = ips.assign("i-a", "54.214.1.2")
    assert ips.assign("i-a", "54.214.1.2") == first  # an agent restart registers the same
    ips.release("i-a")
    assert ips.assign("i-a", "54.214.1.2") == first  # chosen by the same seed again


def test_a_released_address_goes_to_the_next_instance_and_a_full_range_still_answers(
        ) -> None:
    ips = PublicIps()
    first = [ips.assign(f"i-{k}", moto_ip(k)) for k in range(len(DOCUMENTATION_HOSTS))]
    assert sorted(first) == sorted(DOCUMENTATION_HOSTS)  # every address used once
    ips.release("i-0")
    assert ips.assign("i-new", "54.214.9.9") == first[0]  # the only one free
    extra = ips.assign("i-extra", "54.214.9.10")  # past 762 live: a repeat, still RFC 5737
    assert extra is not None and in_rfc_5737(extra)


def test_an_instance_without_a_public_ip_gets_none() -> None:
    assert PublicIps().assign("i-a", None) is None


def test_made_up_addresses_are_private_10_and_public_documentation() -> None:
    got = made_up_addresses("i-0123456789abcdef0")
    assert ipaddress.ip_address(got["private_ip"]) in ipaddress.ip_network("10.0.0.0/8")
    assert in_rfc_5737(got["public_ip"])
