"""What the command line checks before sending anything: durations, ranges, ids, the user."""

from __future__ import annotations

import argparse

import pytest

from shared.client_args import (
    CliError,
    default_user,
    format_duration,
    instance_id,
    interval,
    lease_duration,
    parse_duration,
    reply_wait_duration,
    request_id,
    user_id,
    wait_duration,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90s", 90), ("90m", 5400), ("2h", 7200), ("1d", 86400), ("1h30m", 5400),
    ("1d2h3m4s", 93784), ("0", 0), ("15M", 900), (" 5m ", 300),
])
def test_durations_are_read_in_seconds_minutes_hours_and_days(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "x", "1.5h", "-5", "5 m", "m", "1h1d", "2w", "1e3"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45, "45s"), (60, "1m"), (90, "1m30s"), (900, "15m"), (3600, "1h"),
    (5400, "1h30m"), (3601, "1h"), (86400, "1d"), (90061, "1d1h"), (-300, "-5m"),
])
def test_durations_are_shown_in_two_units_at_most(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("check", "good", "bad", "message"), [
    (lease_duration, ["10", "10s", "1d", "2h"], ["9", "5", "1d1s", "2d"],
     "the lease must be from 10s to 1d"),
    (wait_duration, ["0", "15m", "900"], ["901", "16m", "1h"], "the wait must be from 0s to 15m"),
    (reply_wait_duration, ["1", "30s", "15m"], ["0", "16m"], "the wait must be from 1s to 15m"),
])
def test_lease_and_wait_are_held_to_the_protocols_ranges(
        check: object, good: list[str], bad: list[str], message: str) -> None:
    assert callable(check)
    for text in good:
        assert check(text) == parse_duration(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            check(text)


@pytest.mark.parametrize(("check", "good", "bad"), [
    (user_id, ["alice", "a.b@example.com", "x" * 128, "bob_2-x"],
     ["bob smith", "", "x" * 129, "ali/ce", "é"]),
    (request_id, ["r-42", "cli-3f2a:1.x_y"], ["a b", "", "r" * 129, "r@1"]),
    (instance_id, ["i-0abc", "i-49c155c1f9bc2808c"], ["bogus", "i-", "i-0abc/1", "0abc"]),
])
def test_ids_follow_the_protocols_patterns(check: object, good: list[str],
                                           bad: list[str]) -> None:
    assert callable(check)
    for text in good:
        assert check(text) == text
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match="is not a valid"):
            check(text)


def test_the_user_is_workerpool_user_then_the_login_name() -> None:
    assert default_user({"WORKERPOOL_USER": "alice"}, "root") == "alice"
    assert default_user({}, "bob") == "bob"
    assert default_user({"WORKERPOOL_USER": ""}, "bob") == "bob"


@pytest.mark.parametrize(("environ", "login", "says"), [
    ({}, None, "no user: give --user or set WORKERPOOL_USER"),
    ({"WORKERPOOL_USER": "bob smith"}, "bob", "WORKERPOOL_USER 'bob smith' is not a valid"),
    ({}, "Bob Smith", "your login name 'Bob Smith' is not a valid user id"),
])
def test_no_usable_user_is_a_usage_error_that_says_what_to_set(
        environ: dict[str, str], login: str | None, says: str) -> None:
    with pytest.raises(CliError, match=says) as got:
        default_user(environ, login)
    assert got.value.code == 2


def test_the_watch_interval_takes_seconds_or_a_duration() -> None:
    assert interval("0.5") == 0.5
    assert interval("1m") == 60
    for bad in ("0", "-1", "2h", "soon"):
        with pytest.raises(argparse.ArgumentTypeError):
            interval(bad)
