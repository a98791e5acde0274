"""``workerpool dev``'s own judgement, without running it: where its processes find AWS
(moto, or DynamoDB Local for DynamoDB), who stops first, what a VM's agent is told."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from shared.config import parse_settings
from sim.devenv import DevError, backend, dynamodb_local, is_loopback, point_at
from sim.fakes import FakeCodeServer, FakeImds
from sim.supervisor import stop_phases
from sim.vm import agent_env

MOTO = "http://127.0.0.1:4566"
LOCAL = "http://127.0.0.1:8000"
SHELL = {"AWS_ENDPOINT_URL": "http://elsewhere:1", "AWS_ENDPOINT_URL_DYNAMODB": "http://x:2",
         "AWS_ENDPOINT_URL_EC2": "http://x:3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true",
         "AMQP_URL": "amqp://guest:guest@localhost:5672/v"}


@pytest.mark.parametrize(("given", "expected"), [(None, "moto"), ("moto", "moto"),
                                                 ("local", "local")])
def test_dynamodb_is_moto_unless_asked(given: str | None, expected: str) -> None:
    args = argparse.Namespace() if given is None else argparse.Namespace(dynamodb=given)
    assert backend(args) == expected


def test_an_unknown_backend_is_refused_in_words() -> None:
    with pytest.raises(DevError, match="moto, local"):
        backend(argparse.Namespace(dynamodb="dynalite"))


def test_on_moto_every_service_is_moto_whatever_the_shell_says() -> None:
    env = dict(SHELL)
    point_at(env, moto=MOTO, dynamodb=None)
    assert env["AWS_ENDPOINT_URL"] == MOTO
    assert not [k for k in env if k.startswith("AWS_ENDPOINT_URL_")]
    assert "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS" not in env
    assert env["AMQP_URL"] == SHELL["AMQP_URL"]


def test_with_dynamodb_local_only_dynamodb_goes_there() -> None:
    env = dict(SHELL)
    point_at(env, moto=MOTO, dynamodb=LOCAL)
    assert env["AWS_ENDPOINT_URL"] == MOTO  # Auto Scaling and EC2
    assert env["AWS_ENDPOINT_URL_DYNAMODB"] == LOCAL
    assert [k for k in env if k.startswith("AWS_ENDPOINT_URL_")] == ["AWS_ENDPOINT_URL_DYNAMODB"]


def test_botocore_resolves_each_service_to_its_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given dev's environment, When the processes make their clients, Then DynamoDB's goes
    to DynamoDB Local and Auto Scaling's and EC2's to moto (nothing passes an endpoint)."""
    from shared.aws import client

    env = dict(SHELL)
    point_at(env, moto=MOTO, dynamodb=LOCAL)
    for key in [k for k in env if k.startswith("AWS_")]:
        monkeypatch.setenv(key, env[key])
    for key in ("AWS_ENDPOINT_URL_EC2", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    urls = {s: client(s, region="us-east-1").meta.endpoint_url
            for s in ("dynamodb", "autoscaling", "ec2")}
    assert urls == {"dynamodb": LOCAL, "autoscaling": MOTO, "ec2": MOTO}


@pytest.mark.parametrize("key", ["AKIA_WITH_UNDERSCORE", "test-ing", ""])
def test_dynamodb_local_refuses_a_non_alphanumeric_key_before_starting(key: str) -> None:
    with pytest.raises(DevError, match="letters and digits"):
        dynamodb_local({"AWS_ACCESS_KEY_ID": key})


@pytest.mark.parametrize(("url", "expected"), [
    (LOCAL, True), ("http://localhost:8000", True), ("http://[::1]:8000", True),
    ("https://dynamodb.us-east-1.amazonaws.com", False), ("http://10.0.0.5:8000", False)])
def test_only_a_loopback_dynamodb_has_its_table_dropped(url: str, expected: bool) -> None:
    assert is_loopback(url) is expected


def test_the_fleet_scaler_and_reaper_stop_before_the_dispatchers() -> None:
    started = ["dispatcher-1", "dispatcher-2", "scaler", "reaper", "fleet"]
    first, last = stop_phases(started)
    assert first == ["fleet", "reaper", "scaler"]
    assert last == ["dispatcher-2", "dispatcher-1"]


def test_a_vm_agent_gets_no_aws_endpoint_or_credentials(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    for key, value in {**SHELL, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    settings = parse_settings(amqp_url=SHELL["AMQP_URL"], health_port=0)
    with FakeImds(instance_id="i-0abc") as imds, FakeCodeServer() as code_server:
        env = agent_env(settings, imds, code_server, key_file=tmp_path / "agent.key")
    assert not [k for k in env if k.startswith("AWS_ENDPOINT_URL")
                or k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"].startswith("http://127.0.0.1:")
