"""``workerpool claim`` and ``workerpool cancel`` (PROTOCOL §3, v2 cancel).

A claim that waits shows its request id, the time it has waited and what the pool is doing
(a ``status`` request every few seconds on the same connection). When its user gives up
(Ctrl-C, SIGTERM) or the client's own deadline passes, it sends a ``cancel`` for the claim
and says what came of it, so no worker is leased to someone who has left. The same request
id, sent again (``--request-id``), gets the same outcome: that is how a claim whose answer
was lost (a dropped connection) is picked up again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from shared import client_state, topology
from shared.client_args import format_duration
from shared.client_common import (
    EXIT_CLAIM,
    EXIT_INTERRUPTED,
    EXIT_LEASE,
    EXIT_TIMEOUT,
    open_client,
    out,
    resolve_user,
    settings,
)
from shared.client_render import cancel_line, claim_lines, waiting_text
from shared.client_rpc import NotServed, PoolClient, new_request_id
from shared.client_term import Progress, StopFlag
from shared.errors import BrokerUnavailable

#: Seconds between two ``status`` requests while a claim waits.
STATUS_EVERY = 5.0
#: A claim not answered within this long is waiting: its request id, the spinner and the
#: status requests start then (a claim served at once costs one request, and says nothing).
ANNOUNCE_AFTER = 1.0
#: How long a cancel's answer is awaited (a second Ctrl-C stops waiting at once).
CANCEL_PATIENCE = 5.0
#: After ``not_found`` (the claim not read yet), how long to listen for it being served.
LATE_PATIENCE = 3.0


class StatusPoll:
    """The pool's counts while a claim waits; stops asking when the dispatcher does not
    serve ``status`` (a v1 dispatcher answers it ``rejected``)."""

    def __init__(self, client: PoolClient, user: str) -> None:
        self.client, self.user = client, user
        self.last: dict[str, Any] | None = None  # the latest ``ok`` reply
        self.enabled: bool | None = None  # None: not looked yet whether anyone serves it
        self._pending: tuple[str, float] | None = None
        self._next = 0.0

    def _served(self) -> bool:
        """Only ask when a dispatcher consumes the queue: unanswered requests would pile up."""
        try:
            count = self.client.consumers(topology.LEASES)
        except NotServed:
            return False
        return count is None or count > 0

    def tick(self, now: float) -> None:
        if self.enabled is None:
            self.enabled = self._served()
        if self._pending is not None:
            reply = self.client.take(self._pending[0])
            if reply is not None:
                self._pending = None
                if reply.get("status") == "ok":
                    self.last = reply
                else:
                    self.enabled = False
            elif now - self._pending[1] > 3 * STATUS_EVERY:
                self._pending = None  # lost: ask again
        if self.enabled and self._pending is None and now >= self._next:
            body = {"type": "status", "request_id": new_request_id("cli-status"),
                    "user_id": self.user}
            try:
                self._pending = (self.client.send(topology.LEASES, body), now)
            except NotServed:
                self.enabled = False
            self._next = now + STATUS_EVERY


def _await_claim(client: PoolClient, cid: str, *, wait: int, deadline: float,
                 stop: StopFlag, progress: Progress, user: str, announce: str
                 ) -> dict[str, Any] | None:
    """The claim's reply, or None when its user gave up or the deadline passed. A claim
    that is not answered at once says ``announce`` (its request id) first."""
    began = time.monotonic()
    poll = StatusPoll(client, user)
    announced = False
    while True:
        reply = client.take(cid)
        now = time.monotonic()
        if reply is not None or stop or now >= deadline:
            return reply
        if now - began >= ANNOUNCE_AFTER:  # waiting, not just on its way: say so
            if not announced:
                progress.say(announce)
                announced = True
            poll.tick(now)
            key = poll.last and (poll.last.get("pool"), poll.last.get("launch_error"))
            progress.update(waiting_text(now - began, poll.last, wait), key=key)
        client.pump(min(0.2, max(0.0, deadline - now)))


def cmd_claim(args: argparse.Namespace) -> int:
    user = resolve_user(args)
    s = settings()
    wait = args.wait if args.wait is not None else s.claim_wait_seconds
    rid = args.request_id or new_request_id()
    body: dict[str, Any] = {"request_id": rid, "user_id": user, "wait_seconds": wait}
    if args.lease is not None:
        body["lease_seconds"] = args.lease
    progress = Progress(quiet=args.quiet)
    with StopFlag() as stop, open_client(s) as client:
        client.check_served(topology.CLAIMS)
        if stop:  # given up before anything was sent
            return EXIT_INTERRUPTED
        cid = client.send(topology.CLAIMS, body)
        announce = (f"claim {rid} for {user} waits up to {format_duration(wait)} for a worker "
                    f"(Ctrl-C cancels it; `workerpool claim --request-id {rid}` picks it up "
                    "again)")
        try:
            reply = _await_claim(client, cid, wait=wait, deadline=time.monotonic() + wait
                                 + args.grace, stop=stop, progress=progress, user=user,
                                 announce=announce)
        except BrokerUnavailable as exc:
            progress.stop()
            raise BrokerUnavailable(
                f"{exc}; claim {rid} may still be served: `workerpool claim --request-id "
                f"{rid}` picks it up, `workerpool cancel {rid}` gives it up") from exc
        progress.stop()
        if reply is None:
            why = stop.signal_name or f"no answer within {wait + args.grace:g}s"
            return _give_up(client, args, user, rid, cid, why, stop, progress)
    return _show_claim(args, user, reply)


def _show_claim(args: argparse.Namespace, user: str, reply: dict[str, Any]) -> int:
    if reply.get("status") == "assigned":
        client_state.remember(user, reply)  # before printing: a closed pipe loses no state
    if args.json:
        out(json.dumps(reply))
    else:
        out("\n".join(claim_lines(reply, user, lease_given=args.lease is not None,
                                  now=time.time())))
    return EXIT_CLAIM.get(str(reply.get("status")), 1)


def _give_up(client: PoolClient, args: argparse.Namespace, user: str, rid: str, cid: str,
             why: str, stop: StopFlag, progress: Progress) -> int:
    """Cancel the claim and say what came of it; exit 130 (interrupted) or 4 (timeout)."""
    code = EXIT_INTERRUPTED if stop else EXIT_TIMEOUT
    progress.say(f"{why}: cancelling claim {rid}")
    body = {"type": "cancel", "request_id": new_request_id(), "user_id": user,
            "claim_request_id": rid}
    try:
        cancel_cid = client.send(topology.LEASES, body)
    except BrokerUnavailable as exc:
        progress.say(f"could not send the cancel ({exc}); claim {rid} may still be served: "
                     f"`workerpool cancel {rid}`")
        return code
    seen = stop.count
    cancel = _wait_for(client, cancel_cid, CANCEL_PATIENCE, stop, seen)
    claim = client.take(cid)
    if cancel is None:
        progress.say(f"the cancel was sent (the broker has it) but not answered yet; "
                     f"`workerpool cancel {rid}` asks again")
        return code
    if cancel.get("status") == "not_found" and claim is None:
        claim = _wait_for(client, cid, LATE_PATIENCE, stop, stop.count)
        if claim is not None and claim.get("status") == "assigned":
            return _release_late(client, user, rid, claim, progress, code)
    if args.json:
        out(json.dumps(cancel))
    progress.say(cancel_line(cancel, rid))
    return code


def _wait_for(client: PoolClient, cid: str, seconds: float, stop: StopFlag, seen: int
              ) -> dict[str, Any] | None:
    """One reply within ``seconds``; None at the deadline or on a new signal."""
    deadline = time.monotonic() + seconds
    while (reply := client.take(cid)) is None:
        if time.monotonic() >= deadline or stop.count > seen:
            return None
        client.pump(0.2)
    return reply


def _release_late(client: PoolClient, user: str, rid: str, claim: dict[str, Any],
                  progress: Progress, code: int) -> int:
    """The claim was served after all (its cancel came first): give the worker back."""
    iid = (claim.get("worker") or {}).get("instance_id")
    body = {"type": "release", "request_id": new_request_id(), "user_id": user,
            "instance_id": iid}
    try:
        status = client.call(topology.LEASES, body, CANCEL_PATIENCE).get("status")
    except (TimeoutError, BrokerUnavailable) as exc:
        status = f"not answered ({exc})"
    progress.say(f"claim {rid} was assigned {iid} after its cancel; release: {status}")
    return code


def cmd_cancel(args: argparse.Namespace) -> int:
    """``workerpool cancel R``: give up a claim that another terminal (or a lost
    connection) left waiting; a claim already served is released."""
    user = resolve_user(args)
    body = {"type": "cancel", "request_id": args.request_id or new_request_id(),
            "user_id": user, "claim_request_id": args.claim}
    with open_client(settings()) as client:
        client.check_served(topology.LEASES)
        try:
            reply = client.call(topology.LEASES, body, args.wait)
        except TimeoutError:
            print(f"workerpool cancel: no reply within {args.wait}s", file=sys.stderr)
            return EXIT_TIMEOUT
    out(json.dumps(reply) if args.json else cancel_line(reply, args.claim))
    return EXIT_LEASE.get(str(reply.get("status")), 1)
