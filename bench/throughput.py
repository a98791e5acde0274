"""Throughput: parallel claims on 1, 2 and 3 dispatchers, and the dispatchers' CPU per claim.

    AMQP_URL=amqp://guest:guest@localhost:5672/<vhost> .venv/bin/python -m bench.throughput
    ... -m bench.throughput --dispatchers 1,2,3 --workers 200 --claims 200
    ... -m bench.throughput --quick | --record after

For each number of dispatchers: ``--workers`` fresh free workers on DynamoDB Local (the ASG on
moto), that many real ``python -m dispatcher`` processes talking to DynamoDB Local directly,
a few untimed claims to warm them, then ``--claims`` claims from distinct users published at
once by one client (wait_seconds 30, so that a claim that loses every race waits instead of
failing). claims/s is the claims assigned over the time from the first request to the last
reply; CPU ms per claim is the dispatchers' utime + stime (from /proc) over that time, per
claim. On a 2-core machine the broker, DynamoDB Local and the client share the cores with the
dispatchers, so claims/s is bound by the machine: CPU per claim is the figure that says how
far N dispatchers on N machines would go. Lease transactions per claim: 1 when no claim lost
a race for a worker to another dispatcher (from ``workerpool_lease_attempts_total``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench import report
from bench.stack import Stage, cpu_seconds, metric, seed, stage, stop
from shared import topology
from shared.broker import RpcClient
from tests.helpers import Proc

COMMAND = ".venv/bin/python -m bench.throughput"
WARMUP = 3  # untimed claims per dispatcher
ATTEMPTS = "workerpool_lease_attempts_total"


def burst(rpc: RpcClient, prefix: str, n: int, wait_seconds: int, timeout: float
          ) -> tuple[float, dict[str, dict[str, Any]]]:
    """n claims sent at once; the time until the last reply and the replies."""
    began = time.perf_counter()
    cids = [rpc.send(topology.CLAIMS, json.dumps(
        {"request_id": f"{prefix}-{k}", "user_id": f"{prefix}-u{k}",
         "wait_seconds": wait_seconds}).encode()) for k in range(n)]
    got = rpc.wait(cids, timeout)
    return time.perf_counter() - began, {c: json.loads(b) for c, b in got.items()}


def one(st: Stage, rpc: RpcClient, n: int, first: int, args: argparse.Namespace
        ) -> dict[str, Any]:
    """Figures for ``n`` dispatchers; ``first``: the first worker number to seed."""
    seed(st.store, first, first + args.workers + WARMUP * n)
    procs = [st.dispatcher(st.dynamodb, name=f"dispatcher{k}") for k in range(n)]
    try:
        burst(rpc, f"warm{n}", WARMUP * n, 0, 30)
        cpu0, won0, lost0 = sum(cpu_seconds(p.popen.pid) for p in procs), *leases(procs)
        took, replies = burst(rpc, f"run{n}", args.claims, 30, 120)
        cpu = sum(cpu_seconds(p.popen.pid) for p in procs) - cpu0
        won, lost = leases(procs)
    finally:
        stop(procs)
    assigned = sum(1 for r in replies.values() if r.get("status") == "assigned")
    answered = max(1, len(replies))
    return {"dispatchers": n, "claims": args.claims, "assigned": assigned,
            "answered": len(replies), "wall_s": took, "claims_per_s": assigned / took,
            "cpu_ms": cpu * 1000 / answered,
            "leases_per_claim": (won - won0 + lost - lost0) / answered,
            "lost_per_claim": (lost - lost0) / answered}


def leases(procs: list[Proc]) -> tuple[float, float]:
    """Lease transactions the dispatchers have won and lost so far (a lost one: the worker
    was leased by another dispatcher meanwhile, one more transaction for that claim)."""
    got = [[metric(p.health_port, f'{ATTEMPTS}{{result="{result}"}}') or 0.0 for p in procs]
           for result in ("won", "taken")]
    return sum(got[0]), sum(got[1])


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with stage("throughput") as st:
        rpc = RpcClient(st.settings.amqp_url, "bench-throughput")
        first = 0
        try:
            for n in args.dispatchers:
                rows.append(one(st, rpc, n, first, args))
                print(json.dumps(rows[-1]), flush=True)
                first += args.workers + WARMUP * n
        finally:
            rpc.close()
    return rows


FULL = {"dispatchers": "1,2,3", "workers": 200, "claims": 200}
QUICK = {"dispatchers": "1,2", "workers": 20, "claims": 20}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.throughput",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--dispatchers", help=f"how many dispatchers, each run ({FULL['dispatchers']})")
    ap.add_argument("--workers", type=int, help=f"free workers each run ({FULL['workers']})")
    ap.add_argument("--claims", type=int, help=f"claims sent at once each run ({FULL['claims']})")
    ap.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    ap.add_argument("--record", metavar="LABEL", help="write the table into "
                                                      "docs/benchmarks.md")
    args = report.fill(ap.parse_args(argv), FULL, QUICK)
    args.dispatchers = [int(x) for x in str(args.dispatchers).split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    print(f"throughput: {args.claims} claims at once on {args.workers} workers, "
          f"dispatchers {args.dispatchers}", flush=True)
    rows = run_all(args)
    print()
    print(report.throughput_table(rows))
    if args.record:
        command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
        body = "\n\n".join([f"#### {args.record}", report.provenance(command),
                            f"{args.claims} claims at once on {args.workers} free workers.",
                            report.throughput_table(rows)])
        print(f"wrote {report.record('throughput', args.record, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
