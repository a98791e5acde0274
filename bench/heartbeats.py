"""Heartbeats one dispatcher sustains, and DynamoDB writes per heartbeat.

    AMQP_URL=amqp://guest:guest@localhost:5672/<vhost> .venv/bin/python bench/heartbeats.py \
        --agents 2000 --beats 6000 --rate 700

Seeds ``--agents`` free workers (BatchWriteItem), starts a real ``python -m dispatcher``,
then publishes ``--beats`` heartbeats round-robin over the agents at ``--rate`` per second
(0 = as fast as the publishers go) from 4 publisher threads. Reports the rate the dispatcher
drained them at, the deepest the agents queue got, and writes per heartbeat (from the
dispatcher's own counters on /metrics).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

from bench.claim_latency import local_aws, seed  # noqa: E402
from shared import topology  # noqa: E402
from shared.broker import Broker, queue_depths  # noqa: E402
from shared.messages import Heartbeat, now_sent_at  # noqa: E402
from shared.store import Store  # noqa: E402


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def moto_ceiling(store: Store, agents: int, threads: int, writes: int = 800) -> float:
    """Heartbeat writes/s this moto takes from ``threads`` threads with no broker at all:
    what any dispatcher design is bounded by here."""
    from concurrent.futures import ThreadPoolExecutor

    ids = [f"i-{k:017x}" for k in range(agents)]
    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda k: store.workers.heartbeat(ids[k % agents], healthy=True,
                                                now=time.time()), range(writes)))
    return writes / (time.monotonic() - started)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=2000)
    ap.add_argument("--beats", type=int, default=6000)
    ap.add_argument("--rate", type=float, default=700)
    ap.add_argument("--threads", type=int, default=8, help="DISPATCHER_THREADS")
    args = ap.parse_args()

    from tests.conftest import env_for
    from tests.helpers import Proc

    server, settings, store = local_aws()
    seed(store, args.agents, 0)
    ceiling = moto_ceiling(store, args.agents, args.threads)
    proc = Proc("dispatcher", env_for(settings, target_available=0,
                                      dispatcher_threads=args.threads))
    try:
        health = int(proc.wait_ready()["health_port"])
        ids = [f"i-{k:017x}" for k in range(args.agents)]
        per_thread = args.beats // 4
        started = time.monotonic()

        def publish(offset: int) -> None:
            broker = Broker(settings.amqp_url, "bench-agents")
            for k in range(per_thread):
                if args.rate:
                    due = started + (k * 4 + offset) / args.rate
                    if due > time.monotonic():
                        time.sleep(due - time.monotonic())
                iid = ids[(k * 4 + offset) % len(ids)]
                broker.publish(topology.AGENTS, Heartbeat(
                    type="heartbeat", instance_id=iid, healthy=True,
                    sent_at=now_sent_at()).to_json())
            broker.close()

        threads = [threading.Thread(target=publish, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deepest = 0
        total = per_thread * 4
        while metric(health, "workerpool_heartbeats_total") < total:
            depth = queue_depths(settings.amqp_url, "bench", [topology.AGENTS])[topology.AGENTS]
            deepest = max(deepest, depth or 0)
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        for t in threads:
            t.join()
        writes = metric(health, "workerpool_heartbeat_writes_total")
        print(f"heartbeats: {total} over {args.agents} agents, offered at "
              f"{args.rate or 'max'}/s, {args.threads} dispatcher threads")
        print(f"drained at {total / elapsed:.0f}/s (elapsed {elapsed:.1f} s); "
              f"agents queue at most {deepest} ready; "
              f"DynamoDB writes per heartbeat {writes / total:.2f}")
        print(f"moto's own ceiling: {ceiling:.0f} heartbeat writes/s from {args.threads} "
              "threads calling store.heartbeat directly (no broker, no dispatcher)")
    finally:
        proc.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
