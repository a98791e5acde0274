"""The template read as data: it agrees with the code (table, units, settings, broker
permissions) and is secure by default (IMDSv2, encrypted disks, narrow security groups)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError

from shared.config import Settings
from shared.store import Store
from shared.store.schema import TTL_ATTRIBUTE
from tests import iam

ROOT = iam.ROOT
T = iam.load_template()
R = T["Resources"]


class CapturingDynamoDB:
    """A thin fake of the boto3 client: captures what create_table sends (no AWS involved)."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}

    def describe_table(self, **_: Any) -> None:
        raise ClientError({"Error": {"Code": "ResourceNotFoundException"}}, "DescribeTable")

    def create_table(self, **kwargs: Any) -> None:
        self.calls["create_table"] = kwargs

    def update_time_to_live(self, **kwargs: Any) -> None:
        self.calls["update_time_to_live"] = kwargs

    def get_waiter(self, _: str) -> Any:
        return type("W", (), {"wait": lambda *a, **k: None})()


def _sorted(items: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return sorted(items, key=lambda d: d[key])


def test_the_template_table_is_exactly_what_the_store_creates() -> None:
    fake = CapturingDynamoDB()
    Store(table="worker_pool", region="us-east-1", dynamodb=fake).create_table()
    built = fake.calls["create_table"]
    props = R["WorkerPoolTable"]["Properties"]
    assert props["BillingMode"] == built["BillingMode"]
    assert props["KeySchema"] == built["KeySchema"]
    assert _sorted(props["AttributeDefinitions"], "AttributeName") == _sorted(
        built["AttributeDefinitions"], "AttributeName")
    assert _sorted(props["GlobalSecondaryIndexes"], "IndexName") == _sorted(
        built["GlobalSecondaryIndexes"], "IndexName")
    ttl = fake.calls["update_time_to_live"]["TimeToLiveSpecification"]
    assert props["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}
    assert ttl["AttributeName"] == TTL_ATTRIBUTE
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


def test_parameter_defaults_are_the_settings_defaults() -> None:
    p, s = T["Parameters"], Settings()
    assert p["TableName"]["Default"] == s.table_name
    assert p["AsgName"]["Default"] == s.asg_name
    assert int(p["PoolMaxSize"]["Default"]) == s.asg_max_size
    assert int(p["TargetAvailable"]["Default"]) == s.target_available


@pytest.mark.parametrize("lt", ["WorkerLaunchTemplate", "OrchestratorLaunchTemplate"])
def test_launch_templates_require_imdsv2_with_hop_limit_1_and_encrypt_the_root_volume(lt: str
                                                                                    ) -> None:
    data = R[lt]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert all(b["Ebs"]["Encrypted"] is True for b in data["BlockDeviceMappings"])


def test_workers_are_reachable_on_code_server_only_from_the_allowed_cidr_and_ssh_is_opt_in(
        ) -> None:
    ingress = R["WorkerSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert [(r["FromPort"], r["ToPort"], r["CidrIp"]) for r in ingress] == [
        (8080, 8080, {"Ref": "CodeServerCidr"})]
    for name, res in R.items():
        if res["Type"] == "AWS::EC2::SecurityGroupIngress" and res["Properties"]["FromPort"] == 22:
            assert res.get("Condition") == "AllowSsh", name
    assert "SecurityGroupIngress" not in R["OrchestratorSecurityGroup"]["Properties"]


def test_the_orchestrator_accepts_workers_on_the_broker_port_only() -> None:
    rule = R["OrchestratorBrokerIngress"]["Properties"]
    assert (rule["FromPort"], rule["ToPort"]) == (5672, 5672)
    assert rule["SourceSecurityGroupId"] == {"Fn::GetAtt": ["WorkerSecurityGroup", "GroupId"]}
    broker = R["BrokerSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert {(r["FromPort"], r["ToPort"]) for r in broker} == {(5671, 5671)}


def _sub_text(user_data: Any) -> str:
    """All literal text of a UserData expression (Fn::Base64 of Sub/Join/If pieces)."""
    if isinstance(user_data, str):
        return user_data
    if isinstance(user_data, list):
        return "".join(_sub_text(x) for x in user_data)
    if isinstance(user_data, dict):
        (fn, arg), = user_data.items()
        if fn == "Fn::Sub":
            return arg if isinstance(arg, str) else arg[0]
        if fn == "Fn::Join":
            return "".join(_sub_text(x) for x in arg[1])
        if fn == "Fn::If":
            return _sub_text(arg[1]) + _sub_text(arg[2])
        if fn == "Fn::Base64":
            return _sub_text(arg)
    return ""


ORCH = _sub_text(R["OrchestratorLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"])
WORKER = _sub_text(R["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"])


@pytest.mark.parametrize("unit", sorted((ROOT / "deploy" / "systemd").glob("*.service")),
                         ids=lambda p: p.name)
def test_the_orchestrator_installs_each_systemd_unit_verbatim(unit: Path) -> None:
    cloud = yaml.safe_load(ORCH.split("runcmd:")[0])
    files = {f["path"]: f["content"] for f in cloud["write_files"]}
    assert files[f"/etc/systemd/system/{unit.name}"] == unit.read_text(encoding="utf-8")


def _env_names(text: str) -> set[str]:
    return set(re.findall(r"^\s*([A-Z][A-Z0-9_]*)=", text, flags=re.M))


def test_every_variable_the_stack_writes_for_a_process_is_a_setting() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    cloud = yaml.safe_load(ORCH.split("runcmd:")[0])
    env = next(f["content"] for f in cloud["write_files"]
               if f["path"] == "/etc/workerpool/workerpool.env")
    assert _env_names(env) <= fields
    assert {"AMQP_URL", "AWS_REGION", "TABLE_NAME", "ASG_NAME"} <= _env_names(env)
    worker_env = next(f["content"] for f in yaml.safe_load(WORKER)["write_files"]
                      if f["path"] == "/etc/workerpool/agent.env")
    assert _env_names(worker_env) <= fields
    example = (ROOT / "deploy" / "systemd" / "workerpool.env.example").read_text()
    assert _env_names(example) <= fields


def test_the_orchestrator_host_broker_gets_the_permissions_of_the_definitions_file() -> None:
    defs = json.loads((ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())
    lines = re.findall(r"\[rabbitmqctl, set_permissions, -p, /, ([\w-]+), '([^']*)', "
                       r"'([^']*)', '([^']*)'\]", ORCH)
    in_template = {u: (c, w, r) for u, c, w, r in lines}
    in_file = {p["user"]: (p["configure"], p["write"], p["read"]) for p in defs["permissions"]
               if p["user"] != "workerpool-admin"}
    assert in_template == in_file
    topic = defs["topic_permissions"][0]
    assert (f"[rabbitmqctl, set_topic_permissions, -p, /, {topic['user']}, {topic['exchange']}, "
            f"'{topic['write']}', '{topic['read']}']") in ORCH
    assert "[rabbitmqctl, delete_user, guest]" in ORCH


def test_the_worker_user_data_is_the_agents_cloud_init_verbatim() -> None:
    agent_dir = ROOT / "deploy" / "agent"
    assert WORKER == (agent_dir / "cloud-init.yaml").read_text(encoding="utf-8")
    files = {f["path"]: f["content"] for f in yaml.safe_load(WORKER)["write_files"]}
    assert files["/etc/systemd/system/workerpool-agent.service"] == (
        agent_dir / "workerpool-agent.service").read_text(encoding="utf-8")


def test_every_placeholder_of_the_worker_user_data_is_given_a_value() -> None:
    sub = R["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"][
        "Fn::Base64"]["Fn::Sub"]
    assert set(re.findall(r"\$\{(\w+)\}", sub[0])) == set(sub[1])
