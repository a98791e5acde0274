"""What every ``__main__`` does around its loop: settings, logging, signals, health, ready.

    def main() -> int:
        with Runtime("scaler") as rt:
            ...build adapters from rt.settings...
            rt.health.add_check("broker", ...)
            rt.ready()
            while not rt.stopping: ...
        return 0

Under systemd (``Type=notify``, ``WatchdogSec=``; deploy/systemd/) it also speaks the notify
protocol (shared/sdnotify.py): ``READY=1`` with the ready line, ``STOPPING=1`` on a stop
signal, and ``WATCHDOG=1`` while the loop shows signs of life: every ``rt.stopping``,
``rt.wait(...)`` or ``rt.alive()`` counts as one. A loop that calls none of them gets the
watchdog thread's own liveness only; call ``rt.alive()`` from it to be watched for real.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import Any

from shared import logging as wlogging
from shared.config import Settings, load_settings
from shared.errors import AwsUnavailable, BrokerUnavailable, ConfigError
from shared.health import HealthServer
from shared.sdnotify import Notifier, Watchdog

lifecycle = logging.getLogger("workerpool.lifecycle")
lifecycle.setLevel(logging.INFO)

#: PROTOCOL §1: a process stops within 10 s of SIGTERM. The loops finish or hand back what
#: they hold well before; this is the hard stop behind them, whatever blocks (a call into an
#: AWS or a broker that does not answer).
STOP_DEADLINE = 9.0
#: Allocations between collections of the young generation (CPython's default: 700).
GC_YOUNG = 20_000
#: ``wait`` sleeps in slices of this many seconds, each a sign of life for the watchdog.
WAIT_SLICE = 1.0


def _hard_stop() -> None:
    lifecycle.warning("still stopping after %gs; exiting without waiting further",
                      STOP_DEADLINE, extra={"event": "stopped", "hard_stop": True})
    logging.shutdown()
    os._exit(0)


class Runtime:
    def __init__(self, process: str, settings: Settings | None = None) -> None:
        self.process = process
        self.settings = settings or load_settings(process)
        self.log = wlogging.setup(process, self.settings.log_level)
        self._stop = threading.Event()
        self._on_stop: list[Any] = []
        port = self.settings.port_for(process)
        try:
            self.health = HealthServer(process=process, port=port)
        except OSError as exc:
            if self.settings.health_port is not None:  # asked for explicitly: a config error
                print(f"workerpool {process}: bad configuration: HEALTH_PORT={port}: "
                      f"{exc.strerror or exc} (use another port, or 0 for a free one)",
                      file=sys.stderr)
                raise SystemExit(2) from None
            # the per-process default is taken (e.g. two dispatchers on one host): any free
            # port will do, and the ready line says which
            self.health = HealthServer(process=process, port=0)
            self.log.warning("default HEALTH_PORT %s in use; serving on %s instead", port,
                             self.health.port)
        for warning in self.settings.warnings():
            self.log.warning(warning)
        self.started = time.monotonic()
        # systemd's variables, not ours: read once at start, then dropped as sd_notify(3)'s
        # unset_environment does, so that no child (an agent's systemctl, the fleet's agents)
        # speaks to systemd in our name
        self.notifier = Notifier(os.environ)
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(name, None)
        self._ready = False
        self._alive_at: float | None = None
        self.watchdog = Watchdog(self.notifier, last_alive=lambda: self._alive_at,
                                 is_ready=lambda: self._ready)

    # signals only set a flag (and call registered non-blocking stoppers)
    def _signal(self, signum: int, frame: FrameType | None) -> None:
        lifecycle.info("stopping", extra={"event": "stopping",
                                          "signal": signal.Signals(signum).name})
        if not self._stop.is_set():
            timer = threading.Timer(STOP_DEADLINE, _hard_stop)
            timer.daemon = True
            timer.start()
            self.watchdog.stop()
            self.notifier.send("STOPPING=1")
        self._stop.set()
        for fn in self._on_stop:
            fn()

    def on_stop(self, fn: Any) -> None:
        self._on_stop.append(fn)

    @property
    def stopping(self) -> bool:
        """True once asked to stop. Asking is a sign of life (the loop goes round)."""
        self.alive()
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if asked to stop meanwhile. A loop waiting here is
        alive, however long it waits."""
        deadline = time.monotonic() + seconds
        while True:
            self.alive()
            left = deadline - time.monotonic()
            if left <= 0:
                return self._stop.is_set()
            if self._stop.wait(min(left, WAIT_SLICE)):
                return True

    def alive(self) -> None:
        """The loop made progress: what feeds systemd's watchdog (``WatchdogSec=``)."""
        self._alive_at = time.monotonic()

    def ready(self, **fields: Any) -> None:
        # what the process built to get here (modules, botocore's service models, clients)
        # lives as long as it does: out of the collector's sight, and a young generation
        # large enough that a claim's short-lived garbage is not traced over and over
        gc.freeze()
        gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
        # lifecycle lines are logged whatever LOG_LEVEL says: operators and `dev` wait for them
        lifecycle.info("ready", extra={"event": "ready", "health_port": self.health.port,
                                       **fields})
        self.alive()
        self._ready = True
        self.notifier.send("READY=1", f"STATUS=ready, health on port {self.health.port}")

    def __enter__(self) -> Runtime:
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        self.health.start()
        self.watchdog.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> bool:
        self.watchdog.stop()
        self.health.stop()
        if ev is None:
            lifecycle.info("stopped", extra={"event": "stopped"})
            return False
        if isinstance(ev, (KeyboardInterrupt,)):
            return True
        if isinstance(ev, ConfigError):
            self.log.error(str(ev))
            raise SystemExit(2)
        if isinstance(ev, (BrokerUnavailable, AwsUnavailable)):
            self.log.error("giving up: %s", ev, extra={"event": "fatal"})
            raise SystemExit(1)
        logging.getLogger(f"workerpool.{self.process}").exception("crashed",
                                                                  extra={"event": "fatal"})
        return False
