"""The plot of ``bench.day``, four panels over the hours of the day: the demand (claims
arriving per 15 min, sessions under way), each variant's claim waits, its machines (the
instances in the group), and its free workers with the learned warm target (on a scale of
their own: a few machines beside dozens). Matplotlib with the Agg backend (the ``bench``
extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.dayparts import HOUR, Session, arrivals_per_bin, in_progress

STYLES = ("tab:red", "tab:blue", "tab:green", "tab:purple")
MARKERS = ("o", "s", "^", "D")
#: a variant's look follows its mode, whatever the order the run took them in
MODES = ("fixed", "learned")


def look(k: int, variant: str) -> tuple[str, str, bool]:
    """(colour, marker, filled) of the k-th variant: fixed red dots, learned blue squares."""
    mode = variant.partition(":")[0]
    i = MODES.index(mode) if mode in MODES and k < len(MODES) else k
    return STYLES[i % len(STYLES)], MARKERS[i % len(MARKERS)], i % 2 == 0


def plot_day(rows: Sequence[Mapping[str, Any]], trace: Sequence[Session], args: Any,
             path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start, end, speed = args.start * HOUR, args.end * HOUR, args.speed
    fig, (demand, waits, vms, free) = plt.subplots(
        4, 1, figsize=(9, 10.4), dpi=110, sharex=True,
        gridspec_kw={"height_ratios": (1, 1.1, 1.1, 1.1)})

    def hour(run_s: float) -> float:
        return float(args.start + run_s * speed / HOUR)

    bins = arrivals_per_bin(trace, 900, start, end)
    demand.bar([args.start + (i + 0.5) / 4 for i in range(len(bins))], bins, width=0.23,
               color="0.75", label="claims arriving per 15 min")
    under_way = in_progress(trace, start, end, 60)
    demand.step([t / HOUR for t, _ in under_way], [n for _, n in under_way], where="post",
                color="0.2", lw=1.2, label="sessions under way")
    demand.set_ylabel("claims, sessions")
    demand.set_title(f"a day of claims: {len(trace)} claims from {args.users} developers, "
                     f"replayed at {speed:g}× (day time on every axis)", fontsize=10)
    demand.legend(fontsize=7, loc="upper right")

    for k, r in enumerate(rows):
        color, marker, filled = look(k, str(r["variant"]))
        claims = [c for c in r["series"]["claims"] if c.get("status") == "assigned"]
        waits.plot([hour(c["sent_s"]) for c in claims],
                   [c["wait_s"] * speed / 60 for c in claims], marker, ms=3.5, alpha=0.75,
                   color=color, mfc=color if filled else "none",
                   label=f"{r['variant']}: p50 {r['wait_p50'] or 0:.0f} s, "
                         f"p95 {r['wait_p95'] or 0:.0f} s")
        samples = r["series"]["samples"]
        vms.step([hour(t) for t, _ in samples["live"]], [n for _, n in samples["live"]],
                 where="post", color=color, lw=1.4,
                 label=f"VMs in the group, {r['variant']} ({r['vm_min']:,.0f} VM-min)")
        free.step([hour(t) for t, _ in samples["free"]], [n for _, n in samples["free"]],
                  where="post", color=color, lw=1.0, alpha=0.8,
                  label=f"free (idle) workers, {r['variant']} ({r['idle_vm_min']:,.0f} "
                        "VM-min)")
        if str(r["variant"]).startswith("learned"):
            free.step([hour(t) for t, _ in samples["target"]],
                      [n for _, n in samples["target"]], where="post", color="black",
                      lw=1.0, ls=(0, (3, 2)), label=f"warm target, {r['variant']}")
    waits.set_ylabel("claim wait, minutes")
    waits.legend(fontsize=7, loc="upper right", title="each dot a claim (at its arrival)",
                 title_fontsize=7)
    vms.set_ylabel("VMs in the group")
    vms.legend(fontsize=7, loc="upper right")
    free.set_ylabel("free workers")
    free.set_xlabel("hour of the day")
    free.legend(fontsize=7, loc="upper right")
    free.set_xlim(args.start, args.end + 0.25)
    for ax, room in ((demand, 1.15), (waits, 1.45), (vms, 1.45), (free, 1.6)):  # legends
        ax.grid(True, alpha=0.3)
        ax.set_ylim(0, max(ax.get_ylim()[1], 1) * room)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
