"""Claims side by side: ours against the floor, the contract floor and the old Scan claim, at
several pool sizes, in one run, black box (docs/benchmarks.md says what each figure means).

    AMQP_URL=amqp://guest:guest@localhost:5672/<vhost> .venv/bin/python -m bench.claims
    ... -m bench.claims --quick                  # a smoke run: 10 and 100 workers, 10 claims
    ... -m bench.claims --record after           # also write docs/benchmarks.md and the PNG

One real ``python -m dispatcher`` on DynamoDB Local (its DynamoDB through a counting proxy),
the ASG on moto, the real broker. For each pool size N the table holds N free workers (and a
few more that the claims use up); then, one at a time, ``--claims`` rounds of: our claim
(wait_seconds 0), a floor, a contract floor and, for the first ``--scan-claims`` rounds, a
Scan claim (bench/floors.py). Then the dispatcher is left idle for ``--idle`` seconds: what
it asks of DynamoDB meanwhile is its idle cost at that pool size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import report
from bench.counting import CountingProxy, Counts
from bench.floors import CONTRACT, FLOOR, SCAN, Floors, free_again
from bench.stack import Stage, amqp_url, seed, stage, stop
from shared import topology
from shared.aws import client
from shared.broker import RpcClient

COMMAND = ".venv/bin/python -m bench.claims"


@dataclass
class Run:
    """What one run holds: the stage, the dispatcher, the floors, the proxies, the pool."""

    stage: Stage
    rpc: RpcClient
    floors: Floors
    ours: CountingProxy
    theirs: CountingProxy
    seeded: int = 0
    used: int = 0  # workers our claims have leased so far
    rounds: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def claim(self) -> float:
        """One of our claims; its latency in seconds."""
        self.rounds += 1
        body = json.dumps({"request_id": f"bench-{self.rounds}",
                           "user_id": f"bench{self.rounds}", "wait_seconds": 0}).encode()
        began = time.perf_counter()
        reply = json.loads(self.rpc.call(topology.CLAIMS, body, timeout=60))
        took = time.perf_counter() - began
        self.used += 1
        if reply.get("status") != "assigned":
            self.failures.append(reply)
        return took

    def floor(self, kind: str) -> float:
        self.rounds += 1
        began = time.perf_counter()
        reply = self.floors.call(self.rpc, kind, self.rounds)
        took = time.perf_counter() - began
        if reply.get("instance_id"):
            free_again(self.stage.store.db, self.stage.settings.table_name, reply["instance_id"])
        return took

    def pool_of(self, n: int, claims: int) -> None:
        """Seed so that N workers are still free after ``claims`` more of ours."""
        want = self.used + n + claims
        if want > self.seeded:
            seed(self.stage.store, self.seeded, want)
            self.seeded = want


def counted(proxy: CountingProxy, fn: Callable[[], float], into: Counts) -> float:
    """Run ``fn``, adding what went through ``proxy`` meanwhile to ``into``."""
    before = proxy.counts()
    took = fn()
    into.plus(proxy.counts().minus(before))
    return took


def measure(run: Run, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every figure of one pool size."""
    run.pool_of(n, args.claims + args.warmup)
    for _ in range(args.warmup):
        run.claim(), run.floor(FLOOR), run.floor(CONTRACT)
    failures = len(run.failures)
    lat: dict[str, list[float]] = {k: [] for k in ("ours", FLOOR, CONTRACT, SCAN)}
    ours, scan = Counts(), Counts()
    for k in range(args.claims):
        lat["ours"].append(counted(run.ours, run.claim, ours))
        lat[FLOOR].append(run.floor(FLOOR))
        lat[CONTRACT].append(run.floor(CONTRACT))
        if k < args.scan_claims:
            lat[SCAN].append(counted(run.theirs, lambda: run.floor(SCAN), scan))
    before = run.ours.counts()
    time.sleep(args.idle)
    idle = run.ours.counts().minus(before)
    claims, scans = len(lat["ours"]), max(1, len(lat[SCAN]))
    row: dict[str, Any] = {"workers": n, "claims": claims, "scan_claims": len(lat[SCAN]),
                           "failures": len(run.failures) - failures}
    for key, values in lat.items():
        row[f"{key}_p50"], row[f"{key}_p99"] = report.pct(values, 50), report.pct(values, 99)
    row.update(
        ours_calls=ours.total_calls / claims, ours_reads=ours.total_reads / claims,
        ours_writes=ours.total_writes / claims, ours_capacity=ours.capacity / claims,
        ours_ops=report.per(ours.calls, claims),
        scan_calls=scan.total_calls / scans if lat[SCAN] else None,
        scan_reads=scan.total_reads / scans if lat[SCAN] else None,
        idle_calls_s=idle.total_calls / args.idle, idle_reads_s=idle.total_reads / args.idle,
        idle_ops=report.per(idle.calls, args.idle))
    return row


def run_all(args: argparse.Namespace, on_row: Callable[[dict[str, Any]], None]
            ) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with stage("claims") as st, CountingProxy(st.dynamodb) as ours, \
            CountingProxy(st.dynamodb) as theirs:
        proc = st.dispatcher(ours.url)
        db = client("dynamodb", region=st.settings.aws_region, endpoint_url=theirs.url)
        floors = Floors(st.settings.amqp_url, db, st.settings.table_name)
        run = Run(st, RpcClient(st.settings.amqp_url, "bench-claims"), floors, ours, theirs)
        try:
            run.pool_of(args.sizes[0], args.jit_warmup)
            for _ in range(args.jit_warmup):  # DynamoDB Local's JIT, the dispatcher's caches
                run.claim(), run.floor(FLOOR), run.floor(CONTRACT), run.floor(SCAN)
            for n in args.sizes:
                rows.append(measure(run, n, args))
                on_row(rows[-1])
        finally:
            run.rpc.close()
            floors.close()
            stop([proc])
    return rows


FULL = {"sizes": "10,1000,10000", "claims": 100, "scan_claims": 20, "idle": 5.0, "warmup": 3,
        "jit_warmup": 30}
QUICK = {"sizes": "10,100", "claims": 10, "scan_claims": 3, "idle": 1.5, "warmup": 1,
         "jit_warmup": 3}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.claims",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--sizes", help=f"pool sizes, free workers ({FULL['sizes']})")
    ap.add_argument("--claims", type=int, help=f"sequential claims per size ({FULL['claims']})")
    ap.add_argument("--scan-claims", type=int, help=f"Scan claims per size ({FULL['scan_claims']})")
    ap.add_argument("--idle", type=float, help=f"seconds of idle per size ({FULL['idle']})")
    ap.add_argument("--warmup", type=int, help=f"untimed rounds per size ({FULL['warmup']})")
    ap.add_argument("--jit-warmup", type=int,
                    help=f"untimed rounds at the start ({FULL['jit_warmup']})")
    ap.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    ap.add_argument("--record", metavar="LABEL",
                    help="write the table into docs/benchmarks.md and the plot into "
                         "docs/bench-claims-LABEL.png (e.g. before, after)")
    args = report.fill(ap.parse_args(argv), FULL, QUICK)
    args.sizes = [int(x) for x in str(args.sizes).split(",")]
    return args


def write_record(rows: list[dict[str, Any]], label: str, command: str) -> list[Path]:
    png = report.DOC.parent / f"bench-claims-{label}.png"
    report.plot_claims(rows, png, f"claim p50 against pool size ({label})")
    body = "\n\n".join([f"#### {label}", report.provenance(command), report.claims_table(rows),
                        report.claims_details(rows), f"![claims, {label}]({png.name})"])
    return [report.record("claims", label, body), png]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    print(f"claims: {args.claims} sequential per size, sizes {args.sizes}, broker "
          f"{amqp_url().rsplit('@', 1)[-1]}; latencies in ms", flush=True)
    rows = run_all(args, lambda row: print(json.dumps(row), flush=True))
    print()
    print(report.claims_table(rows))
    print()
    print(report.claims_details(rows))
    if args.record:
        command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
        for path in write_record(rows, args.record, command):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
