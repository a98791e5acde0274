"""What the command line prints, as pure functions of a reply and ``now`` (no I/O, no clock).

Plain text for pipes and scripts; ``shared.client_status`` dresses the same facts in
colour for a terminal. Times are UTC, durations in two units at most (``1h30m``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.client_args import format_duration

COUNTS = ("free", "leased", "booting", "draining", "dead")
#: A lease this close to its end is shown as urgent (PROTOCOL's WARN_BEFORE_SECONDS default).
URGENT_SECONDS = 300


def epoch(iso_text: str | None) -> float | None:
    """``2026-11-28T10:00:00Z`` → epoch seconds; None for None or an unreadable value."""
    if not iso_text:
        return None
    try:
        return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def clock_text(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).strftime("%H:%M:%S UTC")


def left_text(seconds: float) -> str:
    """Time left, to the minute once there are a few of them (``1h``, not ``59m59s``)."""
    return format_duration(round(seconds / 60) * 60 if seconds >= 120 else seconds)


def expiry_text(iso_text: str | None, now: float) -> str:
    """``2026-11-28 10:00 UTC (58m left)``; ``-`` when unknown."""
    at = epoch(iso_text)
    if at is None:
        return "-"
    when = datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    left = at - now
    return f"{when} ({left_text(left)} left)" if left >= 0 else f"{when} (ended)"


# --- claim -------------------------------------------------------------------------------
def claim_lines(reply: dict[str, Any], user: str, *, lease_given: bool, now: float
                ) -> list[str]:
    """The human answer to a claim; the first line says what happened."""
    status = reply.get("status")
    if status != "assigned":
        return [f"{status}: {reply.get('reason') or 'no reason given'}"]
    w = reply.get("worker") or {}
    iid = w.get("instance_id", "?")
    if reply.get("existing"):
        first = f"you already hold {iid} (MAX_LEASES_PER_USER reached); "
        first += ("--lease did not apply: use `workerpool renew`" if lease_given else
                  "its lease is unchanged: `workerpool renew` extends it")
    else:
        first = f"assigned {iid} to {user}"
    lines = [first,
             f"  url:          {w.get('url') or '-'}",
             f"  public ip:    {w.get('public_ip') or '-'}",
             f"  private ip:   {w.get('private_ip') or '-'}",
             f"  lease until:  {expiry_text(reply.get('lease_expiry'), now)}"]
    if w.get("tls_fingerprint"):
        lines.append(f"  certificate:  SHA-256 {w['tls_fingerprint']}")
    if w.get("password"):
        lines.append(f"  password:     {w['password']}")
    return lines


def waiting_text(elapsed: float, status: dict[str, Any] | None, wait: int) -> str:
    """The spinner's line while a claim waits: the time waited and, from the latest
    ``status`` reply, what the pool is doing (claims waiting, machines booting, desired of
    max, and why launches fail when they do)."""
    text = f"waiting for a worker {format_duration(elapsed)} of {format_duration(wait)}"
    pool = (status or {}).get("pool")
    if pool:
        text += (f" · {pool.get('waiting', 0)} waiting · {pool.get('booting', 0)} booting"
                 f" · desired {pool.get('desired', 0)}/{pool.get('max_size', 0)}")
    if status and status.get("launch_error"):
        text += f" · launches failing: {status['launch_error']}"
    return text


# --- release, renew, cancel --------------------------------------------------------------
def lease_line(kind: str, reply: dict[str, Any], instance: str, now: float) -> str:
    status = reply.get("status")
    if status in ("released", "renewed"):
        line = f"{status} {instance}"
        if reply.get("lease_expiry"):
            line += f": lease until {expiry_text(reply['lease_expiry'], now)}"
        return line
    if status == "not_found":
        return (f"not_found: {instance} is not leased to you (released, expired, or "
                f"never yours); `workerpool status` lists your leases")
    return f"{status}: {reply.get('reason') or 'no reason given'}"


def cancel_line(reply: dict[str, Any], claim_request_id: str) -> str:
    status = reply.get("status")
    if status == "cancelled":
        return f"cancelled claim {claim_request_id}: it will not be assigned"
    if status == "released":
        iid = reply.get("instance_id") or "its worker"
        return (f"claim {claim_request_id} had been assigned {iid} just before; "
                "released it")
    if status == "not_found":
        return f"not_found: {reply.get('reason') or f'no claim {claim_request_id} of yours'}"
    return f"{status}: {reply.get('reason') or 'no reason given'}"


# --- status ------------------------------------------------------------------------------
def pool_lines(pool: dict[str, Any]) -> list[str]:
    counts = ", ".join(f"{pool.get(k, 0)} {k}" for k in COUNTS)
    return [f"pool: {counts}",
            f"claims waiting: {pool.get('waiting', 0)}    "
            f"machines: desired {pool.get('desired', 0)} of max {pool.get('max_size', 0)}"]


def lease_rows(leases: list[dict[str, Any]], now: float) -> list[tuple[str, ...]]:
    """INSTANCE, URL, EXPIRES, LEFT, IDLE for each lease (strings, ``-`` when unknown)."""
    rows: list[tuple[str, ...]] = []
    for lease in leases:
        at = epoch(lease.get("lease_expiry"))
        idle = lease.get("idle_seconds")
        rows.append((
            str(lease.get("instance_id", "?")), str(lease.get("url") or "-"),
            datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M") if at else "-",
            left_text(at - now) if at is not None and at >= now else
            ("ended" if at is not None else "-"),
            format_duration(idle) if isinstance(idle, int | float) else "-"))
    return rows


LEASE_HEADER = ("INSTANCE", "URL", "EXPIRES (UTC)", "LEFT", "IDLE")


def table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]


def status_text(reply: dict[str, Any], user: str, now: float) -> str:
    """``workerpool status`` for a pipe or a script that reads text."""
    if reply.get("status") != "ok":
        text = f"{reply.get('status')}: {reply.get('reason') or 'no reason given'}"
        if "not served" in text:  # a dispatcher older than PROTOCOL v2
            text += " (an older dispatcher; `workerpool status --aws` reads the pool from AWS)"
        return text
    lines = pool_lines(reply.get("pool") or {})
    if reply.get("launch_error"):
        lines.append(f"launches failing: {reply['launch_error']}")
    leases = reply.get("leases") or []
    lines.append("")
    if leases:
        lines.append(f"leases of {user}:")
        lines += table([LEASE_HEADER, *lease_rows(leases, now)])
    else:
        lines.append(f"{user} holds no worker (`workerpool claim` gets one)")
    return "\n".join(lines)
