"""shared.ticker.Ticker: periodic jobs on a thread of their own."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from shared.ticker import Ticker
from tests.helpers import wait_for


def test_a_job_runs_at_once_and_then_every_interval_until_stopped() -> None:
    calls: list[float] = []
    ticker = Ticker()
    ticker.every(0.05, lambda: calls.append(time.monotonic()))
    ticker.start()
    wait_for(lambda: len(calls) >= 4, timeout=2, what="four calls")
    ticker.stop()
    assert not ticker.running
    after = len(calls)
    time.sleep(0.15)
    assert len(calls) == after
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(g >= 0.04 for g in gaps), gaps  # never more often than asked


def test_a_failing_job_is_logged_and_neither_it_nor_the_others_stop(
        caplog: pytest.LogCaptureFixture) -> None:
    good: list[int] = []
    bad: list[int] = []

    def failing() -> None:
        bad.append(1)
        raise RuntimeError("boom")

    ticker = Ticker()
    ticker.every(0.02, failing)
    ticker.every(0.02, lambda: good.append(1))
    ticker.start()
    wait_for(lambda: len(bad) >= 3 and len(good) >= 3, timeout=2, what="both jobs again")
    ticker.stop()
    assert any(r.msg == "periodic job failed" for r in caplog.records)


def test_a_job_added_while_running_starts_at_once() -> None:
    ticker = Ticker().start()
    ticker.every(60, lambda: None)  # the thread now sleeps for a minute
    added = threading.Event()
    ticker.every(60, added.set)
    assert added.wait(1)
    ticker.stop()


def test_a_nonpositive_interval_is_refused() -> None:
    with pytest.raises(ValueError):
        Ticker().every(0, lambda: None)
