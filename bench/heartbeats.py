"""Heartbeat ingest of one dispatcher: offered against drained, up to the knee.

    AMQP_URL=amqp://guest:guest@localhost:5672/<vhost> .venv/bin/python -m bench.heartbeats
    ... -m bench.heartbeats --rates 200,400,667,900 --agents 1000 --seconds 10
    ... -m bench.heartbeats --quick | --record after

One real ``python -m dispatcher`` on DynamoDB Local (through a counting proxy unless
``--direct``), ``--agents`` workers seeded free. For each rate, publisher processes (each
with its own connection, as agents have) send heartbeats round-robin over the agents for
``--seconds``. An agent waits for the broker's confirm of each heartbeat, one per
HEARTBEAT_INTERVAL: a round trip that bounds one bench process to a few hundred per second,
not an agent. So the publishers pipeline: no confirm per message, and a clean close at the
end (the broker has taken every message before it answers the close).

Over that window: the rate actually offered, the rate the dispatcher handled (its
``workerpool_heartbeats_total``; without it, published minus the queue's depth), the backlog
at the end (published, not yet handled) and the deepest the agents queue got (ready messages,
sampled every 0.5 s), the dispatcher's CPU (utime + stime from /proc) per heartbeat handled,
and DynamoDB calls per heartbeat. Then the queue is left to drain before the next rate.
667/s is 10,000 agents at HEARTBEAT_INTERVAL 15 s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from typing import Any

from bench import report
from bench.counting import CountingProxy
from bench.stack import Stage, cpu_seconds, metric, seed, stage, stop, worker_id
from shared import topology
from shared.broker import queue_depths
from tests.helpers import Proc

COMMAND = ".venv/bin/python -m bench.heartbeats"
#: heartbeats/s one publisher process is asked to offer at most (pipelined, it does several
#: thousand; two share the load): more processes for higher rates
PER_PUBLISHER = 400.0
MAX_PUBLISHERS = 4
HANDLED = "workerpool_heartbeats_total"


def publish(url: str, agents: int, rate: float, seconds: float, offset: int, step: int,
            sent: Any, ready: Any, go: Any, done: Any) -> None:
    """One publisher process: heartbeats offset, offset + step, ... at ``rate`` per second,
    from the moment ``go`` is set."""
    from shared.broker.connection import broker_user, close_quietly, connect
    from shared.broker.publisher import properties
    from shared.messages import Heartbeat, now_sent_at

    conn = connect(url, "bench-agents")
    channel = conn.channel()  # no confirm mode: pipelined (see the module's docstring)
    user = broker_user(url)
    with ready.get_lock():
        ready.value += 1
    try:
        go.wait(60)
        began, k = time.monotonic(), 0
        while (due := began + k / rate) < began + seconds:
            if (ahead := due - time.monotonic()) > 0:
                time.sleep(ahead)
            iid = worker_id((offset + k * step) % agents)
            channel.basic_publish("", topology.AGENTS, Heartbeat(
                type="heartbeat", instance_id=iid, healthy=True,
                sent_at=now_sent_at()).to_json(), properties(user_id=user))
            k += 1
            with sent.get_lock():
                sent.value += 1
        close_quietly(conn)  # answered once the broker has every message sent on it
        with done.get_lock():  # CLOCK_MONOTONIC is one clock for every process on Linux
            done.value = max(done.value, time.monotonic())
    finally:  # a publisher that fails still counts down, or the run would wait forever
        with ready.get_lock():
            ready.value -= 1  # back to 0 when every publisher has finished


def publisher_count(rate: float) -> int:
    return max(2, min(MAX_PUBLISHERS, int(-(-rate // PER_PUBLISHER))))


def publishers(url: str, rate: float, args: argparse.Namespace
               ) -> tuple[list[Any], Any, Any, Any, Any]:
    """Publisher processes, started and ready; set ``go`` to let them go. Returns them, the
    count they sent, how many are still publishing, ``go``, and when the last one finished
    (monotonic)."""
    ctx = mp.get_context("spawn")  # this process has threads: no fork
    n = publisher_count(rate)
    sent, ready, go, done = ctx.Value("l", 0), ctx.Value("l", 0), ctx.Event(), ctx.Value("d", 0)
    procs = [ctx.Process(target=publish, args=(url, args.agents, rate / n, args.seconds, i, n,
                                               sent, ready, go, done)) for i in range(n)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 60
    while ready.value < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return procs, sent, ready, go, done


def handled(proc: Proc, published: int, url: str) -> float:
    """Heartbeats the dispatcher has handled (its counter, else published − queue depth)."""
    got = metric(proc.health_port, HANDLED)
    if got is not None:
        return got
    return published - (queue_depths(url, "bench", [topology.AGENTS])[topology.AGENTS] or 0)


def offer(st: Stage, proc: Proc, proxy: CountingProxy, rate: float, args: argparse.Namespace,
          total: list[int], idle_cpu: float) -> dict[str, Any]:
    """One rate for ``args.seconds``; the window's figures. ``idle_cpu``: the dispatcher's
    CPU seconds per second with nothing to do (its timers), taken out of the net figure."""
    url = st.settings.amqp_url
    procs, sent, ready, go, done = publishers(url, rate, args)
    h0, cpu0, c0 = handled(proc, total[0], url), cpu_seconds(proc.popen.pid), proxy.counts()
    queued = max(0, int(total[0] - h0))  # left from the rate before (not drained in time)
    began = time.monotonic()
    go.set()
    deepest, turn = 0, 0
    while ready.value > 0:  # until the last publisher has sent its last heartbeat
        if turn % 5 == 0:
            deepest = max(deepest, queue_depths(url, "bench", [topology.AGENTS])[topology.AGENTS]
                          or 0)
        turn += 1
        time.sleep(0.1)
    # handled and CPU over the same window as offered: from go until publishing stopped
    h1, cpu1 = handled(proc, total[0] + sent.value, url), cpu_seconds(proc.popen.pid)
    window = time.monotonic() - began
    publishing = done.value - began
    total[0] += sent.value
    for p in procs:
        p.join(30)
    calls = proxy.counts().minus(c0)
    backlog = max(0, int(total[0] - h1))  # published, not handled yet: queued or in hand
    beats, cpu = max(1.0, h1 - h0), cpu1 - cpu0
    return {"target": rate, "offered": sent.value / publishing,
            "drained": (h1 - h0) / window,
            "backlog": backlog, "deepest": deepest, "window_s": window,
            "publishers": len(procs), "queued_at_start": queued,
            "cpu_ms": cpu * 1000 / beats,
            "cpu_net_ms": max(0.0, cpu - idle_cpu * window) * 1000 / beats,
            "calls_per_beat": calls.total_calls / beats if args.count else None,
            "ops": report.per(calls.calls, beats)}


def idle_cpu(proc: Proc, seconds: float) -> float:
    """The dispatcher's CPU seconds per second while nothing arrives."""
    before = cpu_seconds(proc.popen.pid)
    time.sleep(seconds)
    return (cpu_seconds(proc.popen.pid) - before) / seconds


def drain(proc: Proc, published: int, url: str, limit: float) -> None:
    """Wait until the dispatcher has handled everything published (at most ``limit`` s)."""
    deadline = time.monotonic() + limit
    while handled(proc, published, url) < published and time.monotonic() < deadline:
        time.sleep(0.25)


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with stage("heartbeats") as st, CountingProxy(st.dynamodb) as proxy:
        seed(st.store, 0, args.agents)
        proc = st.dispatcher(proxy.url if args.count else st.dynamodb)
        total = [0]
        try:
            # untimed: one heartbeat per agent, so that the dispatcher knows every agent (it
            # reads an instance's key once), as a dispatcher that has run a while does
            warm = min(300.0, float(args.agents))
            offer(st, proc, proxy, warm, argparse.Namespace(**{**vars(args), "seconds":
                                                               args.agents / warm}), total, 0.0)
            drain(proc, total[0], st.settings.amqp_url, args.drain)
            idle = idle_cpu(proc, 3.0)
            print(f"dispatcher idle: {idle * 1000:.1f} ms CPU per second", flush=True)
            for rate in args.rates:
                rows.append(offer(st, proc, proxy, rate, args, total, idle))
                print(json.dumps(rows[-1]), flush=True)
                drain(proc, total[0], st.settings.amqp_url, args.drain)
        finally:
            stop([proc])
    return rows


FULL = {"rates": "200,400,667,900,1200", "agents": 1000, "seconds": 10.0, "drain": 90.0}
QUICK = {"rates": "50,100", "agents": 100, "seconds": 2.0, "drain": 15.0}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.heartbeats",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rates", help=f"heartbeats/s to offer ({FULL['rates']})")
    ap.add_argument("--agents", type=int, help=f"distinct instances ({FULL['agents']})")
    ap.add_argument("--seconds", type=float, help=f"window per rate ({FULL['seconds']})")
    ap.add_argument("--drain", type=float, help=f"most seconds to drain ({FULL['drain']})")
    ap.add_argument("--direct", dest="count", action="store_false",
                    help="the dispatcher talks to DynamoDB Local directly, not through the "
                         "counting proxy (no DynamoDB calls counted)")
    ap.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    ap.add_argument("--record", metavar="LABEL", help="write the table into "
                                                      "docs/benchmarks.md")
    args = report.fill(ap.parse_args(argv), FULL, QUICK)
    args.rates = [float(x) for x in str(args.rates).split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    print(f"heartbeats: one dispatcher, {args.agents} agents, {args.seconds:g} s per rate, "
          f"a publisher process per {PER_PUBLISHER:g}/s", flush=True)
    rows = run_all(args)
    print()
    print(report.heartbeats_table(rows))
    print()
    print(report.heartbeats_details(rows))
    if args.record:
        command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
        body = "\n\n".join([f"#### {args.record}", report.provenance(command),
                            f"{args.agents:,} agents, {args.seconds:g} s per rate.",
                            report.heartbeats_table(rows), report.heartbeats_details(rows)])
        print(f"wrote {report.record('heartbeats', args.record, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
