"""The reaper's Prometheus metrics, registered on the health server's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ReaperMetrics:
    """One counter per kind of reclaim, plus the pass duration and whether we are active."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.registry = r
        self.leases_expired = Counter(
            "workerpool_leases_expired", "Leases the reaper expired (leased -> draining).",
            registry=r)
        self.workers_dead = Counter(
            "workerpool_workers_dead", "Workers marked dead after HEARTBEAT_TIMEOUT of silence.",
            registry=r)
        self.leased_lost = Counter(
            "workerpool_leased_workers_lost",
            "Leased workers that died or vanished: a user lost their machine.", registry=r)
        self.boots_timed_out = Counter(
            "workerpool_boots_timed_out",
            "Instances replaced because they did not register within BOOT_TIMEOUT_SECONDS.",
            registry=r)
        self.orphans_removed = Counter(
            "workerpool_orphans_removed", "Table items removed because their instance is gone.",
            registry=r)
        self.recycled = Counter(
            "workerpool_recycled", "Workers recycled (instance terminated, item removed).",
            registry=r)
        self.races_lost = Counter(
            "workerpool_reaper_races_lost",
            "Conditional writes the reaper lost (a renew, heartbeat or registration won).",
            registry=r)
        self.pass_seconds = Histogram(
            "workerpool_reap_pass_seconds", "Duration of one reaper pass (reads and writes).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.active = Gauge(
            "workerpool_reaper_active", "1 while this replica holds the reaper lock.",
            registry=r)
