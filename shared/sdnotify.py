"""systemd's notify protocol (sd_notify(3)) in a few lines, without a dependency.

Under a unit with ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a unix datagram socket;
a leading ``@`` means the abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``
(and ``WATCHDOG_PID``, the process meant). A message is one datagram of ``KEY=value`` lines:
``READY=1`` once ready, ``WATCHDOG=1`` at least every ``WATCHDOG_USEC``, ``STOPPING=1`` when
stopping, ``EXTEND_TIMEOUT_USEC=…`` while still starting. Without ``NOTIFY_SOCKET`` (not
under systemd, or another ``Type=``) every call does nothing. A failed send is logged at
debug and never raised: notifying systemd must not take a process down.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to ``NOTIFY_SOCKET`` as found in ``env`` (read once)."""

    def __init__(self, env: Mapping[str, str], pid: int | None = None) -> None:
        path = env.get("NOTIFY_SOCKET") or ""
        self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        meant_for = env.get("WATCHDOG_PID", "")
        mine = not meant_for or meant_for == str(pid if pid is not None else os.getpid())
        #: seconds within which systemd wants a WATCHDOG=1; None: no watchdog
        self.watchdog: float | None = (int(usec) / 1e6 if usec.isdigit() and int(usec) > 0
                                       and mine and self.address else None)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """One datagram of ``fields`` (``"READY=1"``, …); False when not sent."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)  # a full socket must not block a signal handler
                sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:
            log.debug("sd_notify failed", extra={"fields": list(fields), "error": str(exc)})
            return False


class Watchdog:
    """A daemon thread that sends ``WATCHDOG=1`` every half ``notifier.watchdog`` while the
    process's loop shows signs of life (``last_alive()``: a monotonic time, or None when the
    loop never reports; then the thread's own liveness is all there is). Before ``ready``
    it extends systemd's start timeout instead: a process waiting at start for its broker or
    AWS is riding out an outage, not stuck. A loop silent for a whole watchdog period gets
    no ping, and systemd restarts the process (``Restart=``)."""

    def __init__(self, notifier: Notifier, *, last_alive: Callable[[], float | None],
                 is_ready: Callable[[], bool]) -> None:
        self.notifier = notifier
        self.last_alive, self.is_ready = last_alive, is_ready
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._warned = False

    def start(self) -> Watchdog:
        if self.notifier.watchdog is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> bool:
        """One check: what to send now (True if a ping or an extension went out)."""
        period = self.notifier.watchdog
        if period is None:
            return False
        if not self.is_ready():
            return self.notifier.send(f"EXTEND_TIMEOUT_USEC={int(period * 2e6)}")
        alive = self.last_alive()
        if alive is not None and time.monotonic() - alive > period:
            if not self._warned:
                log.warning("the loop has been silent for over %gs: no watchdog ping, "
                            "systemd will restart this process", period,
                            extra={"event": "watchdog_withheld"})
                self._warned = True
            return False
        self._warned = False
        return self.notifier.send("WATCHDOG=1")

    def _run(self) -> None:
        assert self.notifier.watchdog is not None
        while not self._stop.wait(self.notifier.watchdog / 2):
            self.beat()
