"""The CloudFormation template in CI: cfn-lint passes, and it deploys into moto with outputs that
name what the services' configuration expects. moto cannot create AWS::AmazonMQ::Broker, so
the stack here uses BrokerMode=external (docs/deploy.md lists what moto drops)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from shared.config import Settings
from shared.store.schema import HEARTBEAT_INDEX, LEASE_INDEX
from tests import iam

CFN_LINT = Path(sys.executable).with_name("cfn-lint")


def test_cfn_lint_passes_on_the_template_without_errors_or_warnings() -> None:
    proc = subprocess.run([str(CFN_LINT), str(iam.TEMPLATE)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _clients(endpoint: str) -> dict[str, Any]:
    kw = {"region_name": "us-east-1", "endpoint_url": endpoint}
    return {name: boto3.client(name, **kw)  # type: ignore[call-overload]
            for name in ("ec2", "cloudformation", "dynamodb", "autoscaling")}


def deploy(endpoint: str, **overrides: str) -> tuple[dict[str, Any], dict[str, str]]:
    c = _clients(endpoint)
    vpc = c["ec2"].create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [c["ec2"].create_subnet(VpcId=vpc, CidrBlock=f"10.0.{k}.0/24")["Subnet"]["SubnetId"]
               for k in (1, 2)]
    params = {
        "VpcId": vpc, "WorkerSubnetIds": ",".join(subnets), "OrchestratorSubnetId": subnets[0],
        "CodeServerCidr": "203.0.113.0/24", "WorkerAmiId": "ami-12c6146b",
        "OrchestratorAmiId": "ami-12c6146b", "PackageSpec": "workerpool==0.1.0",
        "BrokerMode": "external", "BrokerEndpoint": "broker.internal:5671",
        "ServiceBrokerPassword": "s" * 16, "AgentBrokerPassword": "a" * 16,
        "ClientBrokerPassword": "c" * 16, "BrokerAdminPassword": "d" * 12, **overrides,
    }
    c["cloudformation"].create_stack(
        StackName="workerpool", TemplateBody=iam.TEMPLATE.read_text(encoding="utf-8"),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM"])
    stack = c["cloudformation"].describe_stacks(StackName="workerpool")["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return {"stack": stack, **c}, outputs


def test_the_stack_deploys_into_moto_and_outputs_the_names_the_config_expects(aws: str) -> None:
    c, outputs = deploy(aws)
    assert c["stack"]["StackStatus"] == "CREATE_COMPLETE"
    defaults = Settings()
    assert outputs["TableName"] == defaults.table_name
    assert outputs["AsgName"] == defaults.asg_name
    assert outputs["AwsRegion"] == "us-east-1"
    assert outputs["AmqpEndpoint"] == "broker.internal:5671"
    group = c["autoscaling"].describe_auto_scaling_groups(
        AutoScalingGroupNames=[outputs["AsgName"]])["AutoScalingGroups"][0]
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (0, 10, 0)
    overrides = group["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    assert [o["InstanceType"] for o in overrides] == ["t3.medium", "t3a.medium", "m5.large"]
    assert len(group["VPCZoneIdentifier"].split(",")) == 2


def test_the_deployed_table_has_the_key_schema_and_indexes_the_store_queries(aws: str) -> None:
    c, outputs = deploy(aws)
    table = c["dynamodb"].describe_table(TableName=outputs["TableName"])["Table"]
    assert table["KeySchema"] == [{"AttributeName": "instanceId", "KeyType": "HASH"}]
    indexes = {g["IndexName"]: [(k["AttributeName"], k["KeyType"]) for k in g["KeySchema"]]
               for g in table["GlobalSecondaryIndexes"]}
    assert indexes == {HEARTBEAT_INDEX: [("status", "HASH"), ("lastHeartbeat", "RANGE")],
                       LEASE_INDEX: [("status", "HASH"), ("leaseExpiry", "RANGE")]}
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_names_given_as_parameters_flow_to_the_outputs(aws: str) -> None:
    _, outputs = deploy(aws, TableName="pool_b", AsgName="pool-b-workers",
                        WorkerInstanceType3="")
    assert (outputs["TableName"], outputs["AsgName"]) == ("pool_b", "pool-b-workers")


@pytest.mark.parametrize("mode", ["orchestrator-host"])
def test_the_orchestrator_host_broker_mode_deploys_too(aws: str, mode: str) -> None:
    c, outputs = deploy(aws, BrokerMode=mode, BrokerEndpoint="")
    assert c["stack"]["StackStatus"] == "CREATE_COMPLETE"
    assert outputs["AmqpEndpoint"].endswith(":5672")
