"""``workerpool watch``: your lease events as they happen (PROTOCOL v2, ``workerpool.events``):
a lease about to end (expiry or idleness), extended, ended.

It binds an exclusive, auto-deleted queue of its own (server-named) to the topic exchange
``workerpool.events`` with routing key ``user.<user>``, and prints each event: one line a
event, coloured on a terminal, plain on a pipe, the event's JSON with ``--json``. The queue
lives as long as the connection: events sent while nobody watches are not kept (they are
notices, not state: ``workerpool status`` says where a lease stands). After a broker outage
it binds again and says so on stderr. Built from ``shared.broker``'s pieces, like
client_rpc, so this module does not import pika either.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rich.text import Text

from shared import topology
from shared.broker import CONNECTION_ERRORS, connect
from shared.broker.connection import close_quietly
from shared.client_args import CliError
from shared.client_common import EXIT_UNREACHABLE, out, resolve_user, settings
from shared.client_render import clock_text
from shared.client_rpc import hint
from shared.client_term import StopFlag, console
from shared.errors import BrokerUnavailable, InvalidMessage
from shared.messages import LeaseEvent, UserEvent, decode, event_text

SLICE = 0.2  # how soon Ctrl-C is seen while waiting for events
MAX_BACKOFF = 30.0
STYLES = {"lease_ending": "bold yellow", "lease_extended": "green", "lease_ended": "bold red"}


def plain_line(event: LeaseEvent) -> str:
    """``10:55:00 UTC lease_ending i-0abc: workerpool: …`` (pure: for pipes and tests)."""
    return f"{clock_text(event.sent_at.timestamp())} {event.type} {event.instance_id}: " \
        f"{event_text(event)}"


class EventFeed:
    """One connection, one queue bound to ``user.<user>``; ``pump`` hands over each event."""

    def __init__(self, url: str, user: str) -> None:
        from shared.config import connection_name

        self.url, self.user = url, user
        self.bodies: list[bytes] = []
        self._conn = connect(url, connection_name("cli"))
        try:
            channel = self._conn.channel()
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue, topology.EVENTS_EXCHANGE,
                               routing_key=topology.events_key(user))
            channel.basic_consume(queue, self._on_event, auto_ack=True)
        except CONNECTION_ERRORS as exc:
            close_quietly(self._conn)
            raise self._why(exc) from exc

    def _why(self, exc: BaseException) -> Exception:
        code = getattr(exc, "reply_code", None)
        if code == 404:
            return BrokerUnavailable(f"the broker has no exchange {topology.EVENTS_EXCHANGE}: "
                                     f"{hint(self.url)}")
        if code == 403:
            return CliError(f"the broker does not let you watch {topology.events_key(self.user)}"
                            " (your broker user may watch only its own events)")
        return BrokerUnavailable(f"could not watch: {exc!r}")

    def _on_event(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        self.bodies.append(body)

    def pump(self, seconds: float) -> list[bytes]:
        """Let the connection work for ``seconds``; the event bodies that came."""
        try:
            self._conn.process_data_events(time_limit=seconds)
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"lost the broker connection: {exc!r}") from exc
        got, self.bodies = self.bodies, []
        return got

    def close(self) -> None:
        close_quietly(self._conn)


def show(body: bytes, args: argparse.Namespace) -> bool:
    """Print one event; False for a body that is not one (shown on stderr, not counted)."""
    if args.json:
        out(body.decode("utf-8", "replace").strip())
        return True
    try:
        event: LeaseEvent = decode(UserEvent, body)
    except InvalidMessage as exc:
        print(f"workerpool watch: an event this version cannot read ({exc.reason})",
              file=sys.stderr, flush=True)
        return False
    con = console()
    if con.is_terminal:
        con.print(Text(plain_line(event), style=STYLES.get(event.type, "")))
    else:
        out(plain_line(event))
    return True


def cmd_watch(args: argparse.Namespace) -> int:
    """Until Ctrl-C (or ``--count`` events): show events, binding again after an outage."""
    s, user = settings(), resolve_user(args)
    shown, failures, feed, watched = 0, 0, None, False
    with StopFlag() as stop:
        while not stop and (args.count is None or shown < args.count):
            try:
                if feed is None:
                    feed = EventFeed(s.amqp_url, user)
                    note = "again" if failures else f"(Ctrl-C to stop; {user})"
                    print(f"workerpool watch: watching the events of {user} {note}",
                          file=sys.stderr, flush=True)
                    failures, watched = 0, True
                for body in feed.pump(SLICE):
                    shown += show(body, args)
            except BrokerUnavailable as exc:
                if not watched:  # never bound: nothing to ride out
                    print(f"workerpool watch: {exc}", file=sys.stderr)
                    return EXIT_UNREACHABLE
                failures += 1
                if feed is not None:
                    feed.close()
                    feed = None
                pause = min(MAX_BACKOFF, 0.5 * 2 ** min(failures, 6))
                print(f"workerpool watch: {exc}; trying again in {pause:g}s (events meanwhile "
                      "are not kept)", file=sys.stderr, flush=True)
                deadline = time.monotonic() + pause
                while not stop and time.monotonic() < deadline:
                    time.sleep(SLICE)
    if feed is not None:
        feed.close()
    return 0
