"""`workerpool bootstrap`: table, indexes, launch template and ASG, idempotently."""

from __future__ import annotations

import json
import subprocess
import sys

import boto3

from shared.config import Settings
from tests.conftest import env_for
from tests.helpers import ROOT


def bootstrap(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", "bootstrap"], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", **env_for(settings, ASG_MAX_SIZE=7)},
                          capture_output=True, text=True, timeout=60)


def test_bootstrap_creates_the_table_with_its_indexes_and_the_asg_once(
        settings: Settings, amqp_url: str) -> None:  # it declares the broker's topology too
    first = bootstrap(settings)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["table_created"] is True
    second = bootstrap(settings)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["table_created"] is False and result["asg_created"] is False

    ddb = boto3.client("dynamodb", endpoint_url=settings.aws_endpoint_url,
                       region_name="us-east-1")
    table = ddb.describe_table(TableName="worker_pool")["Table"]
    assert table["KeySchema"] == [{"AttributeName": "instanceId", "KeyType": "HASH"}]
    assert {i["IndexName"] for i in table["GlobalSecondaryIndexes"]} == {
        "status-heartbeat-index", "status-lease-index"}
    ttl = ddb.describe_time_to_live(TableName="worker_pool")["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expiresAt"

    asg = boto3.client("autoscaling", endpoint_url=settings.aws_endpoint_url,
                       region_name="us-east-1")
    (group,) = asg.describe_auto_scaling_groups(
        AutoScalingGroupNames=["workerpool-workers"])["AutoScalingGroups"]
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (0, 7, 0)
    # every log line is one JSON object
    for line in second.stderr.strip().splitlines():
        assert isinstance(json.loads(line), dict)
