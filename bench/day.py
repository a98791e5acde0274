"""A day of claims: the fixed warm target against the learned one, side by side.

    AMQP_URL=amqp://guest:guest@localhost:5672/<vhost> .venv/bin/python -m bench.day
    ... -m bench.day --quick                     # a smoke run (a morning, about 3 minutes)
    ... -m bench.day --record after              # also docs/benchmarks.md and the PNG (~30 min)
    ... -m bench.day --variants fixed:2,learned:1,fixed:4 --users 24 --speed 60
    ... -m bench.day --save day.json             # also every sample and claim, as JSON
    ... -m bench.day --load day.json --record after   # table and plot again, no run

For each variant (``fixed:N``: WARM_TARGET=fixed, TARGET_AVAILABLE=N; ``learned:N``:
WARM_TARGET=learned, TARGET_AVAILABLE=N, WARM_MARGIN=1), on a stage of its own
(bench/stack.py: DynamoDB Local, the ASG on moto, the broker at AMQP_URL): real ``python -m
dispatcher``, ``scaler`` and ``reaper``, and the simulated fleet (a real agent per VM, its boot
delay drawn for its instance type, FLEET_BOOT_TIMES). The pool warms, then the day of
bench/dayparts.py is replayed ``--speed`` times faster than a clock: every timing the pool
runs with (cooldown, surplus idle time, demand window, boot delays) is the day's divided by
the speed, so the pool sees the day as it would, only faster. A claim is sent when its user
arrives (wait up to 300 s of the run) and released when they leave (at least 5 day minutes
after they got it); a released worker is recycled, as always.

Figures, in the day's time: claim wait (publish to reply) p50/p95/max over assigned claims;
idle VM-minutes (free, healthy workers nobody holds, sampled every 0.25 s of the run) and all
VM-minutes (instances in the group); the scaler's own measure of boot to ready. Real agents
start in about a second on this machine: that is part of every boot, at any speed. Hence the
full run's 60x: a start of 1-3 s is 1-3 day minutes of boot (measured boot to ready, drawn
EC2 delay included: 2 to 3 day minutes); at 180x it would be 3-9, at --quick's 360x 6-18.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import dayparts, dayplot, report
from bench.stack import Stage, metric, stage, stop
from shared import topology
from shared.asg import Asg
from shared.broker import RpcClient
from tests.helpers import Proc

COMMAND = ".venv/bin/python -m bench.day"
TYPES = "t3.medium,t3a.medium,m5.large"
#: what EC2 adds to a boot before the agent starts, day seconds: (median, p90) per type (the
#: first is launched); the agent's own start (about a second of the run) comes on top
BOOT_DAY = {"t3.medium": (40.0, 80.0), "t3a.medium": (50.0, 100.0), "m5.large": (35.0, 70.0)}
SAMPLE_S = 0.25
WAIT_S = 300  # a claim's wait_seconds (run seconds)
#: a correlation id no request has: waiting for it lets the connection work meanwhile
NO_REPLY = "bench-day-idle"
FULL = {"users": 24, "speed": 60.0, "start": 7.0, "end": 21.0,
        "variants": "fixed:2,learned:1"}
QUICK = {"users": 8, "speed": 360.0, "start": 7.5, "end": 13.5}


def environment(st: Stage, speed: float, variant: str) -> dict[str, str]:
    mode, _, floor = variant.partition(":")
    s = st.settings
    day = {"COOLDOWN_SECONDS": 30, "SCALE_IN_IDLE_SECONDS": 600, "DEMAND_WINDOW_SECONDS": 1800}
    return {"AMQP_URL": s.amqp_url, "AWS_ENDPOINT_URL": st.moto,
            "AWS_ENDPOINT_URL_DYNAMODB": st.dynamodb, "AWS_REGION": s.aws_region,
            "TABLE_NAME": s.table_name, "ASG_NAME": s.asg_name, "HEALTH_PORT": "0",
            "WORKER_INSTANCE_TYPES": TYPES, "WARM_TARGET": mode, "TARGET_AVAILABLE": floor,
            "WARM_MARGIN": "1", **{k: f"{v / speed:.3f}" for k, v in day.items()},
            "RECONCILE_INTERVAL": "0.25", "REAP_INTERVAL": "0.5", "HEARTBEAT_INTERVAL": "1",
            "HEARTBEAT_TIMEOUT": "10", "BOOT_TIMEOUT_SECONDS": "60", "LOCK_TTL_SECONDS": "6",
            "WAIT_POLL_INTERVAL": "0.1", "LOG_LEVEL": "WARNING", "FLEET_SEED": "1",
            "FLEET_BOOT_TIMES": ",".join(f"{t}={m / speed:.3f}:{q / speed:.3f}"
                                         for t, (m, q) in BOOT_DAY.items())}


@contextmanager
def pool(st: Stage, env: dict[str, str]) -> Iterator[dict[str, Proc]]:
    procs = {"scaler": Proc("scaler", {**env, "LOG_LEVEL": "INFO"}),
             "dispatcher": Proc("dispatcher", env), "reaper": Proc("reaper", env),
             "fleet": Proc("sim.fleet", env, "fleet")}
    try:
        for p in procs.values():
            p.wait_ready(60)
        yield procs
    finally:
        stop([procs["fleet"], procs["dispatcher"], procs["reaper"], procs["scaler"]])


class Replay:
    """The day's claims and releases, on one connection, and the pool sampled meanwhile."""

    def __init__(self, st: Stage, scaler: Proc, trace: list[dayparts.Session], args: Any
                 ) -> None:
        self.st, self.trace, self.args = st, trace, args
        self.rpc = RpcClient(st.settings.amqp_url, "bench-day")
        self.asg = Asg.from_settings(st.settings)
        self.scaler_port = scaler.health_port
        self.claims: list[dict[str, Any]] = []
        self.samples: dict[str, list[tuple[float, int]]] = {
            "free": [], "live": [], "desired": [], "target": []}

    def run_s(self, day_s: float) -> float:
        return (day_s - self.args.start * 3600) / self.args.speed

    def sample(self, now: float) -> None:
        state = self.asg.describe()
        free = self.st.store.workers.count("free", healthy_only=True)
        target = metric(self.scaler_port, "workerpool_warm_target")
        for key, value in (("free", free), ("live", len(state.live_ids)),
                           ("desired", state.desired), ("target", int(target or 0))):
            self.samples[key].append((now, value))

    def idle(self, seconds: float) -> None:
        """Pause, letting the connection work: ``RpcClient.wait`` with no id returns at once,
        and a connection left alone for two heartbeats (30 s) is closed by the broker, as
        happens in a quiet hour of a day replayed at 60x."""
        self.wait([NO_REPLY], seconds)

    def wait(self, ids: list[str], seconds: float) -> dict[str, bytes]:
        """``RpcClient.wait``, riding out its one flaw: when its deadline passes between its
        check and its last slice, pika is handed a negative delay (ValueError). Replies that
        came meanwhile stay in the client and are returned by the next wait."""
        try:
            return self.rpc.wait(ids, seconds)
        except ValueError:
            return {}

    def warm(self, timeout: float = 120) -> None:
        """Before the day: the pool at its quiet-time target."""
        deadline = time.monotonic() + timeout
        while self.st.store.workers.count("free", healthy_only=True) < 2:
            if time.monotonic() > deadline:
                raise SystemExit("the pool did not warm up")
            self.idle(0.2)

    def run(self) -> None:
        sends = [(self.run_s(s.arrive), k, s) for k, s in enumerate(self.trace)]
        heapq.heapify(sends)
        releases: list[tuple[float, str, str]] = []
        pending: dict[str, tuple[dayparts.Session, float]] = {}
        others: set[str] = set()
        end = self.run_s(self.args.end * 3600)
        t0, next_sample = time.monotonic(), 0.0
        while sends or pending or releases or time.monotonic() - t0 < end:
            now = time.monotonic() - t0
            while sends and sends[0][0] <= now:
                _, k, s = heapq.heappop(sends)
                pending[self._send(topology.CLAIMS, {
                    "request_id": f"c{k}", "user_id": s.user, "wait_seconds": WAIT_S,
                    "lease_seconds": 86400})] = (s, now)
            while releases and releases[0][0] <= now:
                _, user, iid = heapq.heappop(releases)
                others.add(self._send(topology.LEASES, {
                    "type": "release", "request_id": f"rel-{iid}", "user_id": user,
                    "instance_id": iid}))
            if not pending and not others:
                self.idle(0.02)
            for cid, body in self.wait([*pending, *others], 0.02).items():
                others.discard(cid)
                if cid in pending:  # the wait ends now, not when this pass began
                    self._answered(pending.pop(cid), json.loads(body),
                                   time.monotonic() - t0, releases)
            if now >= next_sample:
                self.sample(now)
                next_sample = now + SAMPLE_S
            if now > end + WAIT_S + 30:
                break
        self.claims += [{"user": s.user, "status": "unanswered"} for s, _ in pending.values()]

    def _send(self, queue: str, body: dict[str, Any]) -> str:
        return self.rpc.send(queue, json.dumps(body).encode())

    def _answered(self, sent: tuple[dayparts.Session, float], reply: dict[str, Any],
                  now: float, releases: list[tuple[float, str, str]]) -> None:
        s, at = sent
        worker = reply.get("worker") or {}
        self.claims.append({"user": s.user, "status": reply.get("status"), "wait_s": now - at,
                            "sent_s": at, "instance_type": worker.get("instance_type")})
        if reply.get("status") == "assigned":
            leave = max(self.run_s(s.leave), now + 300 / self.args.speed)
            heapq.heappush(releases, (leave, s.user, worker["instance_id"]))

    def close(self) -> None:
        self.rpc.close()


def boot_figures(port: int, speed: float) -> dict[str, float | None]:
    """The scaler's own measure of boot to ready, of the type launched first (day s)."""
    try:
        body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                                 timeout=5).read())
    except OSError:
        return {"boot_p50": None, "boot_p90": None}
    first = (body.get("scaler", {}).get("boot_seconds") or {}).get(TYPES.split(",")[0]) or {}
    return {k: (first[p] * speed if first.get(p) is not None else None)
            for k, p in (("boot_p50", "p50"), ("boot_p90", "p90"))}


def one(variant: str, trace: list[dayparts.Session], args: Any) -> dict[str, Any]:
    with stage(f"day{variant.replace(':', '')}") as st, \
            pool(st, environment(st, args.speed, variant)) as procs:
        replay = Replay(st, procs["scaler"], trace, args)
        try:
            replay.warm()
            replay.run()
            boots = boot_figures(procs["scaler"].health_port, args.speed)
        finally:
            replay.close()
        calls = len(procs["scaler"].events("scale"))
    row = dayparts.summary(variant, replay.claims, replay.samples, args.speed,
                           {**boots, "scale_calls": calls})
    row["series"] = {"samples": replay.samples, "claims": replay.claims}
    return row


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.day",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--variants", help=f"mode:TARGET_AVAILABLE, ... ({FULL['variants']})")
    ap.add_argument("--users", type=int, help=f"developers ({FULL['users']})")
    ap.add_argument("--speed", type=float, help=f"day seconds per run second ({FULL['speed']})")
    ap.add_argument("--start", type=float, help=f"hour the replay starts ({FULL['start']})")
    ap.add_argument("--end", type=float, help=f"hour it ends ({FULL['end']})")
    ap.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    ap.add_argument("--record", metavar="LABEL", help="write the table into docs/benchmarks.md "
                    "and the plot into docs/bench-day-LABEL.png")
    ap.add_argument("--save", metavar="PATH", help="write the run (figures, samples, claims, "
                    "how it was run) to this JSON file")
    ap.add_argument("--load", metavar="PATH", help="no run: the table (and with --record the "
                    "plot and the block) from a file that --save wrote")
    return report.fill(ap.parse_args(argv), FULL, QUICK)  # type: ignore[no-any-return]


SAVED_ARGS = ("users", "speed", "start", "end", "variants")


def run(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    """Every variant, one after the other; what ``--save`` writes."""
    # the stage's bootstrap makes the group: room for the day, three types
    os.environ.update(ASG_MAX_SIZE="40", WORKER_INSTANCE_TYPES=TYPES)
    trace = dayparts.day_trace(args.users, start_h=args.start, end_h=args.end)
    print(f"day: {len(trace)} claims from {args.users} developers, {args.start:g}:00-"
          f"{args.end:g}:00 at {args.speed:g}x ({(args.end - args.start) * 3600 / args.speed:.0f}"
          f" s a variant); variants {args.variants}", flush=True)
    rows = []
    for variant in str(args.variants).split(","):
        rows.append(one(variant, trace, args))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "series"}), flush=True)
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    return {"args": {k: getattr(args, k) for k in SAVED_ARGS}, "rows": rows,
            "command": command, "provenance": report.provenance(command)}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.load:
        done = json.loads(Path(args.load).read_text(encoding="utf-8"))
        for key, value in done["args"].items():
            setattr(args, key, value)
    else:
        done = run(args, argv)
        if args.save:
            Path(args.save).write_text(json.dumps(done), encoding="utf-8")
            print(f"wrote {args.save}")
    rows = done["rows"]
    trace = dayparts.day_trace(args.users, start_h=args.start, end_h=args.end)
    print()
    print(dayparts.day_table(rows))
    if ratios := dayparts.day_ratios(rows):
        print(ratios)
    if args.record:
        png = report.DOC.parent / f"bench-day-{args.record}.png"
        dayplot.plot_day(rows, trace, args, png)
        body = "\n\n".join([f"#### {args.record}", done["provenance"],
                            dayparts.day_table(rows), *([ratios] if ratios else []),
                            f"![a day of claims]({png.name})"])
        for path in (report.record("day", args.record, body), png):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

