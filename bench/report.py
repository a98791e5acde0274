"""Pure parts of the benchmarks: percentiles, the tables they print, the blocks they record
in docs/benchmarks.md, the plot. No I/O but the two writers at the end."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def pct(seconds: Sequence[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of durations in seconds, in milliseconds."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(rank) - 1] * 1000


def ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "–"
    return f"{value / base:.1f}×"


def num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def per(counts: Mapping[str, float], n: float) -> dict[str, float]:
    """Each operation's count divided by ``n`` (claims, seconds...), zeros left out."""
    return {op: c / n for op, c in sorted(counts.items()) if c and n}


def ops(by_op: Mapping[str, float]) -> str:
    """``Query 1.0, TransactWriteItems 1.0`` (largest first)."""
    if not by_op:
        return "none"
    return ", ".join(f"{op} {num(v, 2)}" for op, v in
                     sorted(by_op.items(), key=lambda kv: (-kv[1], kv[0])))


def fill(args: Any, full: Mapping[str, Any], quick: Mapping[str, Any]) -> Any:
    """Options left unset take their full-run default, or with ``--quick`` the smoke run's;
    an option given on the command line wins either way."""
    for key, value in full.items():
        if getattr(args, key, None) is None:
            setattr(args, key, quick.get(key, value) if args.quick else value)
    return args


def table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


CLAIMS_HEAD = ("workers", "floor p50", "contract floor p50", "ours p50 / p99",
               "ours ÷ floor", "ours ÷ contract floor", "Scan claim p50",
               "DynamoDB calls per claim: ours / Scan", "items read per claim: ours / Scan",
               "idle: calls/s, items read/s")


def claims_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The side-by-side table of bench/claims.py (latencies in ms)."""
    return table(CLAIMS_HEAD, [(
        f"{r['workers']:,}", ms(r["floor_p50"]), ms(r["contract_p50"]),
        f"{ms(r['ours_p50'])} / {ms(r['ours_p99'])}", ratio(r["ours_p50"], r["floor_p50"]),
        ratio(r["ours_p50"], r["contract_p50"]), ms(r["scan_p50"]),
        f"{num(r['ours_calls'], 2)} / {num(r['scan_calls'], 2)}",
        f"{num(r['ours_reads'])} / {num(r['scan_reads'])}",
        f"{num(r['idle_calls_s'])}, {num(r['idle_reads_s'])}") for r in rows])


def claims_details(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per pool size: ours by operation per claim, and what an idle dispatcher calls."""
    out = []
    for r in rows:
        extra = f"; {r['failures']} claims not assigned" if r.get("failures") else ""
        out.append(f"* {r['workers']:,} workers: per claim {ops(r['ours_ops'])} "
                   f"(items written {num(r['ours_writes'], 2)}, capacity units "
                   f"{num(r['ours_capacity'], 2)}); idle per second {ops(r['idle_ops'])}"
                   f"{extra}")
    return "\n".join(out)


HEARTBEATS_HEAD = ("offered /s (target)", "drained /s", "backlog at end (deepest queue)",
                   "dispatcher CPU ms per heartbeat: all / net of idle",
                   "DynamoDB calls per heartbeat")


def heartbeats_table(rows: Sequence[Mapping[str, Any]]) -> str:
    return table(HEARTBEATS_HEAD, [(
        f"{num(r['offered'], 0)} ({num(r['target'], 0)})", num(r["drained"], 0),
        f"{r['backlog']:,} ({r['deepest']:,})",
        f"{num(r['cpu_ms'], 2)} / {num(r['cpu_net_ms'], 2)}",
        num(r["calls_per_beat"], 2)) for r in rows])


def heartbeats_details(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per rate: DynamoDB calls per heartbeat by operation, publishers, leftovers."""
    out = []
    for r in rows:
        left = (f"; {r['queued_at_start']:,} still queued from the rate before"
                if r.get("queued_at_start") else "")
        out.append(f"* {num(r['target'], 0)}/s: per heartbeat {ops(r.get('ops') or {})}; "
                   f"{r.get('publishers', '?')} publishers, window {num(r['window_s'])} s"
                   f"{left}")
    return "\n".join(out)


THROUGHPUT_HEAD = ("dispatchers", "claims/s", "assigned", "first request to last reply, s",
                   "dispatcher CPU ms per claim", "lease transactions per claim (lost races)")


def throughput_table(rows: Sequence[Mapping[str, Any]]) -> str:
    def leases(r: Mapping[str, Any]) -> str:
        if r.get("leases_per_claim") is None:
            return "–"  # dispatchers without workerpool_lease_attempts_total
        return f"{num(r['leases_per_claim'], 2)} ({num(r['lost_per_claim'], 2)})"

    return table(THROUGHPUT_HEAD, [(
        str(r["dispatchers"]), num(r["claims_per_s"]), f"{r['assigned']}/{r['claims']}",
        num(r["wall_s"], 2), num(r["cpu_ms"], 2), leases(r)) for r in rows])


def provenance(command: str) -> str:
    """One line: when, which commit, on what, by which command."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                "shared", "dispatcher"], capture_output=True, text=True,
                               check=False).stdout.strip()
    except OSError:
        commit, dirty = "?", ""
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    state = f"{commit}{' + uncommitted changes' if dirty else ''}"
    return (f"_{when}, commit {state}, {os.cpu_count()} cores, load average {load} at the "
            f"end; `{command}`_")


def replace_block(doc: str, bench: str, label: str, body: str) -> str:
    """``doc`` with the block ``<!-- bench:<bench>:<label> -->`` replaced by ``body``, or
    inserted before ``<!-- bench:<bench>:end -->`` (else at the end) when it is new."""
    start, end = f"<!-- bench:{bench}:{label} -->", f"<!-- /bench:{bench}:{label} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(doc):
        return pattern.sub(lambda _: block, doc)
    anchor = f"<!-- bench:{bench}:end -->"
    if anchor in doc:
        return doc.replace(anchor, f"{block}\n\n{anchor}")
    return f"{doc.rstrip()}\n\n{block}\n"


def record(bench: str, label: str, body: str, doc: Path = DOC) -> Path:
    """Write a result block into docs/benchmarks.md (see replace_block)."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    doc.write_text(replace_block(text, bench, label, body), encoding="utf-8")
    return doc


PLOT_SERIES = (("ours_p50", "ours", "o-"), ("contract_p50", "contract floor (RPC + 3-item "
               "transaction)", "s--"), ("floor_p50", "floor (RPC + 1 conditional UpdateItem)",
               "^--"), ("scan_p50", "Scan-based claim (old system)", "x:"))


def plot_claims(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path:
    """p50 claim latency against pool size, log-log, one line per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    xs = [r["workers"] for r in rows]
    for key, name, style in PLOT_SERIES:
        ys = [r[key] for r in rows]
        if any(y is not None for y in ys):
            ax.plot(xs, ys, style, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, [f"{x:,}" for x in xs])
    ax.set_xlabel("free workers in the pool")
    ax.set_ylabel("p50 claim latency, ms (log)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
