"""``workerpool status``: the pool and your leases, from a dispatcher (a v2 ``status``
request, broker credentials only); ``--aws`` the operator's view from the table and the ASG.

``--watch`` redraws in place on a terminal (rich's Live: no clearing, no flicker), prints one
view after another on a pipe (one JSON line each with ``--json``), and rides out transient
failures: it reconnects with backoff and keeps the last view on screen, with a note saying
since when it is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shared import client_aws, topology
from shared.client_common import (
    EXIT_TIMEOUT,
    EXIT_USAGE,
    connect_client,
    out,
    resolve_user,
    settings,
)
from shared.client_render import (
    COUNTS,
    LEASE_HEADER,
    URGENT_SECONDS,
    clock_text,
    epoch,
    lease_rows,
    status_text,
)
from shared.client_rpc import PoolClient, new_request_id
from shared.client_term import StopFlag, console
from shared.errors import AwsUnavailable, BrokerUnavailable

COLOURS = {"free": "green", "leased": "cyan", "booting": "yellow", "draining": "magenta",
           "dead": "red"}
#: Longest pause between two tries while the broker or the dispatchers are away.
MAX_BACKOFF = 30.0
TRANSIENT = (BrokerUnavailable, AwsUnavailable, TimeoutError)


def status_view(reply: dict[str, Any], user: str, now: float) -> RenderableType:
    """The broker status for a terminal: counts in colour, your leases as a table."""
    if reply.get("status") != "ok":
        return Text(status_text(reply, user, now), style="red")
    pool = reply.get("pool") or {}
    counts = Text.assemble(("pool  ", "bold"))
    for i, key in enumerate(COUNTS):
        n = pool.get(key, 0)
        counts.append(" · " if i else "")
        counts.append(f"{n} {key}", style=COLOURS[key] if n else "dim")
    waiting = pool.get("waiting", 0)
    line2 = Text.assemble("claims waiting ", (str(waiting), "bold yellow" if waiting else "bold"),
                          f" · machines desired {pool.get('desired', 0)} of max "
                          f"{pool.get('max_size', 0)}")
    if reply.get("launch_error"):
        line2.append(f"\nlaunches failing: {reply['launch_error']}", style="bold red")
    leases = reply.get("leases") or []
    if not leases:
        return Group(counts, line2, Text(""),
                     Text(f"{user} holds no worker (`workerpool claim` gets one)", style="dim"))
    table = Table(*LEASE_HEADER, box=box.SIMPLE_HEAD, title=f"leases of {user}",
                  title_justify="left", pad_edge=False, show_edge=False)
    for lease, row in zip(leases, lease_rows(leases, now), strict=True):
        at = epoch(lease.get("lease_expiry"))
        urgent = at is not None and at - now < URGENT_SECONDS
        table.add_row(*row[:3], Text(row[3], style="bold red" if urgent else ""), row[4])
    return Group(counts, line2, Text(""), table)


class BrokerSource:
    """Status replies on one connection, reopened after a failure."""

    def __init__(self, s: Any, user: str, wait: float) -> None:
        self.settings, self.user, self.wait = s, user, wait
        self._client: PoolClient | None = None

    def fetch(self, gave_up: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """One status answer; ``gave_up`` (Ctrl-C during ``--watch``) ends the wait early."""
        if self._client is None:
            self._client = connect_client(self.settings)
            self._client.check_served(topology.LEASES, gave_up=gave_up)
        body = {"type": "status", "request_id": new_request_id("cli-status"),
                "user_id": self.user}
        return self._client.call(topology.LEASES, body, self.wait, gave_up)

    def plain(self, reply: dict[str, Any], now: float) -> str:
        return status_text(reply, self.user, now)

    def rich(self, reply: dict[str, Any], now: float) -> RenderableType:
        return status_view(reply, self.user, now)

    def idle(self, seconds: float, stop: StopFlag) -> None:
        """Wait, keeping the connection's heartbeats answered; back early on a signal."""
        deadline = time.monotonic() + seconds
        while not stop and (left := deadline - time.monotonic()) > 0:
            if self._client is None:
                time.sleep(min(0.1, left))
                continue
            try:
                self._client.pump(min(0.1, left), stop_on_reply=False)
            except BrokerUnavailable:
                self.reset()

    def reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


class AwsSource:
    """The operator's snapshot (a Scan, the ASG, queue depths) for each view."""

    def fetch(self, gave_up: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        return client_aws.snapshot()

    def plain(self, snap: dict[str, Any], now: float) -> str:
        return client_aws.render(snap)

    def rich(self, snap: dict[str, Any], now: float) -> RenderableType:
        return Text(client_aws.render(snap))

    def idle(self, seconds: float, stop: StopFlag) -> None:
        deadline = time.monotonic() + seconds
        while not stop and time.monotonic() < deadline:
            time.sleep(0.1)

    def reset(self) -> None:
        pass


Source = BrokerSource | AwsSource


def cmd_status(args: argparse.Namespace) -> int:
    source: Source = (AwsSource() if args.aws else
                      BrokerSource(settings(), resolve_user(args), args.wait))
    if args.watch:
        return _watch(args, source)
    try:
        data = source.fetch()
    except TimeoutError:
        print(f"workerpool status: no dispatcher answered within {args.wait}s",
              file=sys.stderr)
        return EXIT_TIMEOUT
    finally:
        source.reset()
    _show(args, source, data)
    return 0 if args.aws or data.get("status") == "ok" else EXIT_USAGE


def _show(args: argparse.Namespace, source: Source, data: dict[str, Any]) -> None:
    now = time.time()
    con = console()
    if args.json:
        out(json.dumps(data))
    elif con.is_terminal:
        con.print(source.rich(data, now))
    else:
        out(source.plain(data, now))


def _footer(args: argparse.Namespace, shown_at: float | None, note: str | None
            ) -> list[RenderableType]:
    parts: list[RenderableType] = []
    if note:
        parts.append(Text(f"! {note}", style="yellow"))
    when = clock_text(shown_at) if shown_at else "never"
    parts.append(Text(f"updated {when} · every {args.interval:g}s · Ctrl-C to stop",
                      style="dim"))
    return parts


def _watch(args: argparse.Namespace, source: Source) -> int:
    """Until Ctrl-C: fetch, draw, wait; a transient failure keeps the last view, with a
    note, and the next try comes after a growing pause (up to MAX_BACKOFF)."""
    con = console()
    live = Live(console=con, auto_refresh=False) if con.is_terminal and not args.json else None
    last: dict[str, Any] | None = None
    shown_at: float | None = None
    failures = 0
    with StopFlag() as stop:
        if live is not None:
            live.start()
        try:
            while not stop:
                note = None
                try:
                    last, shown_at, failures = source.fetch(lambda: bool(stop)), time.time(), 0
                except TRANSIENT as exc:
                    failures += 1
                    source.reset()
                    note = (f"{clock_text(time.time())}: {exc or 'no answer'}; trying again"
                            + (f" (the view is from {clock_text(shown_at)})" if shown_at else ""))
                _draw(args, source, live, (last, shown_at), note)
                source.idle(min(MAX_BACKOFF, args.interval * 2 ** min(failures, 6)), stop)
        finally:
            if live is not None:
                live.stop()
            source.reset()
    return 0


def _draw(args: argparse.Namespace, source: Source, live: Live | None,
          view: tuple[dict[str, Any] | None, float | None], note: str | None) -> None:
    data, shown_at = view
    now = time.time()
    if live is not None:
        body = [source.rich(data, now)] if data is not None else []
        live.update(Group(*body, *_footer(args, shown_at, note)), refresh=True)
    elif note:
        print(f"workerpool status: {note}", file=sys.stderr, flush=True)
    elif data is not None and args.json:
        out(json.dumps(data))
    elif data is not None:
        out(f"--- {clock_text(now)}\n{source.plain(data, now)}\n")
