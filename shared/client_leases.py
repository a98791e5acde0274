"""``workerpool release``, ``renew`` and ``open``: the worker you hold.

Each takes the instance as its argument, and by default the last one this user claimed on
this machine (``shared.client_state``), so a user without AWS access never has to look an
instance id up; ``workerpool status`` lists the leases the pool knows of.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from shared import client_state, topology
from shared.client_args import CliError
from shared.client_common import (
    EXIT_LEASE,
    EXIT_TIMEOUT,
    open_client,
    out,
    resolve_user,
    settings,
)
from shared.client_render import lease_line
from shared.client_rpc import new_request_id


def _instance(args: argparse.Namespace, user: str) -> str:
    """The instance argument, else ``--instance``, else this user's last claimed worker."""
    given = args.instance or args.instance_opt
    if given:
        return str(given)
    record = client_state.last(user)
    if record is None or not record.get("instance_id"):
        raise CliError(f"no instance given and no worker claimed by {user} on this machine: "
                       f"give it (`workerpool {args.command} i-…`; `workerpool status` "
                       "lists your leases)")
    print(f"{args.command}: {record['instance_id']}, the last worker {user} claimed here",
          file=sys.stderr)
    return str(record["instance_id"])


def _lease_call(args: argparse.Namespace, kind: str) -> tuple[int, str, dict[str, Any]]:
    user = resolve_user(args)
    instance = _instance(args, user)
    body: dict[str, Any] = {"type": kind, "request_id": args.request_id or new_request_id(),
                            "user_id": user, "instance_id": instance}
    if kind == "renew" and args.lease is not None:
        body["lease_seconds"] = args.lease
    with open_client(settings()) as client:
        client.check_served(topology.LEASES)
        try:
            reply = client.call(topology.LEASES, body, args.wait)
        except TimeoutError:
            print(f"workerpool {kind}: no reply within {args.wait}s", file=sys.stderr)
            return EXIT_TIMEOUT, instance, {}
    if kind == "release" and reply.get("status") == "released":
        client_state.forget(user, instance)
    if kind == "renew" and reply.get("status") == "renewed":
        client_state.renewed(user, instance, reply.get("lease_expiry"))
    out(json.dumps(reply) if args.json else lease_line(kind, reply, instance, time.time()))
    return EXIT_LEASE.get(str(reply.get("status")), 1), instance, reply


def cmd_release(args: argparse.Namespace) -> int:
    return _lease_call(args, "release")[0]


def cmd_renew(args: argparse.Namespace) -> int:
    return _lease_call(args, "renew")[0]


def cmd_open(args: argparse.Namespace) -> int:
    """Open the worker's code-server in a browser, after checking that the server presents
    the certificate the worker's attested agent registered."""
    import webbrowser

    from shared.fingerprint import presented, same

    url, expected = args.url, args.fingerprint
    if url is None:
        user = resolve_user(args)
        record = client_state.last(user)
        if record is None or not record.get("url"):
            raise CliError(f"no worker claimed by {user} on this machine; claim one, or give "
                           "its URL (--url)")
        url, expected = record["url"], expected or record.get("tls_fingerprint")
    if url.startswith("https://"):
        if not expected:
            raise CliError("no certificate fingerprint to check (give --fingerprint)")
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
        out(f"certificate checked: SHA-256 {seen}")
    out(url)
    if not args.no_browser:
        webbrowser.open(url)
    return 0
