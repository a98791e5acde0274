"""``Ticker``: periodic jobs on a daemon thread of their own.

Not on a consumer's thread: a consumer's loop runs only while its connection is up, and
periodic work that needs no broker connection (look at the table, publish through a
``Broker`` that retries on its own) must go on through a broker outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class _Job:
    interval: float
    fn: Callable[[], None]
    due: float


class Ticker:
    """Calls each job every ``interval`` seconds, the first time as soon as it starts.

    Jobs run one after another on the ticker's thread, so a job that takes long delays the
    others: hand long work to a pool. A job's exception is logged, never raised; a job
    that is late runs once, not once per missed tick.
    """

    def __init__(self, name: str = "ticker") -> None:
        self._name = name
        self._jobs: list[_Job] = []
        self._changed = threading.Condition()  # guards _jobs; notified by every() and stop()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def every(self, interval: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` every ``interval`` seconds (before or after ``start``)."""
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        with self._changed:
            self._jobs.append(_Job(interval, fn, time.monotonic()))
            self._changed.notify()

    def start(self) -> Ticker:
        """Start the thread (once); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop calling jobs; waits up to ``timeout`` for a running one to return."""
        self._stop.set()
        with self._changed:
            self._changed.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            for job in self._take_due():
                if self._stop.is_set():
                    return
                self._call(job)
            with self._changed:
                if self._stop.is_set():
                    return
                next_due = min((job.due for job in self._jobs), default=None)
                wait = None if next_due is None else max(0.0, next_due - time.monotonic())
                self._changed.wait(wait)

    def _take_due(self) -> list[_Job]:
        now = time.monotonic()
        with self._changed:
            due = [job for job in self._jobs if job.due <= now]
            for job in due:
                job.due = now + job.interval
        return due

    def _call(self, job: _Job) -> None:
        try:
            job.fn()
        except Exception:  # one failing job must not stop the others
            log.exception("periodic job failed", extra={"job": _job_name(job.fn)})


def _job_name(fn: Callable[[], None]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
