"""PROTOCOL v2 §1: botocore resolves every client's endpoint, so boto3's own variables work
as documented (DynamoDB on DynamoDB Local while the ASG stays on moto)."""

from __future__ import annotations

import pytest

from shared.asg import Asg
from shared.aws import configured_endpoint
from shared.config import parse_settings
from shared.store import Store


def test_a_service_endpoint_wins_over_the_global_one_and_no_endpoint_means_aws(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:8000")
    settings = parse_settings(health_port=0)
    store, asg = Store.from_settings(settings), Asg.from_settings(settings)
    assert store.db.meta.endpoint_url == "http://127.0.0.1:8000"
    assert asg.api.meta.endpoint_url == "http://127.0.0.1:4566"
    assert asg.ec2.meta.endpoint_url == "http://127.0.0.1:4566"
    assert store.quick().db.meta.endpoint_url == "http://127.0.0.1:8000"
    assert configured_endpoint("DYNAMODB") == "http://127.0.0.1:8000"
    assert configured_endpoint("AUTO_SCALING") == "http://127.0.0.1:4566"

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name)
    real = Store.from_settings(parse_settings(health_port=0, aws_region="eu-west-1"))
    assert real.db.meta.endpoint_url == "https://dynamodb.eu-west-1.amazonaws.com"
    assert configured_endpoint("DYNAMODB") is None
