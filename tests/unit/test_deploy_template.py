"""The template read as data: it agrees with the code (table, units, settings, broker
permissions) and is secure by default (IMDSv2, encrypted disks, narrow security groups)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

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
    by_port: dict[int, set[str]] = {}
    for r in broker:
        assert r["FromPort"] == r["ToPort"]
        by_port.setdefault(r["FromPort"], set()).add(r["SourceSecurityGroupId"]["Fn::GetAtt"][0])
    # AMQPS from both; the management API (the boot creates the users) from the orchestrator
    assert by_port == {5671: {"WorkerSecurityGroup", "OrchestratorSecurityGroup"},
                       443: {"OrchestratorSecurityGroup"}}


# --- the user-data as EC2 receives it --------------------------------------------------
LAUNCH_TEMPLATES = ("OrchestratorLaunchTemplate", "WorkerLaunchTemplate")
MODES = ("amazon-mq", "orchestrator-host", "external")
REGION = "eu-central-1"
#: stand-ins as long as AWS's own (a generated secret's name ends in two random suffixes)
ARN = "arn:aws:secretsmanager:{region}:123456789012:secret:{name}-0123456789ab-AbCdEf"
MQ_HOST = "b-1234abcd-5678-90ef-1234-567890abcdef.mq.{region}.amazonaws.com"
PARAMS = {"PackageSpec": "git+https://github.com/example-organisation/workerpool@v0.2.0",
          "BrokerEndpoint": "rabbitmq.internal.example.com:5671"}


def conditions(mode: str) -> dict[str, bool]:
    return {"CreateAmazonMq": mode == "amazon-mq",
            "BrokerOnOrchestrator": mode == "orchestrator-host",
            "ConfiguresBroker": mode != "external"}


def evaluate(node: Any, mode: str, region: str = REGION) -> Any:
    """A template expression's value in a stack of BrokerMode ``mode`` (the intrinsic
    functions the template uses; resources' ids and attributes as long as AWS's)."""
    cond = conditions(mode)

    def ref(name: str) -> Any:
        if name == "AWS::Region":
            return region
        if name == "AWS::StackName":
            return "workerpool"
        if name == "BrokerMode":
            return mode
        if name in PARAMS:
            return PARAMS[name]
        if name in T["Parameters"]:
            return str(T["Parameters"][name].get("Default", ""))
        if R[name]["Type"] == "AWS::SecretsManager::Secret":
            return ARN.format(region=region, name=name)
        return f"{name}-0123456789abcdef0"

    def ev(x: Any) -> Any:
        if isinstance(x, list):
            return [v for v in (ev(i) for i in x) if v is not None]
        if not isinstance(x, dict):
            return x
        if len(x) != 1:
            return {k: ev(v) for k, v in x.items()}
        (fn, arg), = x.items()
        if fn == "Ref":
            return None if arg == "AWS::NoValue" else ref(arg)
        if fn == "Fn::If":
            return ev(arg[1] if cond[arg[0]] else arg[2])
        if fn == "Fn::Join":
            return arg[0].join(ev(arg[1]))
        if fn == "Fn::Select":
            return ev(arg[1])[int(arg[0])]
        if fn == "Fn::Split":
            return ev(arg[1]).split(arg[0])
        if fn == "Fn::FindInMap":
            return T["Mappings"][arg[0]][ev(arg[1])][arg[2]]
        if fn == "Fn::GetAtt":
            host = MQ_HOST.format(region=region)
            return {"AmqpEndpoints": [f"amqps://{host}:5671"],
                    "ConsoleURLs": [f"https://{host}"]}.get(arg[1], "10.0.123.234")
        if fn == "Fn::Sub":
            text, names = (arg, {}) if isinstance(arg, str) else (arg[0], ev(arg[1]))
            return re.sub(r"\$\{([\w:.]+)\}", lambda m: str(
                names[m[1]] if m[1] in names else ev({"Fn::GetAtt": m[1].split(".")})
                if "." in m[1] else ref(m[1])), text)
        return {fn: ev(arg)}

    return ev(node)


#: the worker's user-data as written in the template (its ${placeholders} unfilled)
WORKER = R["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"][
    "Fn::Base64"]["Fn::Sub"][0]


def user_data(lt: str, mode: str, region: str = REGION) -> str:
    """The user-data text of a launch template (what Fn::Base64 encodes)."""
    expr = R[lt]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
    return str(evaluate(expr, mode, region))


def files_of(lt: str, mode: str, region: str = REGION) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in yaml.safe_load(user_data(lt, mode, region))["write_files"]}


def env_of(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.M))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lt", LAUNCH_TEMPLATES)
def test_the_user_data_is_one_valid_cloud_config_within_ec2s_16_kb(lt: str, mode: str) -> None:
    text = user_data(lt, mode)
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)  # the whole document: cloud-init ignores user-data that fails
    assert doc["write_files"] and doc["runcmd"]
    # EC2 refuses more than 16 KB (before base64); keep room for longer names than ours
    assert len(text.encode()) <= 16 * 1024 - 1024, len(text.encode())


@pytest.mark.parametrize("unit", [*sorted((ROOT / "deploy" / "systemd").glob("*.service")),
                                  *sorted((ROOT / "deploy" / "systemd").glob("*.d/*.conf"))],
                         ids=lambda p: p.name)
def test_the_orchestrator_installs_each_systemd_unit_verbatim(unit: Path) -> None:
    files = files_of("OrchestratorLaunchTemplate", "amazon-mq")
    relative = unit.relative_to(ROOT / "deploy" / "systemd").as_posix()
    assert files[f"/etc/systemd/system/{relative}"]["content"] == unit.read_text(
        encoding="utf-8")


def test_every_variable_the_stack_writes_for_a_process_is_a_setting() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    orch = env_of(files_of("OrchestratorLaunchTemplate", "amazon-mq")[
        "/etc/workerpool/workerpool.env"]["content"])
    assert set(orch) <= fields
    assert {"AWS_REGION", "TABLE_NAME", "ASG_NAME", "SERVICE_USERS", "CLIENT_AUTH",
            "GATEWAY_USERS", "IDENTITY_CERT"} <= set(orch)
    worker = env_of(files_of("WorkerLaunchTemplate", "amazon-mq")[
        "/etc/workerpool/agent.env"]["content"])
    assert set(worker) <= fields
    # AMQP_URL comes at boot, from Secrets Manager (below), never from user-data
    assert "AMQP_URL" not in orch and "AMQP_URL" not in worker
    example = (ROOT / "deploy" / "systemd" / "workerpool.env.example").read_text()
    assert set(env_of(example)) <= fields


def test_the_worker_user_data_is_the_agents_cloud_init_verbatim() -> None:
    agent_dir = ROOT / "deploy" / "agent"
    assert WORKER == (agent_dir / "cloud-init.yaml").read_text(encoding="utf-8")
    files = {f["path"]: f["content"] for f in yaml.safe_load(WORKER)["write_files"]}
    assert files["/etc/systemd/system/workerpool-agent.service"] == (
        agent_dir / "workerpool-agent.service").read_text(encoding="utf-8")


@pytest.mark.parametrize("lt", LAUNCH_TEMPLATES)
def test_every_placeholder_of_the_user_data_is_given_a_value(lt: str) -> None:
    text, names = R[lt]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    known = set(names) | set(T["Parameters"]) | set(R) | {"AWS::Region"}
    assert set(re.findall(r"\$\{([\w:]+)\}", text)) <= known
    if lt == "WorkerLaunchTemplate":  # cloud-init.yaml names all of its own
        assert set(re.findall(r"\$\{(\w+)\}", text)) == set(names)


# --- broker passwords: Secrets Manager, read at boot ------------------------------------
SECRET_OF = {"workerpool-service": "ServiceBrokerSecret", "workerpool-agent": "AgentBrokerSecret",
             "workerpool-client": "ClientBrokerSecret", "workerpool-admin": "BrokerAdminSecret"}
BOOT_SCRIPT = "/usr/local/sbin/workerpool-broker-secrets"


def test_each_broker_user_has_a_password_generated_in_secrets_manager() -> None:
    secrets = {n: r for n, r in R.items() if r["Type"] == "AWS::SecretsManager::Secret"}
    assert set(secrets) == set(SECRET_OF.values())
    for name, res in secrets.items():
        assert "SecretString" not in res["Properties"], name
        generated = res["Properties"]["GenerateSecretString"]
        # letters and digits: valid in an AMQP URL as they are, and for Amazon MQ (no , : =)
        assert generated["ExcludePunctuation"] is True and generated["PasswordLength"] >= 16
    assert R["BrokerAdminSecret"]["Condition"] == "CreateAmazonMq"


def test_no_parameter_holds_a_password() -> None:
    for name, param in T["Parameters"].items():
        assert not param.get("NoEcho"), name
        assert not re.search(r"password|secret", name, flags=re.I), name


@pytest.mark.parametrize("mode", MODES)
def test_no_password_reaches_user_data_or_outputs(mode: str) -> None:
    for lt in LAUNCH_TEMPLATES:
        text = user_data(lt, mode)
        assert "{{resolve:" not in text  # a dynamic reference would be resolved into it
        urls = re.findall(r"amqps?://[^\s\"',]+", text)
        assert urls, lt
        assert not [u for u in urls if re.match(r"amqps?://[^/@]*:[^/@]*@", u)], lt
    for name, out in T["Outputs"].items():
        assert "{{resolve:" not in json.dumps(out), name
        assert not re.search(r"Secret\w*\.|SecretString", json.dumps(out)), name
    # where each password is (an ARN), never the password
    outputs = {"ServiceSecretArn": "ServiceBrokerSecret", "AgentSecretArn": "AgentBrokerSecret",
               "ClientSecretArn": "ClientBrokerSecret", "AdminSecretArn": "BrokerAdminSecret"}
    assert {n: T["Outputs"][n]["Value"] for n in outputs} == {
        n: {"Ref": s} for n, s in outputs.items()}


def test_amazon_mq_gets_its_admin_password_from_the_secret() -> None:
    assert R["Broker"]["Properties"]["Users"] == [{
        "Username": "workerpool-admin",
        "Password": {"Fn::Sub": "{{resolve:secretsmanager:${BrokerAdminSecret}:SecretString}}"}}]


@pytest.mark.parametrize("lt", LAUNCH_TEMPLATES)
def test_both_hosts_run_the_same_boot_script_to_put_the_password_in_amqp_url(lt: str) -> None:
    files = files_of(lt, "amazon-mq")
    worker_script = next(f["content"] for f in yaml.safe_load(WORKER)["write_files"]
                         if f["path"] == BOOT_SCRIPT)
    assert files[BOOT_SCRIPT]["content"] == worker_script
    assert files[BOOT_SCRIPT]["permissions"] == "0755"
    env_file, user, secret = {"OrchestratorLaunchTemplate": (
        "/etc/workerpool/workerpool.env", "workerpool-service", "ServiceBrokerSecret"),
        "WorkerLaunchTemplate": ("/etc/workerpool/agent.env", "workerpool-agent",
                                 "AgentBrokerSecret")}[lt]
    runcmd = yaml.safe_load(user_data(lt, "amazon-mq"))["runcmd"]
    host = MQ_HOST.format(region=REGION)
    assert [BOOT_SCRIPT, "url", env_file, f"amqps://{user}@{host}:5671/%2F",
            ARN.format(region=REGION, name=secret)] in runcmd


def _secret_grants(role: str, mode: str) -> dict[str, set[str]]:
    """policy name -> the secrets (logical names) it lets ``role`` read, in ``mode``."""
    out: dict[str, set[str]] = {}
    for pol in R[role]["Properties"].get("Policies", []):
        for stmt in pol["PolicyDocument"]["Statement"]:
            actions = iam._as_list(stmt["Action"])
            if not any(a.lower().startswith("secretsmanager:") for a in actions):
                continue
            assert actions == ["secretsmanager:GetSecretValue"] and stmt["Effect"] == "Allow"
            resources = evaluate(stmt["Resource"], mode)
            for arn in [resources] if isinstance(resources, str) else resources:
                assert arn != "*"
                out.setdefault(pol["PolicyName"], set()).add(arn.split(":secret:")[1].split("-")[0])
    return out


@pytest.mark.parametrize("mode", MODES)
def test_each_role_reads_exactly_the_secrets_its_boot_needs(mode: str) -> None:
    needed = {"external": {"ServiceBrokerSecret"},
              "orchestrator-host": {"ServiceBrokerSecret", "AgentBrokerSecret",
                                    "ClientBrokerSecret"},
              "amazon-mq": {"ServiceBrokerSecret", "AgentBrokerSecret", "ClientBrokerSecret",
                            "BrokerAdminSecret"}}[mode]
    # in a policy of their own: the services (workerpool-services) never call Secrets Manager
    assert _secret_grants("OrchestratorRole", mode) == {iam.BOOT_POLICY_NAME: needed}
    assert _secret_grants("WorkerRole", mode) == {iam.BOOT_POLICY_NAME: {"AgentBrokerSecret"}}
    assert iam.boot_policy("OrchestratorRole") and iam.boot_policy("WorkerRole")


@pytest.mark.parametrize("mode", ["orchestrator-host", "amazon-mq"])
def test_the_orchestrator_creates_the_users_and_permissions_of_the_definitions_file(
        mode: str) -> None:
    defs = json.loads((ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())
    conf = json.loads(files_of("OrchestratorLaunchTemplate", mode)[
        "/etc/workerpool/broker-users.json"]["content"])
    # the stack's vhost is /, which the script uses; the file's entries say so
    assert {p["vhost"] for k in ("permissions", "topic_permissions", "policies")
            for p in defs[k]} == {"/"}

    def strip(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in i.items() if k != "vhost"} for i in items
                if i.get("user") != "workerpool-admin"]

    assert conf["permissions"] == strip(defs["permissions"])
    assert conf["topic_permissions"] == strip(defs["topic_permissions"])
    assert conf["policies"] == strip(defs["policies"])
    # every user but the admin (Amazon MQ makes it), each with the secret that holds its password
    assert conf["users"] == [{"name": u["name"], "secret": ARN.format(
        region=REGION, name=SECRET_OF[u["name"]])} for u in defs["users"]
        if u["name"] != "workerpool-admin"]
    if mode == "amazon-mq":
        assert conf["api"] == f"https://{MQ_HOST.format(region=REGION)}"
        assert conf["admin"] == ARN.format(region=REGION, name="BrokerAdminSecret")
    else:
        assert conf["api"] == "" and "rabbitmqctl delete_user guest" in user_data(
            "OrchestratorLaunchTemplate", mode)
    runcmd = " ".join(map(str, yaml.safe_load(user_data("OrchestratorLaunchTemplate", mode))[
        "runcmd"]))
    assert f"{BOOT_SCRIPT} users /etc/workerpool/broker-users.json" in runcmd


# --- who may do what, attestation, operators' access -----------------------------------
def test_the_services_accept_only_the_service_user_and_check_clients_as_the_stack_says(
        ) -> None:
    env = env_of(files_of("OrchestratorLaunchTemplate", "amazon-mq")[
        "/etc/workerpool/workerpool.env"]["content"])
    assert env["SERVICE_USERS"] == "workerpool-service"
    client_auth = T["Parameters"]["ClientAuth"]
    assert env["CLIENT_AUTH"] == client_auth["Default"] == "broker"
    assert set(client_auth["AllowedValues"]) == set(
        get_args(Settings.model_fields["client_auth"].annotation))
    assert env["GATEWAY_USERS"] == T["Parameters"]["GatewayUsers"]["Default"] == ""


def _certs_of_deploy_aws() -> dict[str, str]:
    text = (ROOT / "deploy" / "aws" / "identity-certs.pem").read_text(encoding="ascii")
    return dict(re.findall(r"^(\S+)\n(-----BEGIN CERTIFICATE-----\n.*?\n-----END CERTIFICATE-----)",
                           text, flags=re.S | re.M))


def test_the_template_carries_exactly_the_certificates_of_deploy_aws() -> None:
    assert {region: m["Pem"] for region, m in T["Mappings"]["IdentityCerts"].items()} == (
        _certs_of_deploy_aws())


@pytest.mark.parametrize("region", sorted(_certs_of_deploy_aws()))
def test_the_dispatcher_checks_registrations_against_its_regions_certificate(
        region: str, tmp_path: Path) -> None:
    files = files_of("OrchestratorLaunchTemplate", "amazon-mq", region)
    env = env_of(files["/etc/workerpool/workerpool.env"]["content"])
    installed = files[env["IDENTITY_CERT"]]
    assert env["IDENTITY_CERT"] == "/etc/workerpool/identity-certs.pem"
    assert installed["permissions"] == "0644"  # public, and the services' user reads it
    assert installed["content"] == _certs_of_deploy_aws()[region] + "\n"
    pem = tmp_path / "identity-certs.pem"
    pem.write_text(installed["content"], encoding="ascii")
    assert Settings(identity_cert=str(pem)).identity_cert == str(pem)
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)


SESSION_MANAGER = ("ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
                   "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel",
                   "ssmmessages:OpenDataChannel")


def test_operators_reach_the_orchestrator_through_session_manager_not_ssh() -> None:
    role = R["OrchestratorRole"]["Properties"]
    statements = [s for p in role["Policies"] if p["PolicyName"] != iam.POLICY_NAME
                  for s in p["PolicyDocument"]["Statement"]]
    managed = [str(a) for a in role.get("ManagedPolicyArns", [])]
    assert all(iam.allowed(a, statements) for a in SESSION_MANAGER) or any(
        "AmazonSSMManagedInstanceCore" in a for a in managed)
    assert not any(iam.allowed(a, iam.policy()) for a in SESSION_MANAGER)  # not the services'
    session = T["Outputs"]["OrchestratorSession"]["Value"]["Fn::Sub"]
    assert session.startswith("aws ssm start-session ") and "--target ${OrchestratorInstance}" in (
        session)
    assert not [n for n, o in T["Outputs"].items() if re.search(r"\bssh\s", json.dumps(o["Value"]))]
    assert T["Parameters"]["SshCidr"]["Default"] == ""  # SSH stays opt-in
