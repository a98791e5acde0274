"""The agent's pure decisions: what to publish next, backoff, and the /health verdict."""

from __future__ import annotations

import pytest

from agent.heartbeat import (
    REREGISTER_EVERY,
    BeatState,
    Step,
    Timing,
    after_failure,
    after_heartbeat,
    after_register,
    backoff,
    heartbeat_verdict,
    next_step,
)

T = Timing(interval=1.0)


@pytest.mark.parametrize(
    ("case", "state", "now", "expected"),
    [
        ("a fresh agent registers first", BeatState(), 100.0, Step("register")),
        ("after registering, the first heartbeat is due at once",
         after_register(BeatState(), 100.0), 100.0, Step("heartbeat")),
        ("between heartbeats it waits for the next one",
         BeatState(registered=True, next_beat_at=101.0), 100.2, Step("wait", 101.0)),
        ("a due heartbeat goes out", BeatState(registered=True, next_beat_at=101.0), 101.0,
         Step("heartbeat")),
        ("after a failure it waits out the backoff",
         BeatState(registered=False, retry_at=100.5, failures=1), 100.1, Step("wait", 100.5)),
        ("after the backoff it registers again before any heartbeat",
         BeatState(registered=False, retry_at=100.5, failures=1, next_beat_at=99.0), 100.6,
         Step("register")),
        ("every REREGISTER_EVERY heartbeats it registers again",
         BeatState(registered=True, beats_since_register=REREGISTER_EVERY, next_beat_at=100.0),
         100.0, Step("register")),
        ("the periodic registration waits for a due heartbeat",
         BeatState(registered=True, beats_since_register=REREGISTER_EVERY, next_beat_at=101.0),
         100.0, Step("wait", 101.0)),
    ],
)
def test_next_step(case: str, state: BeatState, now: float, expected: Step) -> None:
    assert next_step(state, now) == expected, case


def test_heartbeats_stay_on_schedule_without_drift() -> None:
    s = after_heartbeat(BeatState(registered=True, next_beat_at=100.0), 100.05, T)
    assert s.next_beat_at == 101.0 and s.last_confirmed == 100.05
    s = after_heartbeat(s, 101.3, T)
    assert s.next_beat_at == 102.0


def test_a_heartbeat_that_fell_far_behind_restarts_the_schedule_from_now() -> None:
    s = after_heartbeat(BeatState(registered=True, next_beat_at=100.0), 105.0, T)
    assert s.next_beat_at == 106.0


def test_a_periodic_registration_adds_no_extra_heartbeat() -> None:
    s = BeatState(registered=True, beats_since_register=REREGISTER_EVERY, next_beat_at=100.0)
    s = after_register(s, 100.0)
    assert s.beats_since_register == 0 and s.next_beat_at == 100.0
    assert next_step(s, 100.0) == Step("heartbeat")


def test_a_failure_forgets_the_registration_and_backs_off() -> None:
    s = after_failure(BeatState(registered=True, registrations=1), 100.0, T, jitter=0.0)
    assert not s.registered and s.failures == 1
    assert s.retry_at == pytest.approx(100.0 + 0.125)
    s = after_register(s, 101.0)
    assert s.failures == 0 and s.retry_at == 0.0 and s.registrations == 2


@pytest.mark.parametrize(
    ("failures", "jitter", "interval", "expected"),
    [
        (1, 0.0, 1.0, 0.125),
        (1, 0.999999, 1.0, 0.25),
        (3, 0.0, 15.0, 0.5),
        (30, 0.999999, 15.0, 15.0),  # capped at the interval for real deployments
        (30, 0.999999, 0.2, 1.0),  # never below a second between retries at the cap
    ],
)
def test_backoff_is_exponential_jittered_and_capped(failures: int, jitter: float,
                                                    interval: float, expected: float) -> None:
    assert backoff(failures, Timing(interval), jitter) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    ("case", "state", "now", "ok", "words"),
    [
        ("no state: waiting for identity", None, 10.0, False, "IMDS"),
        ("registered, no heartbeat yet", BeatState(registrations=1), 10.0, False,
         "no heartbeat"),
        ("a fresh confirmed heartbeat", BeatState(registrations=1, last_confirmed=9.5), 10.0,
         True, "confirmed"),
        ("a stale heartbeat", BeatState(registrations=1, last_confirmed=5.0), 10.0, False,
         "limit"),
        ("a stale heartbeat with failures blames the broker",
         BeatState(registrations=1, last_confirmed=5.0, failures=3), 10.0, False, "broker"),
    ],
)
def test_the_heartbeat_verdict(case: str, state: BeatState | None, now: float, ok: bool,
                               words: str) -> None:
    got_ok, reason = heartbeat_verdict(state, now, T, waiting_for="waiting for IMDS")
    assert got_ok is ok, case
    assert words in reason, (case, reason)


def test_timings_derived_from_the_interval() -> None:
    fast, slow = Timing(0.5), Timing(15)
    assert fast.give_up_after == 0.0  # the loop retries, never the publisher
    assert fast.probe_timeout == 0.5 and slow.probe_timeout == 2.0
    assert fast.fresh_for == 1.5 and slow.fresh_for == 30

