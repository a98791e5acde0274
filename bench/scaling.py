"""Benchmark: bursts of claims against a cold pool, missing-machines vs naive +1, side by side.

    .venv/bin/python bench/scaling.py [--bursts 10,100,1000] [--boot 60]

Each run drives the real scaler (scaler.loop.Scaler: the same reconcile, burst coalescing,
cooldown and policy as `python -m scaler`) against moto in-process, with a simulated
dispatcher and fleet around it, on a virtual clock (0.05 s steps), so a 60 s boot costs no
real minute and every run sees the same event stream:

* t=0: N claims arrive at once; none finds a free worker; the dispatcher reports each
  (ShortageEvent with the waiting count: one event per change).
* an instance registers BOOT seconds after it appears in the ASG; the dispatcher gives it to
  the oldest waiting claim (LeasedEvent) and, while free < target or claims wait, reports
  the new counts (ShortageEvent).

Figures: SetDesiredCapacity calls and all Auto Scaling calls (of which Describe
AutoScalingGroups / SetInstanceProtection / DescribeScalingActivities), time from the first shortage
event until desired covers the need (N + TARGET_AVAILABLE), the highest desired reached and
the overshoot (machines launched beyond the need), and the machines still missing 1 s after
the burst.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

from moto import mock_aws  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from scaler.loop import Scaler  # noqa: E402
from scaler.metrics import ScalerMetrics  # noqa: E402
from shared.asg import Asg  # noqa: E402
from shared.aws import client  # noqa: E402
from shared.config import parse_settings  # noqa: E402
from shared.errors import ConditionFailed  # noqa: E402
from shared.messages import LeasedEvent, ShortageEvent  # noqa: E402
from shared.store import Store  # noqa: E402

EPOCH = 1_800_000_000.0
STEP = 0.05
TARGET = 2


class Counting:
    """The autoscaling client, counting every operation the scaler makes."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, Counter[str]()

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.real, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return fn(*args, **kwargs)

        return counted


def at(t: float) -> datetime:
    return datetime.fromtimestamp(EPOCH + t, UTC)


def run(strategy: str, n: int, boot: float) -> dict[str, Any]:
    with mock_aws():
        s = parse_settings(target_available=TARGET, cooldown_seconds=30, reconcile_interval=5,
                           scale_strategy=strategy, claim_wait_seconds=900,
                           aws_endpoint_url=None, table_name=f"bench_{strategy}_{n}")
        store = Store(table=s.table_name, region=s.aws_region)
        store.create_table()
        counting = Counting(client("autoscaling", region=s.aws_region))
        asg = Asg(name=s.asg_name, region=s.aws_region, autoscaling=counting)
        asg.ensure_group(launch_template=s.launch_template_name, ami_id=s.worker_ami_id,
                         instance_type=s.worker_instance_type, max_size=3 * n + 10)
        view = Asg(name=s.asg_name, region=s.aws_region)  # the simulator's own, not counted
        counting.calls.clear()
        scaler = Scaler(settings=s, store=store, asg=asg,
                        metrics=ScalerMetrics(CollectorRegistry()),
                        publish_capacity=lambda st: None)
        seen: dict[str, float] = {}  # instance → when it appeared in the ASG
        waiting, served, free, need = 0, 0, 0, n + TARGET
        t, covered_at, missing_1s, peak = 0.0, None, None, 0
        wall = time.monotonic()
        scaler.due_at = EPOCH + 1  # its first scheduled pass
        for _ in range(n):  # the burst
            waiting += 1
            scaler.handle(ShortageEvent(type="shortage", free=0, waiting=waiting,
                                        sent_at=at(0)), EPOCH)
        horizon = 3 * boot + 40
        while t < horizon:
            t = round(t + (STEP if t < 2 else 10 * STEP), 3)  # fine-grained around the burst
            scaler.tick(EPOCH + t)
            state = view.describe()
            peak = max(peak, state.desired)
            if covered_at is None and state.desired >= need:
                covered_at = t
            if missing_1s is None and t >= 1.0:
                missing_1s = max(0, need - state.desired)
            for iid in state.live_ids - seen.keys():
                seen[iid] = t
            for iid in [i for i, t0 in seen.items() if t0 + boot <= t]:
                seen[iid] = float("inf")
                worker = store.workers.register(iid, now=EPOCH + t, private_ip="10.0.0.1",
                                        public_ip=None)
                free += 1
                if waiting:
                    try:
                        store.leases.grant(worker, user_id=f"u{served}", request_id=f"r{served}",
                                    lease_seconds=3600, now=EPOCH + t, max_leases=1,
                                    remember_seconds=86400)
                    except ConditionFailed:
                        continue
                    waiting, served, free = waiting - 1, served + 1, free - 1
                    scaler.handle(LeasedEvent(type="leased", instance_id=iid,
                                              sent_at=at(t)), EPOCH + t)
                if free < TARGET or waiting:
                    scaler.handle(ShortageEvent(type="shortage", free=free, waiting=waiting,
                                                sent_at=at(t)), EPOCH + t)
            if served == n and t > 2 * boot + 10 and not any(v < 1e18 for v in seen.values()):
                break
        return {
            "strategy": strategy, "burst": n,
            "set_desired_calls": counting.calls["set_desired_capacity"],
            "asg_calls": sum(counting.calls.values()),
            "of_which": "/".join(str(counting.calls[k]) for k in (
                "describe_auto_scaling_groups", "set_instance_protection",
                "describe_scaling_activities")),
            "to_desired_s": covered_at, "missing_after_1s": missing_1s,
            "peak_desired": peak, "overshoot": max(0, peak - need), "served": served,
            "wall_s": round(time.monotonic() - wall, 1),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bursts", default="10,100,1000")
    ap.add_argument("--boot", type=float, default=60.0, help="seconds an instance takes to boot")
    ap.add_argument("--strategies", default="missing,naive",
                    help="which strategies to run (naive at 1000 launches ~2,000 moto instances "
                         "one call at a time: slow)")
    args = ap.parse_args()
    cols = ["burst", "strategy", "set_desired_calls", "asg_calls", "of_which", "to_desired_s",
            "missing_after_1s", "peak_desired", "overshoot", "served", "wall_s"]
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for n in [int(b) for b in args.bursts.split(",")]:
        for strategy in args.strategies.split(","):
            row = run(strategy, n, args.boot)
            print(" | ".join(str(row[c]) for c in cols), flush=True)


if __name__ == "__main__":
    main()
