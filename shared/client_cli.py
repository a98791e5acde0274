"""The client verbs of ``workerpool``: claim, release, renew, status (PROTOCOL §3).

Exit codes scripts can use: 0 done (assigned / released / renewed), 1 answered but not done
(unavailable / not_found), 2 rejected or bad usage, 3 broker or AWS unreachable, 4 no reply
in time. ``--json`` prints the reply (or the status) as JSON on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import uuid
from typing import Any

from shared import client_state, topology
from shared.clock import iso

EXIT = {"assigned": 0, "released": 0, "renewed": 0, "unavailable": 1, "not_found": 1,
        "rejected": 2}
EXIT_TIMEOUT = 4


def _settings() -> Any:
    from shared.config import parse_settings

    return parse_settings()


def _request_id(args: argparse.Namespace) -> str:
    return args.request_id or f"cli-{uuid.uuid4().hex[:12]}"


class Spinner:
    """A one-line progress indicator on stderr while waiting (only on a terminal)."""

    def __init__(self, text: str, enabled: bool) -> None:
        self.text, self.enabled = text, enabled and sys.stderr.isatty()
        self.frames = itertools.cycle("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
        self.start = time.monotonic()
        self.last = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last > 0.1:
            self.last = now
            sys.stderr.write(f"\r{next(self.frames)} {self.text} ({now - self.start:4.0f}s)")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _call(queue: str, body: dict[str, Any], timeout: float, spinner: Spinner) -> dict[str, Any]:
    from shared.broker import RpcClient
    from shared.config import connection_name

    settings = _settings()
    rpc = RpcClient(settings.amqp_url, connection_name("cli"))
    try:
        raw = rpc.call(queue, json.dumps(body).encode(), timeout, on_tick=spinner.tick)
    finally:
        spinner.done()
        rpc.close()
    return json.loads(raw)  # type: ignore[no-any-return]


def _finish(reply: dict[str, Any], args: argparse.Namespace, human: str) -> int:
    if args.json:
        print(json.dumps(reply))
    else:
        print(human)
    return EXIT.get(reply.get("status", ""), 1)


def cmd_claim(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"request_id": _request_id(args), "user_id": args.user,
                            "lease_seconds": args.lease, "wait_seconds": args.wait}
    body = {k: v for k, v in body.items() if v is not None}
    wait = args.wait if args.wait is not None else _settings().claim_wait_seconds
    try:
        reply = _call(topology.CLAIMS, body, wait + args.grace,
                      Spinner(f"waiting for a worker for {args.user}", not args.json))
    except TimeoutError:
        print(f"workerpool claim: no reply within {wait + args.grace:g}s "
              "(is a dispatcher running? see `workerpool status`)", file=sys.stderr)
        return EXIT_TIMEOUT
    if reply["status"] == "assigned":
        w = reply["worker"]
        lines = [f"assigned {w['instance_id']} to {args.user}",
                 f"  url:          {w['url']}",
                 f"  public ip:    {w.get('public_ip') or '-'}",
                 f"  private ip:   {w.get('private_ip') or '-'}",
                 f"  lease until:  {reply['lease_expiry']}"]
        if w.get("tls_fingerprint"):
            lines.append(f"  certificate:  SHA-256 {w['tls_fingerprint']}")
        if w.get("password"):
            lines.append(f"  password:     {w['password']}")
        human = "\n".join(lines)
        client_state.remember(args.user, reply)
    else:
        human = f"{reply['status']}: {reply.get('reason')}"
    return _finish(reply, args, human)


def _lease_call(args: argparse.Namespace, kind: str) -> int:
    body: dict[str, Any] = {"type": kind, "request_id": _request_id(args), "user_id": args.user,
                            "instance_id": args.instance}
    if kind == "renew" and args.lease is not None:
        body["lease_seconds"] = args.lease
    try:
        reply = _call(topology.LEASES, body, args.timeout, Spinner(kind, False))
    except TimeoutError:
        print(f"workerpool {kind}: no reply within {args.timeout:g}s", file=sys.stderr)
        return EXIT_TIMEOUT
    human = f"{reply['status']} {args.instance}"
    if reply.get("lease_expiry"):
        human += f" until {reply['lease_expiry']}"
    if reply.get("reason"):
        human += f": {reply['reason']}"
    return _finish(reply, args, human)


def cmd_release(args: argparse.Namespace) -> int:
    code = _lease_call(args, "release")
    if code == 0:
        client_state.forget(args.user, args.instance)
    return code


def cmd_open(args: argparse.Namespace) -> int:
    """Open the worker's code-server in a browser, after checking that the server presents
    the certificate the worker's attested agent registered."""
    import webbrowser

    from shared.fingerprint import presented, same

    url, expected = args.url, args.fingerprint
    if url is None:
        record = client_state.last(args.user)
        if record is None or not record.get("url"):
            print(f"workerpool open: no worker claimed by {args.user} on this machine; "
                  "claim one, or give its URL", file=sys.stderr)
            return 2
        url, expected = record["url"], expected or record.get("tls_fingerprint")
    if url.startswith("https://"):
        if not expected:
            print("workerpool open: no certificate fingerprint to check (give --fingerprint)",
                  file=sys.stderr)
            return 2
        try:
            seen = presented(url)
        except OSError as exc:
            print(f"workerpool open: {url} does not answer: {exc}", file=sys.stderr)
            return 3
        if not same(seen, expected):
            print(f"workerpool open: {url} presents certificate SHA-256 {seen}, not the "
                  f"worker's {expected}: not opened (someone may be in between)",
                  file=sys.stderr)
            return 1
        print(f"certificate checked: SHA-256 {seen}")
    print(url)
    if not args.no_browser:
        webbrowser.open(url)
    return 0


def cmd_renew(args: argparse.Namespace) -> int:
    return _lease_call(args, "renew")


# --- status ------------------------------------------------------------------------------
def snapshot() -> dict[str, Any]:
    """The pool as an operator sees it: workers, totals, ASG, queue depths."""
    from shared.asg import Asg
    from shared.broker import queue_depths
    from shared.config import connection_name
    from shared.errors import AwsError, BrokerUnavailable
    from shared.store import Store

    s = _settings()
    now = time.time()
    store = Store.from_settings(s)
    workers = sorted(store.workers.all(), key=lambda w: (w.status, w.instance_id))
    totals: dict[str, int] = {}
    for w in workers:
        totals[w.status] = totals.get(w.status, 0) + 1
    try:
        g = Asg.from_settings(s).describe()
        asg: dict[str, Any] = {"name": g.name, "desired": g.desired, "min": g.min_size,
                               "max": g.max_size, "in_service": sum(
                                   1 for i in g.instances if i.lifecycle_state == "InService")}
    except AwsError as exc:
        asg = {"name": s.asg_name, "error": str(exc)}
    queues: dict[str, Any]
    try:
        queues = dict(queue_depths(s.amqp_url, connection_name("cli"),
                                   [q.name for q in topology.QUEUES]))
    except BrokerUnavailable as exc:
        queues = {"error": str(exc)}
    return {
        "time": iso(now),
        "workers": [{
            "instance_id": w.instance_id, "status": w.status, "healthy": w.healthy,
            "user_id": w.user_id,
            "lease_left_seconds": int(w.lease_expiry - now) if w.status == "leased" else None,
            "lease_expiry": iso(w.lease_expiry) if w.lease_expiry else None,
            "heartbeat_age_seconds": round(max(0.0, now - w.last_heartbeat), 1),
            "private_ip": w.private_ip, "public_ip": w.public_ip, "reason": w.reason,
        } for w in workers],
        "totals": totals,
        "target_available": s.target_available,
        "asg": asg,
        "queues": queues,
    }


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    return f"{sign}{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{sign}{seconds // 60}m{seconds % 60:02d}s"


def render(snap: dict[str, Any]) -> str:
    rows = [("INSTANCE", "STATUS", "HEALTHY", "USER", "LEASE LEFT", "HEARTBEAT AGE", "IP")]
    for w in snap["workers"]:
        rows.append((w["instance_id"], w["status"] + (f" ({w['reason']})" if w["reason"] else ""),
                     "yes" if w["healthy"] else "no", w["user_id"] or "-",
                     _duration(w["lease_left_seconds"]), f"{w['heartbeat_age_seconds']:.1f}s",
                     w["public_ip"] or w["private_ip"] or "-"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = [f"workerpool status at {snap['time']}", ""]
    lines += ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    if not snap["workers"]:
        lines.append("(no workers yet)")
    t = snap["totals"]
    lines.append("")
    lines.append("workers: " + ", ".join(f"{k} {t.get(k, 0)}" for k in
                                         ("free", "leased", "booting", "draining", "dead"))
                 + f"  (target free: {snap['target_available']})")
    a = snap["asg"]
    lines.append(f"asg {a['name']}: " + (a["error"] if "error" in a else
                                         f"desired {a['desired']}, in service {a['in_service']}, "
                                         f"min {a['min']}, max {a['max']}"))
    q = snap["queues"]
    lines.append("queues: " + (q["error"] if "error" in q else ", ".join(
        f"{k.removeprefix('workerpool.')} {'-' if v is None else v}" for k, v in q.items())))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    while True:
        snap = snapshot()
        if args.json:
            print(json.dumps(snap), flush=True)
        else:
            if args.watch and sys.stdout.isatty():
                sys.stdout.write("\033[H\033[2J")
            print(render(snap), flush=True)
        if not args.watch:
            return 0
        time.sleep(args.interval)


def add_commands(sub: Any) -> None:
    p = sub.add_parser("claim", help="ask for a worker VM")
    p.add_argument("--user", required=True, help="user id (1-128 chars [A-Za-z0-9._@-])")
    p.add_argument("--lease", type=int, help="lease seconds (10-86400; default LEASE_SECONDS)")
    p.add_argument("--wait", type=int, help="seconds to wait for capacity (0-900; "
                                            "default CLAIM_WAIT_SECONDS)")
    p.add_argument("--request-id", help="idempotency key (default: a new one)")
    p.add_argument("--grace", type=float, default=30, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    p.set_defaults(func=cmd_claim)

    for name, func, helptext in (("release", cmd_release, "give a worker back"),
                                 ("renew", cmd_renew, "extend a lease")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--user", required=True)
        p.add_argument("--instance", required=True, help="instance id (i-...)")
        if name == "renew":
            p.add_argument("--lease", type=int, help="new lease seconds from now")
        p.add_argument("--request-id")
        p.add_argument("--timeout", type=float, default=30)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    p = sub.add_parser("open", help="open your worker's code-server, its certificate checked")
    p.add_argument("--user", required=True, help="whose last claimed worker")
    p.add_argument("--url", help="a worker URL (default: your last claimed worker's)")
    p.add_argument("--fingerprint", help="the certificate's SHA-256 (default: from the claim)")
    p.add_argument("--no-browser", action="store_true", help="check and print, do not open")
    p.set_defaults(func=cmd_open)

    p = sub.add_parser("status", help="the pool at a glance (needs AWS access: a Scan)")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
