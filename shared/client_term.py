"""The terminal side of the command line: signals as a flag, the waiting spinner, consoles.

A signal handler only sets a flag (STYLE 12): Ctrl-C in the middle of pika's frame reading
would leave the connection unusable, and the cancel that Ctrl-C must send needs it. Colour
and cursor movement only where the stream is a terminal; rich honours ``NO_COLOR`` (and
``FORCE_COLOR``, ``TERM=dumb``) itself.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from rich.console import Console
from rich.status import Status


class StopFlag:
    """While active, SIGINT and SIGTERM set this flag instead of raising; ``count`` says how
    many came (a second Ctrl-C means: stop waiting even for the cancel's answer)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.count = 0
        self.signal_name = ""
        self._old: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.count > 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.signal_name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name

    def __enter__(self) -> StopFlag:
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr): colour and live updates on a terminal only."""
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class Progress:
    """What a waiting command shows on stderr: a rich spinner on a terminal, else a plain
    line when the text changes (at most every ``plain_every`` seconds), nothing when quiet."""

    def __init__(self, *, quiet: bool, plain_every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console(stderr=True)
        self.quiet = quiet
        self.live = not quiet and self.console.is_terminal
        self._status: Status | None = None
        self._plain_every = plain_every
        self._clock = clock
        self._last_plain: tuple[float, object] = (clock(), None)  # first line after a while

    def say(self, text: str) -> None:
        """A line that stays (above the spinner on a terminal)."""
        if self.quiet:
            return
        if self.live:
            self.console.print(text, markup=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def update(self, text: str, key: object = None) -> None:
        """Show ``text``; on a pipe it is printed when ``key`` (what the text says, less the
        clock) changed and ``plain_every`` has passed, or every three times that anyway."""
        if self.quiet:
            return
        if self.live:
            if self._status is None:
                self._status = self.console.status(text, spinner="dots")
                self._status.start()
            else:
                self._status.update(text)
            return
        at, last = self._last_plain
        since = self._clock() - at
        if (key != last and since >= self._plain_every) or since >= 3 * self._plain_every:
            print(text, file=sys.stderr, flush=True)
            self._last_plain = (self._clock(), key)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def silence_broken_pipe() -> None:
    """After EPIPE on stdout (``workerpool claim | head -1``): send the rest of the output
    to /dev/null, so that Python's flush at exit raises no second error."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)
