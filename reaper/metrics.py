"""The reaper's Prometheus metrics, registered on the health server's registry.

Counters are named with their ``_total`` as exposed (prometheus-client would add it anyway)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ReaperMetrics:
    """One counter per kind of reclaim, plus the pass duration and whether we are active."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.registry = r
        self.leases_expired = Counter(
            "workerpool_leases_expired_total", "Leases the reaper expired (leased -> draining).",
            registry=r)
        self.workers_dead = Counter(
            "workerpool_workers_dead_total",
            "Workers marked dead after HEARTBEAT_TIMEOUT of silence.", registry=r)
        self.leased_lost = Counter(
            "workerpool_leased_workers_lost_total",
            "Leased workers that died or vanished: a user lost their machine.", registry=r)
        self.boots_timed_out = Counter(
            "workerpool_boots_timed_out_total",
            "Instances replaced because they did not register within BOOT_TIMEOUT_SECONDS.",
            registry=r)
        self.orphans_removed = Counter(
            "workerpool_orphans_removed_total",
            "Table items removed because their instance is gone.", registry=r)
        self.recycled = Counter(
            "workerpool_recycled_total", "Workers recycled (instance terminated, item removed).",
            registry=r)
        self.races_lost = Counter(
            "workerpool_reaper_races_lost_total",
            "Conditional writes the reaper lost (a renew, heartbeat or registration won).",
            registry=r)
        self.pass_seconds = Histogram(
            "workerpool_reap_pass_seconds", "Duration of one reaper pass (reads and writes).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.leases_idle = Counter(
            "workerpool_leases_idle_reclaimed_total",
            "Leases the reaper ended for idleness (no activity for IDLE_SECONDS).", registry=r)
        self.notices = Counter(
            "workerpool_lease_notices_total",
            "Events sent to users on workerpool.events, by type (lease_ending, "
            "lease_extended, lease_ended).", ["type"], registry=r)
        self.notices_failed = Counter(
            "workerpool_lease_notices_failed_total",
            "Events for users the broker did not take (a warning is tried again next pass).",
            registry=r)
        self.active = Gauge(
            "workerpool_reaper_active", "1 while this replica holds the reaper lock.",
            registry=r)
