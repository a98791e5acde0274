"""The plot of ``bench.day``: the day's arrivals, each variant's claim waits, and its free
workers (and the learned target) over the day. Matplotlib with the Agg backend (the ``bench``
extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.dayparts import HOUR, Session, arrivals_per_bin

STYLES = ("tab:red", "tab:blue", "tab:green", "tab:purple")


def plot_day(rows: Sequence[Mapping[str, Any]], trace: Sequence[Session], args: Any,
             path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start, end, speed = args.start * HOUR, args.end * HOUR, args.speed
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.4), dpi=110, sharex=True)
    bins = arrivals_per_bin(trace, 900, start, end)
    top.bar([args.start + (i + 0.5) / 4 for i in range(len(bins))], bins, width=0.23,
            color="0.82", label="claims arriving per 15 min")
    top.set_ylabel("claims per 15 min")
    waits = top.twinx()
    for k, r in enumerate(rows):
        claims = [c for c in r["series"]["claims"] if c.get("status") == "assigned"]
        waits.plot([args.start + c["sent_s"] * speed / HOUR for c in claims],
                   [c["wait_s"] * speed / 60 for c in claims], "o", ms=3.5, alpha=0.8,
                   color=STYLES[k % len(STYLES)], label=f"wait, {r['variant']}")
        samples = r["series"]["samples"]
        bottom.step([args.start + t * speed / HOUR for t, _ in samples["free"]],
                    [n for _, n in samples["free"]], where="post",
                    color=STYLES[k % len(STYLES)], label=f"free workers, {r['variant']}")
        if str(r["variant"]).startswith("learned"):
            bottom.step([args.start + t * speed / HOUR for t, _ in samples["target"]],
                        [n for _, n in samples["target"]], where="post", ls="--",
                        color=STYLES[k % len(STYLES)], alpha=0.6,
                        label=f"warm target, {r['variant']}")
    waits.set_ylabel("claim wait, minutes")
    lines = top.get_legend_handles_labels()
    more = waits.get_legend_handles_labels()
    top.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper right")
    top.set_title(f"a day of claims ({len(trace)} claims, replayed at {speed:g}x)", fontsize=10)
    bottom.set_ylabel("free (idle) workers")
    bottom.set_xlabel("hour of the day")
    bottom.legend(fontsize=7, loc="upper right")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
