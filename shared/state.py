"""Plain values the pure decisions work on: a worker as the table holds it, the ASG as AWS
describes it. No I/O here; the adapters (store.py, asg.py) build these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["booting", "free", "leased", "draining", "dead"]
STATUSES: tuple[Status, ...] = ("booting", "free", "leased", "draining", "dead")


@dataclass(frozen=True)
class Worker:
    instance_id: str
    status: Status
    last_heartbeat: float
    lease_expiry: float = 0.0  # 0 = no lease
    user_id: str | None = None
    healthy: bool = False
    public_ip: str | None = None
    private_ip: str | None = None
    request_id: str | None = None
    first_seen: float | None = None
    reason: str | None = None  # why draining / dead
    instance_type: str | None = None
    availability_zone: str | None = None
    tls_fingerprint: str | None = None  # code-server's certificate (SHA-256), if it serves TLS
    unhealthy_since: float | None = None  # first unhealthy heartbeat of the current spell
    registered_at: float | None = None  # its first accepted registration

    def url(self, port: int) -> str:
        """code-server's address: https when the worker registered a TLS certificate."""
        scheme = "https" if self.tls_fingerprint else "http"
        host = self.public_ip or self.private_ip or ""
        if ":" in host:  # IPv6
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"


@dataclass(frozen=True)
class AsgInstance:
    instance_id: str
    lifecycle_state: str  # Pending, InService, Terminating, ...
    health_status: str = "Healthy"
    protected: bool = False

    @property
    def leaving(self) -> bool:
        return self.lifecycle_state.startswith(("Terminat", "Detach", "Standby"))


@dataclass(frozen=True)
class AsgState:
    name: str
    min_size: int
    max_size: int
    desired: int
    instances: tuple[AsgInstance, ...] = field(default_factory=tuple)
    #: the mixed-instances overrides, in their order (the first is launched first); empty:
    #: a group with a launch template's one type
    instance_types: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()  # its Availability Zones

    @property
    def live_ids(self) -> frozenset[str]:
        return frozenset(i.instance_id for i in self.instances if not i.leaving)


@dataclass(frozen=True)
class Activity:
    """One ASG scaling activity (DescribeScalingActivities)."""

    activity_id: str
    status_code: str  # Successful, Failed, Cancelled, InProgress, ...
    status_message: str
    description: str
    start_time: float
    details: str = ""  # JSON text AWS adds, e.g. {"Availability Zone": "us-east-1a", ...}

    @property
    def failed(self) -> bool:
        return self.status_code in ("Failed", "Cancelled")


@dataclass(frozen=True)
class LeaseClock:
    """A worker and the clocks of its lease's end (reaper/ending.py): the user's last
    activity, the lease's start and renewal, the last notice sent (reaper/clocks.py)."""

    worker: Worker
    last_activity: float | None = None
    leased_at: float | None = None
    renewed_at: float | None = None
    notice: str | None = None

    @property
    def idle_since(self) -> float | None:
        """The user's last sign of life: activity, the lease's start, or a renew."""
        return max((t for t in (self.last_activity, self.leased_at, self.renewed_at) if t),
                   default=None)
