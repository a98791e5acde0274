"""What every client verb shares: exit codes, the user, settings, the connection, output.

Exit codes (README "Exit codes of the client"): 0 done, 1 answered but not done, 2 rejected
or bad usage or configuration, 3 broker or AWS unreachable or nobody serving the queue,
4 no reply in time, 130 interrupted (Ctrl-C; a waiting claim is cancelled first).
"""

from __future__ import annotations

import argparse
import functools
import getpass
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from shared.client_args import CliError, default_user
from shared.client_rpc import PoolClient
from shared.client_term import silence_broken_pipe
from shared.errors import BrokerUnavailable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell sees from tools killed by it
EXIT_CLAIM = {"assigned": 0, "unavailable": 1, "cancelled": 1, "rejected": 2}
EXIT_LEASE = {"released": 0, "renewed": 0, "cancelled": 0, "not_found": 1, "rejected": 2}

def exit_codes(done: str, not_done: str | None, extra: str = "") -> str:
    """The exit-code table of a command's help (README "Exit codes of the client")."""
    lines = ["exit codes:", f"  0    done ({done})"]
    if not_done:
        lines.append(f"  1    answered, but not done ({not_done})")
    lines += ["  2    rejected by the pool, bad usage, or bad configuration",
              "  3    broker or AWS unreachable, or no dispatcher serving the queue",
              "  4    no reply in time"]
    return "\n".join(lines) + extra


def settings() -> Any:
    """The client's settings from the environment (ConfigError: exit 2, one line)."""
    from shared.config import parse_settings

    return parse_settings()


def login_name() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no passwd entry and no LOGNAME/USER
        return None


def resolve_user(args: argparse.Namespace) -> str:
    """``--user``, else ``$WORKERPOOL_USER``, else the login name (checked like --user)."""
    if getattr(args, "user", None):
        return str(args.user)
    return default_user(os.environ, login_name())


def connect_client(s: Any) -> PoolClient:
    """A PoolClient on AMQP_URL; BrokerUnavailable says what to check."""
    from shared.config import connection_name

    try:
        return PoolClient(s.amqp_url, connection_name("cli"))
    except BrokerUnavailable as exc:
        raise BrokerUnavailable(f"{exc} (is AMQP_URL right? is the broker up?)") from exc


@contextmanager
def open_client(s: Any) -> Iterator[PoolClient]:
    client = connect_client(s)
    try:
        yield client
    finally:
        client.close()


def out(text: str) -> None:
    """A line of the command's answer on stdout, flushed now (so a closed pipe shows here,
    inside the guard, and not in Python's flush at exit)."""
    print(text, flush=True)


def guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A verb as ``shared.cli.main`` runs it, plus: a mistake the user can fix is one line
    and its exit code; a closed stdout (``| head -1``) ends quietly."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            code = func(args)
            sys.stdout.flush()
            return code
        except CliError as exc:
            print(f"workerpool {args.command}: {exc}", file=sys.stderr)
            return exc.code
        except BrokenPipeError:
            silence_broken_pipe()
            return EXIT_BROKEN_PIPE

    return run
