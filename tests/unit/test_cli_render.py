"""What the command line prints, from replies and a fixed ``now`` (no broker, no clock)."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from shared.client_render import (
    cancel_line,
    claim_lines,
    epoch,
    expiry_text,
    lease_line,
    status_text,
    waiting_text,
)
from shared.client_status import status_view

NOW = epoch("2026-11-28T09:00:00Z") or 0.0

ASSIGNED: dict[str, Any] = {
    "request_id": "r-1", "status": "assigned", "reason": None, "lease_expiry":
    "2026-11-28T10:00:00Z", "worker": {"instance_id": "i-0abc", "public_ip": "198.51.100.7",
                                       "private_ip": "10.0.0.7", "url": "http://198.51.100.7:8080",
                                       "password": None}}

STATUS: dict[str, Any] = {
    "request_id": "s-1", "status": "ok", "reason": None,
    "pool": {"free": 2, "leased": 1, "booting": 3, "draining": 0, "dead": 1, "waiting": 4,
             "desired": 7, "max_size": 10},
    "leases": [{"instance_id": "i-0abc", "url": "http://198.51.100.7:8080",
                "lease_expiry": "2026-11-28T09:04:00Z", "idle_seconds": 754}]}


def test_an_assigned_claim_says_whose_worker_it_is_and_until_when() -> None:
    assert claim_lines(ASSIGNED, "alice", lease_given=False, now=NOW) == [
        "assigned i-0abc to alice",
        "  url:          http://198.51.100.7:8080",
        "  public ip:    198.51.100.7",
        "  private ip:   10.0.0.7",
        "  lease until:  2026-11-28 10:00 UTC (1h left)"]


def test_a_worker_already_held_is_not_presented_as_a_new_one() -> None:
    existing = {**ASSIGNED, "existing": True}
    first = claim_lines(existing, "alice", lease_given=True, now=NOW)[0]
    assert first == ("you already hold i-0abc (MAX_LEASES_PER_USER reached); --lease did not "
                     "apply: use `workerpool renew`")
    unasked = claim_lines(existing, "alice", lease_given=False, now=NOW)[0]
    assert unasked.startswith("you already hold i-0abc") and "workerpool renew" in unasked


def test_other_answers_are_one_line_with_the_reason() -> None:
    reply = {"status": "unavailable", "reason": "pool at MaxSize 3"}
    assert claim_lines(reply, "bob", lease_given=False, now=NOW) == [
        "unavailable: pool at MaxSize 3"]


def test_expiry_reads_as_time_and_what_is_left() -> None:
    assert expiry_text("2026-11-28T09:30:00Z", NOW) == "2026-11-28 09:30 UTC (30m left)"
    assert expiry_text("2026-11-28T08:00:00Z", NOW) == "2026-11-28 08:00 UTC (ended)"
    assert expiry_text(None, NOW) == "-"


def test_the_spinner_says_how_long_and_what_the_pool_is_doing() -> None:
    assert waiting_text(12, None, 300) == "waiting for a worker 12s of 5m"
    assert waiting_text(75, STATUS, 300) == (
        "waiting for a worker 1m15s of 5m · 4 waiting · 3 booting · desired 7/10")
    failing = {**STATUS, "launch_error": "VcpuLimitExceeded"}
    assert waiting_text(5, failing, 60).endswith("· launches failing: VcpuLimitExceeded")


def test_lease_answers_name_the_instance() -> None:
    renewed = {"status": "renewed", "lease_expiry": "2026-11-28T11:00:00Z"}
    assert lease_line("renew", renewed, "i-0abc", NOW) == (
        "renewed i-0abc: lease until 2026-11-28 11:00 UTC (2h left)")
    assert lease_line("release", {"status": "released"}, "i-0abc", NOW) == "released i-0abc"
    assert lease_line("release", {"status": "not_found"}, "i-0abc", NOW).startswith(
        "not_found: i-0abc is not leased to you")


def test_cancel_answers_say_what_became_of_the_claim() -> None:
    assert cancel_line({"status": "cancelled"}, "r-1") == (
        "cancelled claim r-1: it will not be assigned")
    assert cancel_line({"status": "released", "instance_id": "i-0abc"}, "r-1") == (
        "claim r-1 had been assigned i-0abc just before; released it")
    assert cancel_line({"status": "not_found", "reason": "already answered unavailable"},
                       "r-1") == "not_found: already answered unavailable"


def test_status_as_text_for_a_pipe() -> None:
    assert status_text(STATUS, "alice", NOW).splitlines() == [
        "pool: 2 free, 1 leased, 3 booting, 0 draining, 1 dead",
        "claims waiting: 4    machines: desired 7 of max 10",
        "",
        "leases of alice:",
        "INSTANCE  URL                       EXPIRES (UTC)     LEFT  IDLE",
        "i-0abc    http://198.51.100.7:8080  2026-11-28 09:04  4m    12m34s"]
    nothing = {**STATUS, "leases": []}
    assert status_text(nothing, "bob", NOW).endswith(
        "bob holds no worker (`workerpool claim` gets one)")
    refused = {"status": "rejected", "reason": "type: status is not served yet"}
    assert status_text(refused, "bob", NOW) == (
        "rejected: type: status is not served yet (an older dispatcher; `workerpool status "
        "--aws` reads the pool from AWS)")


def _draw(renderable: Any, *, colour: bool) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=100, force_terminal=colour, no_color=not colour,
            color_system="standard" if colour else None).print(renderable)
    return buffer.getvalue()


def test_status_for_a_terminal_has_the_same_facts_in_colour() -> None:
    plain = _draw(status_view(STATUS, "alice", NOW), colour=False)
    for fact in ("2 free", "1 leased", "3 booting", "1 dead", "claims waiting 4",
                 "desired 7 of max 10", "leases of alice", "i-0abc", "12m34s"):
        assert fact in plain, fact
    coloured = _draw(status_view(STATUS, "alice", NOW), colour=True)
    assert "\x1b[32m2 free" in coloured  # free in green
    assert "\x1b[1;31m4m" in coloured  # four minutes left: urgent, bold red
