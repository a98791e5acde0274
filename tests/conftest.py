"""Shared fixtures: the real broker at AMQP_URL, one moto server for the session (reset per
test), settings built the way the processes build them."""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from shared import topology
from shared.config import Settings, parse_settings

#: DynamoDB Local (AWS's own emulator): fixtures for the concurrency tests and the benchmarks
pytest_plugins = ["tests.dynamodb_local"]

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
if os.environ.get("PYTEST_XDIST_WORKER"):  # a vhost of its own for each worker
    from tests.parallel import ensure_vhost, worker_url

    AMQP_URL = worker_url(AMQP_URL, os.environ["PYTEST_XDIST_WORKER"])
    ensure_vhost(AMQP_URL)
    os.environ["AMQP_URL"] = AMQP_URL  # the processes under test, and tests that read it

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """AMQP_URL, checked: the tests that need RabbitMQ ask for this (or clean_queues)."""
    from shared.broker import connect
    from shared.errors import BrokerUnavailable

    try:
        connect(AMQP_URL, "tests").close()
    except BrokerUnavailable as exc:
        pytest.fail(f"RabbitMQ does not answer at AMQP_URL ({exc}); start it with "
                    "`rabbitmq-server -detached` (.ci/run does this)")
    return AMQP_URL


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server for the whole session, answering one request at a time (see
    sim/motoserver.py and docs/emulators.md for why: moto's DynamoDB is not atomic under
    concurrency).
    WORKERPOOL_TEST_MOTO=threaded runs moto's own ThreadedMotoServer instead, to see how the
    pool fares on the stock server.
    It becomes the session's AWS_ENDPOINT_URL: botocore resolves every client's endpoint, in
    the processes and in the tests alike (a test of in-process moto unsets it)."""
    if os.environ.get("WORKERPOOL_TEST_MOTO") == "threaded":
        from moto.server import ThreadedMotoServer

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        stock = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        stock.start()
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
        yield f"http://127.0.0.1:{port}"
        stock.stop()
        return
    from sim.motoserver import SerializedMotoServer

    server = SerializedMotoServer().start()
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    yield server.endpoint
    server.stop()


@pytest.fixture
def aws(moto_endpoint: str) -> str:
    """A clean moto (POST /moto-api/reset) for this test; returns the endpoint URL."""
    req = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=5).read()
    return moto_endpoint


@pytest.fixture
def clean_queues(amqp_url: str) -> str:
    """Every workerpool queue declared and empty (tests share one broker)."""
    from shared.broker import purge

    purge(amqp_url, "tests", [q.name for q in topology.QUEUES])
    return amqp_url


@pytest.fixture
def settings(aws: str) -> Settings:
    """Settings for this test's moto, with AMQP_URL unchecked: a test of AWS alone runs
    without RabbitMQ (one that needs it asks for ``amqp_url``, ``clean_queues`` or
    ``pool``)."""
    return parse_settings(amqp_url=AMQP_URL, aws_endpoint_url=aws, health_port=0)


@pytest.fixture
def aws_pool(settings: Settings) -> Settings:
    """Table and ASG bootstrapped in a clean moto; the broker untouched."""
    from shared.bootstrap import bootstrap

    bootstrap(settings, broker=False)
    return settings


@pytest.fixture
def pool(aws_pool: Settings, clean_queues: str) -> Settings:
    """``aws_pool`` plus every workerpool queue declared and empty (needs RabbitMQ)."""
    return aws_pool


def env_for(settings: Settings, **extra: Any) -> dict[str, str]:
    """The environment a real process needs to join the same broker and moto."""
    env = {
        "AMQP_URL": settings.amqp_url,
        "AWS_ENDPOINT_URL": settings.aws_endpoint_url or "",
        "AWS_REGION": settings.aws_region,
        "TABLE_NAME": settings.table_name,
        "ASG_NAME": settings.asg_name,
        "HEALTH_PORT": "0",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return env
