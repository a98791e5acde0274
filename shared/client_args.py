"""What the command line checks before anything is sent (pure: no I/O, no clock).

Every value the dispatcher would refuse is refused here first, with one line that names the
flag, so that a typo never travels to the broker and never lands in the dead-letter queue an
operator watches. The limits and patterns are the protocol's (``shared/messages/base.py``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping

from shared.messages.base import INSTANCE_ID, REQUEST_ID, USER_ID

LEASE_RANGE = (10, 86400)  # PROTOCOL §3 lease_seconds
WAIT_RANGE = (0, 900)  # PROTOCOL §3 wait_seconds
REPLY_WAIT_RANGE = (1, 900)  # how long release / renew / status / cancel wait for a reply

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class CliError(Exception):
    """A mistake the user can fix (a flag, a missing default); ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def parse_duration(text: str) -> int:
    """``90`` (seconds), ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m`` → whole seconds.

    ValueError with a reason for anything else (negative, fractional, unknown unit)."""
    value = text.strip().lower()
    if value.isdigit():
        return int(value)
    match = _DURATION.match(value)
    if not value or match is None:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 15m, 2h, 1d, 1h30m)")
    return sum(int(n) * _UNITS[u] for n, u in zip(match.groups(), "dhms", strict=True) if n)


def format_duration(seconds: float) -> str:
    """Seconds for people, two units at most: ``45s``, ``15m``, ``1h30m``, ``2d3h``, ``-5m``."""
    sign, left = ("-" if seconds < 0 else ""), int(abs(seconds))
    parts: list[tuple[int, str]] = []
    for unit in "dhms":
        n, left = divmod(left, _UNITS[unit])
        parts.append((n, unit))
    first = next((i for i, (n, _) in enumerate(parts) if n), len(parts) - 1)
    shown = [parts[first]] + [p for p in parts[first + 1:first + 2] if p[0]]
    return sign + "".join(f"{n}{u}" for n, u in shown)


def _bounded(name: str, low: int, high: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if not low <= seconds <= high:
            raise argparse.ArgumentTypeError(
                f"{text} is {seconds}s; the {name} must be from {format_duration(low)} to "
                f"{format_duration(high)}")
        return seconds

    check.__name__ = name  # argparse names the type in its messages
    return check


#: argparse ``type=`` functions: a duration within the protocol's range, else a clear error.
lease_duration = _bounded("lease", *LEASE_RANGE)
wait_duration = _bounded("wait", *WAIT_RANGE)
reply_wait_duration = _bounded("wait", *REPLY_WAIT_RANGE)


def _matching(name: str, pattern: str, allowed: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if re.match(pattern, text) is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {name} ({allowed})")
        return text

    check.__name__ = name
    return check


user_id = _matching("user id", USER_ID, "1-128 characters of A-Z a-z 0-9 . _ @ -")
request_id = _matching("request id", REQUEST_ID, "1-128 characters of A-Z a-z 0-9 . _ : -")
instance_id = _matching("instance id", INSTANCE_ID, "i- then letters and digits")


def default_user(environ: Mapping[str, str], login: str | None) -> str:
    """``$WORKERPOOL_USER``, else the login name; CliError when neither is a valid user id."""
    from_env = bool(environ.get("WORKERPOOL_USER"))
    chosen = environ.get("WORKERPOOL_USER") or login
    if not chosen:
        raise CliError("no user: give --user or set WORKERPOOL_USER")
    if re.match(USER_ID, chosen) is None:
        where, fix = (("WORKERPOOL_USER", "fix WORKERPOOL_USER") if from_env else
                      ("your login name", "set WORKERPOOL_USER"))
        raise CliError(f"{where} {chosen!r} is not a valid user id (1-128 characters of "
                       f"A-Z a-z 0-9 . _ @ -): give --user or {fix}")
    return chosen


def interval(text: str) -> float:
    """``--interval``: seconds (``0.5``, ``2``) or a duration (``1m``), above zero."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = float(parse_duration(text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{text}: the interval must be above 0 and at most 1h")
    return seconds


interval.__name__ = "interval"
