"""The dispatcher's Prometheus metrics, on the Runtime's health registry (/metrics).

Names follow Prometheus's conventions: ``_total`` on counters, the unit as a suffix
(docs/monitoring.md lists them all, with the alerts built on them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Claim latency buckets: milliseconds for a free worker, up to the longest wait (900 s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class Metrics:
    """One attribute per series; labels are fixed words, never ids."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.claims = Counter("workerpool_claims_total", "Claims answered, by outcome",
                              ["outcome"], registry=registry)
        self.claim_latency = Histogram(
            "workerpool_claim_latency_seconds",
            "From a claim's first arrival to its reply (waiting included)",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.waiting = Gauge("workerpool_waiting_claims",
                             "Claims held in this dispatcher's waiting room", registry=registry)
        self.free = Gauge("workerpool_free_workers", "Free, healthy workers (last count)",
                          registry=registry)
        self.heartbeats = Counter("workerpool_heartbeats_total",
                                  "Heartbeat messages handled (coalesced ones included)",
                                  registry=registry)
        self.heartbeat_writes = Counter("workerpool_heartbeat_writes_total",
                                        "DynamoDB writes made for heartbeats",
                                        registry=registry)
        self.resubscriptions = Counter(
            "workerpool_resubscriptions_total",
            "Times the dispatcher consumed everything again on a new connection (a lost "
            "connection, a closed channel, a consumer the broker cancelled)",
            registry=registry)
        self.heartbeat_writes_failed = Counter(
            "workerpool_heartbeat_writes_failed_total",
            "Heartbeat writes dropped because DynamoDB did not answer", registry=registry)
        self.registrations = Counter("workerpool_registrations_total",
                                     "Agent registrations, by result", ["result"],
                                     registry=registry)
        self.leases = Counter("workerpool_lease_requests_total",
                              "Requests on workerpool.leases answered (release, renew, cancel, "
                              "status), by the reply's status", ["status"], registry=registry)
        self.refused = Counter(
            "workerpool_refused_messages_total",
            "Messages refused and dead-lettered, by queue and reason (too large, invalid, "
            "untrusted sender, user_id, unattested, signature, agent key, not in asg)",
            ["queue", "reason"], registry=registry)
        self.unknown_fields = Counter(
            "workerpool_unknown_fields_total",
            "Fields of accepted messages that this version does not know (ignored), by "
            "message type", ["type"], registry=registry)
        self.lease_attempts = Counter(
            "workerpool_lease_attempts_total",
            "Lease transactions a claim made, by result: won, or taken (the worker was no "
            "longer free: leased by another dispatcher meanwhile, or silent)", ["result"],
            registry=registry)
        self.passwords = Counter("workerpool_lease_passwords_total",
                                 "Per-lease code-server passwords, by result "
                                 "(set, not_confirmed)", ["result"], registry=registry)

    def count_refused(self, queue: str, kind: str) -> None:
        self.refused.labels(queue=queue, reason=kind).inc()
