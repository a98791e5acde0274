"""The terminal side: Ctrl-C as a flag (the claim's cancel needs the connection intact), and
progress lines on a pipe that say something new or nothing."""

from __future__ import annotations

import os
import signal

import pytest

from shared.client_term import Progress, StopFlag


def test_ctrl_c_and_sigterm_set_the_flag_instead_of_raising() -> None:
    before = signal.getsignal(signal.SIGINT)
    with StopFlag() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGINT)
        assert stop and stop.count == 1 and stop.signal_name == "Ctrl-C"
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.count == 2 and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_on_a_pipe_progress_prints_news_at_most_every_few_seconds(
        capsys: pytest.CaptureFixture[str]) -> None:
    now = [0.0]
    progress = Progress(quiet=False, plain_every=10, clock=lambda: now[0])
    assert not progress.live  # pytest's stderr is no terminal

    def shown(at: float, text: str, key: object) -> str:
        now[0] = at
        progress.update(text, key=key)
        return capsys.readouterr().err

    assert shown(0, "waiting 0s", None) == ""  # answered at once: nothing said
    assert shown(5, "waiting 5s", "pool A") == ""  # news, but too soon
    assert shown(10, "waiting 10s", "pool A") == "waiting 10s\n"
    assert shown(15, "waiting 15s", "pool B") == ""
    assert shown(20, "waiting 20s", "pool B") == "waiting 20s\n"
    assert shown(45, "waiting 45s", "pool B") == ""  # nothing new…
    assert shown(50, "waiting 50s", "pool B") == "waiting 50s\n"  # …but a sign of life


def test_quiet_progress_says_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(quiet=True)
    progress.say("claim r-1 waits")
    progress.update("waiting 10s")
    progress.stop()
    assert capsys.readouterr().err == ""
