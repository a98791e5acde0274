"""The scaler's Prometheus metrics, on the registry its /metrics serves.

Names follow Prometheus's conventions (docs/monitoring.md): ``_total`` on counters, the unit
as a suffix, and the Auto Scaling Group's own figures named as the ASG's."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ScalerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.scale_calls = Counter("workerpool_scale_calls_total",
                                   "SetDesiredCapacity calls made", registry=r)
        self.desired = Gauge("workerpool_asg_desired_capacity",
                             "the ASG's DesiredCapacity, as last read or set", registry=r)
        self.max_size = Gauge("workerpool_asg_max_size", "the ASG's MaxSize, as last read",
                              registry=r)
        self.missing = Gauge("workerpool_missing_workers",
                             "TARGET_AVAILABLE + waiting - free - booting (>= 0)", registry=r)
        self.workers = Gauge("workerpool_scaler_workers", "workers by status, as counted",
                             ["status"], registry=r)
        self.waiting = Gauge("workerpool_scaler_waiting_claims",
                             "claims waiting, as last reported", registry=r)
        self.capacity_ok = Gauge("workerpool_capacity_ok",
                                 "1 when the pool can grow, 0 at MaxSize or failing launches",
                                 registry=r)
        self.launch_failures = Counter("workerpool_launch_failures_total",
                                       "failed or cancelled ASG scaling activities seen",
                                       registry=r)
        self.protection = Counter("workerpool_protection_changes_total",
                                  "instances (un)protected from scale-in", ["protected"],
                                  registry=r)
        self.drained = Counter("workerpool_surplus_drained_total",
                               "free workers handed back as surplus", registry=r)
        self.events = Counter("workerpool_scaling_events_total",
                              "events from dispatchers", ["type"], registry=r)
        self.pool_reads = Counter(
            "workerpool_scaler_pool_reads_total",
            "reconcile passes by how they read the leased workers: full (every leased item), "
            "or incremental (kept from the last pass, new ones looked up by key)", ["read"],
            registry=r)
        self.active = Gauge("workerpool_scaler_active", "1 on the active replica", registry=r)
        self.reconcile_seconds = Histogram("workerpool_reconcile_seconds",
                                           "one reconcile pass", registry=r)
        self.errors = Counter("workerpool_scaler_errors_total", "reconcile passes that failed",
                              registry=r)
        self.refused = Counter("workerpool_refused_messages_total",
                               "events refused and dead-lettered, by reason", ["reason"],
                               registry=r)
        self._learned(r)
        self.capacity_ok.set(1)

    def _learned(self, r: CollectorRegistry) -> None:
        """What the pool learns: the warm target's figures, capacity circuits."""
        self.warm_target = Gauge("workerpool_warm_target",
                                 "free workers the scaler keeps (fixed or learned)", registry=r)
        self.claims_per_minute = Gauge("workerpool_forecast_claims_per_minute",
                                       "forecast claim arrivals (learned warm target)",
                                       registry=r)
        self.ready_p90 = Gauge("workerpool_time_to_ready_p90_seconds",
                               "p90 launch-to-registration time of the type launched first",
                               registry=r)
        self.circuits_open = Gauge("workerpool_capacity_circuits_open",
                                   "instance type/zone pairs kept back after capacity errors",
                                   registry=r)
        self.circuits_opened = Counter("workerpool_capacity_circuits_opened_total",
                                       "capacity circuits opened", ["instance_type", "zone"],
                                       registry=r)
