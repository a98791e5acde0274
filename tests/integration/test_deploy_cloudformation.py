"""The CloudFormation template in CI: cfn-lint passes, and it deploys into moto with outputs that
name what the services' configuration expects. moto cannot create AWS::AmazonMQ::Broker, so
the stack here uses BrokerMode=external (docs/deploy.md lists what moto drops). Nor does its
CloudFormation create AWS::SecretsManager::Secret (it skips them with a warning): the boot
script that reads the broker passwords is run here against moto's Secrets Manager instead,
with a stand-in rabbitmqctl and a stand-in management API."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import pika
import pytest
import yaml

from shared.config import Settings
from shared.store.schema import HEARTBEAT_INDEX, LEASE_INDEX
from tests import iam

CFN_LINT = Path(sys.executable).with_name("cfn-lint")
pytestmark = pytest.mark.filterwarnings(
    "ignore:Tried to parse AWS..SecretsManager..Secret:UserWarning")


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
        "BrokerMode": "external", "BrokerEndpoint": "broker.internal:5671", **overrides,
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
    instance = outputs["OrchestratorInstanceId"]
    assert outputs["OrchestratorSession"] == (
        f"aws ssm start-session --region us-east-1 --target {instance}")
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


# --- the boot script (deploy/agent/cloud-init.yaml, also on the orchestrator) ------------
SCRIPT = "/usr/local/sbin/workerpool-broker-secrets"
DEFINITIONS = json.loads((iam.ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())
#: a password that needs URL-encoding (the stack's are letters and digits; an operator may
#: put anything in the secret)
AWKWARD = "pa ss:w@rd/%x"


@pytest.fixture
def boot(aws: str, tmp_path: Path) -> dict[str, Any]:
    """The boot script, the broker passwords in moto's Secrets Manager, an environment."""
    content = next(f["content"] for f in yaml.safe_load(
        (iam.ROOT / "deploy" / "agent" / "cloud-init.yaml").read_text())["write_files"]
        if f["path"] == SCRIPT)
    script = tmp_path / "workerpool-broker-secrets"
    script.write_text(content)
    sm = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=aws)
    passwords = {"workerpool-service": "Svc" + "1" * 29, "workerpool-agent": AWKWARD,
                 "workerpool-client": "Cli" + "2" * 29, "workerpool-admin": "Adm" + "3" * 29}
    arns = {user: sm.create_secret(Name=f"wp-{user}", SecretString=pw)["ARN"]
            for user, pw in passwords.items()}
    env = {**os.environ, "AWS_ENDPOINT_URL": aws, "RABBITMQCTL_LOG": str(tmp_path / "ctl.log")}
    return {"script": script, "passwords": passwords, "arns": arns, "env": env, "dir": tmp_path}


def run(boot: dict[str, Any], *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, str(boot["script"]), *args], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60,
                          env=env or boot["env"])
    for password in boot["passwords"].values():  # nothing secret on stdout or stderr
        assert password not in proc.stdout + proc.stderr
    return proc


def test_the_boot_script_adds_amqp_url_with_the_password_url_encoded(
        boot: dict[str, Any]) -> None:
    env_file = boot["dir"] / "agent.env"
    env_file.write_text("HEARTBEAT_INTERVAL=15\nAMQP_URL=amqp://stale@old:5672/%2F\nLOG_LEVEL=INFO")
    env_file.chmod(0o640)
    base = "amqps://workerpool-agent@b-1.mq.us-east-1.amazonaws.com:5671/%2F"
    proc = run(boot, "url", str(env_file), base, boot["arns"]["workerpool-agent"])
    assert proc.returncode == 0, proc.stderr
    lines = env_file.read_text().splitlines()
    assert lines[:2] == ["HEARTBEAT_INTERVAL=15", "LOG_LEVEL=INFO"]  # the rest kept, stale gone
    assert lines[2] == ("AMQP_URL=amqps://workerpool-agent:" + quote(AWKWARD, safe="")
                        + "@b-1.mq.us-east-1.amazonaws.com:5671/%2F")
    assert env_file.read_text().endswith("\n") and len(lines) == 3
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640  # mode (and owner) kept
    # what the agent's pika makes of it: the password exactly
    url = lines[2].split("=", 1)[1]
    assert pika.URLParameters(url).credentials.password == AWKWARD
    assert Settings(amqp_url=url).broker_user == "workerpool-agent"


def _users_file(boot: dict[str, Any], api: str = "") -> Path:
    """The orchestrator's broker-users.json, with this test's secrets (and API)."""
    text = iam.load_template()["Resources"]["OrchestratorLaunchTemplate"]["Properties"][
        "LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"][0]
    content = next(f["content"] for f in yaml.safe_load(text)["write_files"]
                   if f["path"] == "/etc/workerpool/broker-users.json")
    arns = boot["arns"]
    for name, value in {"ServiceBrokerSecret": arns["workerpool-service"],
                        "AgentBrokerSecret": arns["workerpool-agent"],
                        "ClientBrokerSecret": arns["workerpool-client"],
                        "AdminSecret": arns["workerpool-admin"] if api else "",
                        "BrokerApi": api}.items():
        content = content.replace("${" + name + "}", value)
    path = boot["dir"] / "broker-users.json"
    path.write_text(content)
    return path


def _fake_rabbitmqctl(boot: dict[str, Any], users_exist: bool) -> dict[str, str]:
    """A rabbitmqctl that records its arguments and what it read on stdin."""
    bin_dir = boot["dir"] / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "rabbitmqctl"
    fake.write_text(f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
stdin = sys.stdin.read() if args[0] in ("add_user", "change_password") else None
with open(os.environ["RABBITMQCTL_LOG"], "a") as fh:
    fh.write(json.dumps({{"args": args, "stdin": stdin}}) + "\\n")
sys.exit(70 if args[0] == "add_user" and {users_exist!r} else 0)
""")
    fake.chmod(0o755)
    return {**boot["env"], "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def _perms(user: str) -> dict[str, str]:
    return next(p for p in DEFINITIONS["permissions"] if p["user"] == user)


@pytest.mark.parametrize("users_exist", [False, True], ids=["first boot", "rerun"])
def test_the_boot_script_makes_the_users_with_rabbitmqctl_passwords_on_stdin(
        boot: dict[str, Any], users_exist: bool) -> None:
    env = _fake_rabbitmqctl(boot, users_exist)
    proc = run(boot, "users", str(_users_file(boot)), env=env)
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in Path(env["RABBITMQCTL_LOG"]).read_text().splitlines()]
    for call in calls:  # a password in argv would be in every `ps`
        assert not set(call["args"]) & set(boot["passwords"].values())
    verb = "change_password" if users_exist else "add_user"
    made = {c["args"][1]: c["stdin"] for c in calls if c["args"][0] == verb}
    assert made == {u: pw for u, pw in boot["passwords"].items() if u != "workerpool-admin"}
    perms = [c["args"] for c in calls if c["args"][0] == "set_permissions"]
    assert perms == [["set_permissions", "-p", "/", u, _perms(u)["configure"], _perms(u)["write"],
                      _perms(u)["read"]] for u in made]
    for topic in DEFINITIONS["topic_permissions"]:
        assert ["set_topic_permissions", "-p", "/", topic["user"], topic["exchange"],
                topic["write"], topic["read"]] in [c["args"] for c in calls]
    set_policies = [c["args"] for c in calls if c["args"][0] == "set_policy"]
    assert len(set_policies) == len(DEFINITIONS["policies"])
    for policy, set_policy in zip(DEFINITIONS["policies"], set_policies, strict=True):
        assert set_policy[:-1] == ["set_policy", "-p", "/", "--apply-to", policy["apply-to"],
                                   "--priority", str(policy["priority"]), policy["name"],
                                   policy["pattern"]]
        assert json.loads(set_policy[-1]) == policy["definition"]


@pytest.fixture
def management_api() -> Iterator[dict[str, Any]]:
    """A stand-in for Amazon MQ's management HTTP API: records each request."""
    seen: dict[str, Any] = {"requests": [], "status": 204}

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["content-length"]))
            seen["requests"].append((self.path, self.headers["authorization"], json.loads(body)))
            self.send_response(seen["status"])
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    seen["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield seen
    server.shutdown()
    server.server_close()


def test_the_boot_script_makes_the_users_through_amazon_mqs_api_as_its_admin(
        boot: dict[str, Any], management_api: dict[str, Any]) -> None:
    proc = run(boot, "users", str(_users_file(boot, api=management_api["url"])))
    assert proc.returncode == 0, proc.stderr
    admin = base64.b64encode(
        f"workerpool-admin:{boot['passwords']['workerpool-admin']}".encode()).decode()
    assert {auth for _, auth, _ in management_api["requests"]} == {f"Basic {admin}"}
    got = {path: body for path, _, body in management_api["requests"]}
    users = [u for u in boot["passwords"] if u != "workerpool-admin"]
    assert got == {
        **{f"/api/users/{u}": {"password": boot["passwords"][u], "tags": ""} for u in users},
        **{f"/api/permissions/%2F/{u}": {k: _perms(u)[k] for k in ("configure", "write", "read")}
           for u in users},
        **{f"/api/topic-permissions/%2F/{t['user']}": {
            k: t[k] for k in ("exchange", "write", "read")}
           for t in DEFINITIONS["topic_permissions"]},
        **{f"/api/policies/%2F/{p['name']}": {
            k: p[k] for k in ("pattern", "apply-to", "priority", "definition")}
           for p in DEFINITIONS["policies"]}}


def test_the_boot_script_stops_on_a_refusal_without_showing_a_password(
        boot: dict[str, Any], management_api: dict[str, Any]) -> None:
    management_api["status"] = 401
    proc = run(boot, "users", str(_users_file(boot, api=management_api["url"])))
    assert proc.returncode != 0
    assert "HTTP 401" in proc.stderr and len(management_api["requests"]) == 1
