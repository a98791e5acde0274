"""Bodies over ``topology.MAX_BODY_BYTES`` are refused before decoding (issue 16, item 8),
by a real dispatcher on the real broker: dead-lettered with the reason, answered
``rejected`` when they asked for a reply, counted, and nothing else happens."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from dispatcher.admission import too_large
from shared import topology
from shared.config import Settings
from tests.helpers import Proc, wait_for
from tests.integration.test_dispatcher_support import (
    Client,
    dead_letters,
    metrics_text,
    publish_agent,
    start_dispatchers,
    stop_all,
)


def oversized(fields: dict[str, object]) -> bytes:
    """Valid JSON of the right shape, padded past the limit: only its size is wrong."""
    pad = "x" * topology.MAX_BODY_BYTES
    return json.dumps({**fields, "padding": pad}).encode()


@pytest.fixture
def dispatcher(pool: Settings) -> Iterator[Proc]:
    (proc,) = start_dispatchers(pool)
    try:
        yield proc
    finally:
        stop_all([proc])


def refused(proc: Proc, queue: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text(proc).splitlines()
               if line.startswith("workerpool_refused_messages_total{")
               and f'queue="{queue}"' in line and 'reason="too large"' in line)


def test_the_limit_is_on_bytes_and_says_both_sizes() -> None:
    limit = topology.MAX_BODY_BYTES
    assert too_large(b"x" * limit) is None
    assert too_large(b"x" * (limit + 1)) == (
        f"body too large: {limit + 1} bytes (limit {limit})")
    assert topology.MAX_BODY_BYTES < topology.MAX_MESSAGE_BYTES  # the broker's is the backstop


def test_an_oversized_claim_is_dead_lettered_and_answered_rejected(
        pool: Settings, dispatcher: Proc) -> None:
    client = Client(pool)
    try:
        body = oversized({"request_id": "r-big", "user_id": "alice"})
        reply = client.raw(topology.CLAIMS, body)
    finally:
        client.close()
    # the body was not parsed: the reply cannot name its request_id
    assert reply["status"] == "rejected" and reply["request_id"] is None
    assert reply["reason"].startswith("body too large: ")
    ((copy, headers),) = wait_for(lambda: dead_letters(pool), what="a dead-letter entry")
    assert copy == body
    assert headers[topology.REASON_HEADER] == reply["reason"]
    assert headers[topology.SOURCE_HEADER] == topology.CLAIMS
    assert refused(dispatcher, topology.CLAIMS) == 1
    assert 'workerpool_claims_total{outcome="rejected"} 1.0' in metrics_text(dispatcher)


def test_an_oversized_agent_message_is_dead_lettered_without_a_reply(
        pool: Settings, dispatcher: Proc) -> None:
    body = oversized({"type": "register", "instance_id": "i-0123456789abcdef0"})
    publish_agent(pool, [body])
    ((copy, headers),) = wait_for(lambda: dead_letters(pool), what="a dead-letter entry")
    assert len(copy) == len(body)
    assert headers[topology.REASON_HEADER].startswith("body too large: ")
    assert headers[topology.SOURCE_HEADER] == topology.AGENTS
    assert refused(dispatcher, topology.AGENTS) == 1
