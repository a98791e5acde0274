"""The simulated fleet's IP addresses: private ones from 10.0.0.0/8, public ones from the
documentation networks of RFC 5737, never a real host's.

moto gives each instance a private IP in 10.0.0.0/8 (kept) and a public one in AWS's own
54.214.0.0/16 (replaced): the fleet maps each instance's public IP to a documentation
address before it makes that VM's IMDS and TLS certificate, so the agent's registration,
the claim reply's URL and the certificate all name the same address (docs/emulators.md).
"""

from __future__ import annotations

import ipaddress
import threading
import zlib
from typing import Any

#: RFC 5737's documentation networks: TEST-NET-1, -2 and -3.
DOCUMENTATION_NETS = tuple(ipaddress.IPv4Network(n) for n in
                           ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
#: Their host addresses (.1 to .254 of each), in a fixed order.
DOCUMENTATION_HOSTS = tuple(str(h) for net in DOCUMENTATION_NETS for h in net.hosts())


def is_documentation(ip: str) -> bool:
    """Whether ``ip`` lies in one of RFC 5737's documentation networks."""
    address = ipaddress.ip_address(ip)
    return any(address in net for net in DOCUMENTATION_NETS)


def documentation_ip(seed: str) -> str:
    """A documentation address chosen by ``seed`` (the same seed, the same address)."""
    return DOCUMENTATION_HOSTS[zlib.crc32(seed.encode()) % len(DOCUMENTATION_HOSTS)]


def made_up_addresses(instance_id: str) -> dict[str, Any]:
    """Stable fake IPs for an instance EC2 cannot describe: a private 10.x address and a
    public one from the documentation networks (RFC 5737), never a real AWS address."""
    h = zlib.crc32(instance_id.encode())
    return {"private_ip": f"10.0.{(h >> 8) % 250 + 1}.{h % 250 + 1}",
            "public_ip": documentation_ip(instance_id),
            "instance_type": "t3.medium", "availability_zone": "us-east-1a"}


class PublicIps:
    """Public IPs for the fleet's instances, in the documentation networks.

    An instance keeps its address until it is released (its VM stopped), so an agent that
    restarts registers the same one; two live instances never share one while the 762
    documentation addresses last (past that, addresses repeat: no simulated pool is that
    big, and a repeat only blurs a log line).
    """

    def __init__(self) -> None:
        self._by_instance: dict[str, str] = {}
        self._lock = threading.Lock()

    def assign(self, instance_id: str, ec2_public_ip: str | None) -> str | None:
        """The documentation address standing in for ``ec2_public_ip`` (None: the instance
        has no public IP, and keeps none)."""
        if ec2_public_ip is None:
            return None
        with self._lock:
            known = self._by_instance.get(instance_id)
            if known is not None:
                return known
            start = zlib.crc32(f"{instance_id}/{ec2_public_ip}".encode())
            taken = set(self._by_instance.values())
            n = len(DOCUMENTATION_HOSTS)
            chosen = next((DOCUMENTATION_HOSTS[(start + k) % n] for k in range(n)
                           if DOCUMENTATION_HOSTS[(start + k) % n] not in taken),
                          DOCUMENTATION_HOSTS[start % n])
            self._by_instance[instance_id] = chosen
            return chosen

    def release(self, instance_id: str) -> None:
        with self._lock:
            self._by_instance.pop(instance_id, None)
