"""The IMDSv2 client against FakeImds (a real HTTP server that refuses token-less GETs)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from agent.imds import Imds, ImdsBadAnswer, ImdsUnavailable
from shared.clock import FakeClock
from sim.fakes import FakeImds
from tests.helpers import ROOT


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    with FakeImds(instance_id="i-0123456789abcdef0", public_ip=None) as fake:
        yield fake


def test_identity_comes_from_imdsv2_with_a_token_on_every_get(imds: FakeImds) -> None:
    ident = Imds(endpoint=imds.url).identity()
    assert ident.instance_id == "i-0123456789abcdef0"
    assert ident.private_ip == "10.0.1.5"
    assert ident.public_ip is None  # 404: a private subnet, fine
    assert ident.instance_type == "t3.medium" and ident.availability_zone == "us-east-1a"
    assert imds.tokenless_requests() == []
    assert [r.method for r in imds.seen].count("PUT") == 1  # one token, reused


def test_the_token_is_refreshed_before_it_expires(imds: FakeImds) -> None:
    clock = FakeClock(start=0)
    client = Imds(endpoint=imds.url, token_ttl=100, clock=clock.now)
    first = client.token()
    clock.advance(85)
    assert client.token() == first
    clock.advance(6)  # less than a tenth of the TTL left
    assert client.token() != first


def test_a_refused_token_is_replaced_and_the_read_succeeds(imds: FakeImds) -> None:
    client = Imds(endpoint=imds.url)
    client.identity()
    imds.revoke_tokens()  # as after an IMDS restart
    assert client.identity().instance_id == "i-0123456789abcdef0"
    assert imds.tokenless_requests() == []


def test_an_unreachable_imds_fails_fast_as_transient(imds: FakeImds) -> None:
    imds.down = True
    started = time.monotonic()
    with pytest.raises(ImdsUnavailable, match="does not answer"):
        Imds(endpoint=imds.url, attempts=2).identity()
    assert time.monotonic() - started < 3


def test_garbage_for_instance_id_is_a_bad_answer(imds: FakeImds) -> None:
    imds.garbage = True
    with pytest.raises(ImdsBadAnswer, match="instance-id"):
        Imds(endpoint=imds.url).identity()


def test_the_agent_imports_neither_boto3_nor_moto_nor_requests_nor_the_simulator() -> None:
    code = ("import sys, agent.__main__, agent.loop, agent.imds; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'boto3', 'botocore', 'moto', 'requests', 'urllib3', 'sim'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, check=True).stdout.strip()
    assert out == "[]"
