"""Least privilege, proven: every AWS operation the services perform against moto (recorded by
shared/aws.py) is allowed by the template's orchestrator policy, and the policy grants nothing
those operations do not need. The end-to-end run feeds its own recording to the same check."""

from __future__ import annotations

import time
import urllib.request

import pytest

from shared.asg import Asg
from shared.aws import RECORD_ENV
from shared.config import parse_settings
from shared.store import Store
from tests import iam


def exercise_store(store: Store) -> None:
    """The store's public operations, roughly in the order a pool's life calls them."""
    now = time.time()
    store.create_table()  # on AWS the stack made the table: this is only a DescribeTable
    store.ping()
    ids = [f"i-{k:017x}" for k in range(1, 5)]
    store.workers.track_booting(ids[0], now=now)
    for k, iid in enumerate(ids):
        store.workers.register(iid, now=now + k * 0.01, private_ip=f"10.0.0.{k + 1}",
                               public_ip=None)
    store.workers.heartbeat(ids[0], healthy=True, now=now + 1)
    store.heartbeats.available()  # the batch probe: a PartiQL UPDATE (moto answers it)
    free = store.workers.find_free()
    store.workers.count("free", healthy_only=True)
    worker = store.workers.get(free[0].instance_id)
    assert worker is not None
    store.leases.grant(worker, user_id="alice", request_id="r1", lease_seconds=60, now=now,
                       max_leases=1, remember_seconds=86400)
    store.requests.recall("alice", "r1")
    store.leases.held_by("alice")
    store.leases.renew(worker.instance_id, user_id="alice", lease_seconds=120, now=now + 2)
    store.leases.release(worker.instance_id, user_id="alice", now=now + 3)
    store.leases.forget_user("alice", worker.instance_id)
    store.leases.expired(now + 10_000)
    stale = store.workers.by_status("free", heartbeat_before=now + 10_000)
    store.workers.mark_dead(stale[0], now=now + 10_000)
    again = store.workers.get(stale[1].instance_id)
    assert again is not None
    store.workers.drain_free(again, now=now + 5, reason="surplus")
    store.workers.confirm_recyclable(again.instance_id, now=now + 6)
    store.workers.remove(again.instance_id, only_if_status=("draining",))
    store.requests.remember("bob", "r9", {"status": "unavailable"}, now=now,
                            remember_seconds=86400)
    store.locks.acquire("scaler", owner="me", ttl=5, now=now)
    store.locks.release("scaler", owner="me")


def exercise_asg(asg: Asg) -> None:
    asg.describe()
    asg.set_desired(2)
    ids = [i.instance_id for i in asg.describe().instances]
    asg.set_protection(ids, True)
    asg.set_protection(ids, False)
    asg.terminate(ids[0], decrement=False)
    asg.activities()


@pytest.fixture(scope="module")
def recorded(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Bootstrap with the recorder off (moto-only calls), then the services' calls with it on.

    Module-scoped: one recording (~3 s against moto) serves every test below.
    """
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset",
                                                  method="POST"), timeout=5).read()
    settings = parse_settings(aws_endpoint_url=moto_endpoint)
    Store.from_settings(settings).create_table()
    Asg.from_settings(settings).ensure_group(
        launch_template=settings.launch_template_name, ami_id=settings.worker_ami_id,
        instance_type=settings.worker_instance_type, max_size=settings.asg_max_size)
    path = tmp_path_factory.mktemp("iam") / "aws-calls.txt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(RECORD_ENV, str(path))  # read when each boto3 client is built
        exercise_store(Store.from_settings(settings))
        exercise_asg(Asg.from_settings(settings))
    return iam.read_recording(path)


def test_every_operation_the_services_perform_is_allowed_by_the_template(
        recorded: set[str]) -> None:
    not_allowed, _ = iam.check(recorded, iam.policy())
    assert not_allowed == set(), f"add to OrchestratorRole: {sorted(not_allowed)}"


def test_the_policy_grants_nothing_the_services_never_call(recorded: set[str]) -> None:
    _, never_used = iam.check(recorded, iam.policy())
    assert never_used == set(), f"remove from OrchestratorRole: {sorted(never_used)}"


def test_the_recording_covers_both_services_and_the_transaction(recorded: set[str]) -> None:
    assert {"dynamodb:TransactWriteItems[ConditionCheck,Update]",  # a registration
            "dynamodb:TransactWriteItems[Put,Update]",  # a lease
            "dynamodb:Query",
            "dynamodb:BatchExecuteStatement[UPDATE]",  # heartbeats in batches
            "autoscaling:SetDesiredCapacity",
            "autoscaling:TerminateInstanceInAutoScalingGroup"} <= recorded
    assert "dynamodb:CreateTable" not in recorded  # the table existed: bootstrap only looked
    assert "dynamodb:Scan" not in recorded  # no service walks the table (issue 15)


def test_table_actions_are_scoped_to_the_table_and_group_actions_to_the_one_group() -> None:
    for stmt in iam.policy():
        actions = iam._as_list(stmt["Action"])
        resource = stmt["Resource"]
        if any(a.startswith("dynamodb:") for a in actions):
            assert resource != "*", stmt["Sid"]
            text = str(resource)
            assert "WorkerPoolTable" in text, stmt["Sid"]
        mutating = [a for a in actions if a.startswith("autoscaling:")
                    and not a.startswith("autoscaling:Describe")]
        if mutating:
            assert "autoScalingGroupName/${AsgName}" in str(resource), stmt["Sid"]
        if resource == "*":
            assert all(":Describe" in a for a in actions), stmt["Sid"]


def test_the_worker_role_grants_reading_the_agents_broker_password_and_nothing_else() -> None:
    # whatever the role allows, every user of a worker has (a shell, and IMDS one call away):
    # only the agent's password, which they can read in /etc/workerpool/agent.env anyway
    role = iam.load_template()["Resources"]["WorkerRole"]["Properties"]
    assert not role.get("ManagedPolicyArns")
    assert [p["PolicyName"] for p in role["Policies"]] == [iam.BOOT_POLICY_NAME]
    assert iam.boot_policy("WorkerRole") == [{
        "Sid": "AgentBrokerPassword", "Effect": "Allow",
        "Action": "secretsmanager:GetSecretValue", "Resource": {"Ref": "AgentBrokerSecret"}}]
