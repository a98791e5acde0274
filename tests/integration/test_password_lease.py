"""Per-lease code-server passwords (LEASE_PASSWORDS=true): a real dispatcher and real agents
(FakeImds + FakeCodeServer, instances in the moto ASG) on the real broker (our vhost)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.replies import PASSWORD_NOT_CONFIRMED, PASSWORD_SENT_ONCE
from shared import topology
from shared.config import Settings
from sim.fakes import FakeCodeServer, FakeImds
from tests.helpers import Proc, wait_for
from tests.integration.test_dispatcher_support import (
    Client,
    launch,
    metrics_text,
    register_workers,
    start_dispatchers,
    store_of,
)

PASSWORDS = {"lease_passwords": "true", "password_confirm_seconds": "2"}


class Vm:
    """One simulated worker: its IMDS, its code-server (with a config file), its agent."""

    def __init__(self, settings: Settings, instance_id: str, k: int, tmp: Path,
                 **env: str) -> None:
        self.instance_id = instance_id
        self.dir = tmp / instance_id
        self.dir.mkdir()
        config = self.dir / "config.yaml"
        config.write_text("bind-addr: 0.0.0.0:8080\nauth: password\npassword: from-the-ami\n"
                          "cert: false\n")
        self.imds = FakeImds(instance_id=instance_id, private_ip=f"10.0.9.{k}",
                             public_ip=f"198.51.100.{k + 1}").start()
        self.code_server = FakeCodeServer(config_path=config).start()
        self.agent = Proc("agent", {
            "AMQP_URL": settings.amqp_url, "HEALTH_PORT": "0", "HEARTBEAT_INTERVAL": "0.5",
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.imds.url,
            "CODE_SERVER_URL": self.code_server.url, "CODE_SERVER_CONFIG": str(config),
            "PASSWORD_CONFIRM_SECONDS": "2", **env}, name=f"agent-{instance_id}")

    def close(self) -> None:
        self.agent.kill()
        self.imds.stop()
        self.code_server.stop()


@pytest.fixture
def vms(pool: Settings, tmp_path: Path) -> Iterator[list[Vm]]:
    made: list[Vm] = []
    yield made
    for vm in made:
        vm.close()


@pytest.fixture
def client(pool: Settings) -> Iterator[Client]:
    c = Client(pool)
    yield c
    c.close()


def table_text(settings: Settings) -> str:
    store = store_of(settings)
    items = store.db.scan(TableName=settings.table_name)["Items"]
    return json.dumps(items)


def assert_nowhere(secret: str, procs: list[Proc], settings: Settings) -> None:
    for proc in procs:
        assert not [line for line in proc.raw if secret in line], proc.name
    assert secret not in table_text(settings)


def test_the_claimant_gets_a_password_the_workers_code_server_accepts_and_nothing_else_has_it(
        pool: Settings, vms: list[Vm], client: Client, tmp_path: Path) -> None:
    (iid,) = launch(pool, 1)
    restarted = tmp_path / "restarted"
    vm = Vm(pool, iid, 1, tmp_path, CODE_SERVER_RESTART_COMMAND=f"touch {restarted}")
    vms.append(vm)
    (dispatcher,) = start_dispatchers(pool, **PASSWORDS)
    try:
        vm.agent.wait_ready()
        wait_for(lambda: store_of(pool).workers.count("free", healthy_only=True) == 1,
                 what="the worker free")

        reply = client.claim("alice", "r-1")
        assert reply["status"] == "assigned" and reply["reason"] is None
        password = reply["worker"]["password"]
        assert isinstance(password, str) and len(password) >= 22  # ≥ 128 random bits
        assert vm.code_server.accepts(password)
        assert not vm.code_server.accepts(password + "x")
        config = (vm.dir / "config.yaml").read_text()
        assert "bind-addr: 0.0.0.0:8080" in config and "cert: false" in config
        assert "from-the-ami" not in config and config.count("auth: password") == 1
        assert restarted.exists()  # CODE_SERVER_RESTART_COMMAND ran

        # the same request again: the same worker, but the password was sent once only
        again = client.claim("alice", "r-1")
        assert again["worker"]["instance_id"] == iid
        assert again["worker"]["password"] is None and again["reason"] == PASSWORD_SENT_ONCE
        assert 'workerpool_lease_passwords_total{result="set"} 1.0' in metrics_text(dispatcher)
    finally:
        dispatcher.stop()
        vm.agent.stop()
    hashed = hashlib.sha256(password.encode()).hexdigest()
    for secret in (password, hashed):
        assert_nowhere(secret, [dispatcher, vm.agent], pool)


def test_a_worker_whose_agent_does_not_confirm_is_taken_out_and_the_claim_gets_another(
        pool: Settings, vms: list[Vm], client: Client, tmp_path: Path) -> None:
    ghost, broken, good = launch(pool, 3)
    (dispatcher,) = start_dispatchers(pool, **PASSWORDS)
    try:
        register_workers(pool, [ghost], wait=False)  # registered, but no agent listens
        vms.append(Vm(pool, broken, 2, tmp_path, CODE_SERVER_RESTART_COMMAND="false"))
        wait_for(lambda: store_of(pool).workers.count("free", healthy_only=True) == 2, timeout=20,
                 what="two free workers")

        cid = client.send(topology.CLAIMS, json.dumps({
            "request_id": "r-1", "user_id": "alice", "wait_seconds": 60}).encode())

        def status(iid: str) -> tuple[str | None, str | None]:
            w = store_of(pool).workers.get(iid)
            return (w.status, w.reason) if w else (None, None)

        for iid in (ghost, broken):  # tried, not confirmed, taken out for the reaper
            wait_for(lambda iid=iid: status(iid) == ("draining", PASSWORD_NOT_CONFIRMED),
                     timeout=15, what=f"{iid} draining")
        assert not client.wait([cid], 0.5)  # the claim waits for another worker
        # a worker whose agent confirms arrives: the waiting claim gets it
        vms.append(Vm(pool, good, 3, tmp_path, AGENT_EXCHANGE="amq.topic"))
        reply = json.loads(client.wait([cid], 20)[cid])
        assert reply["status"] == "assigned", reply
        assert reply["worker"]["instance_id"] == good
        assert vms[-1].code_server.accepts(reply["worker"]["password"])
        assert any(line.get("event") == "password_failed" for line in vms[0].agent.lines)
        assert 'workerpool_lease_passwords_total{result="not_confirmed"} 2.0' in metrics_text(
            dispatcher)
        assert store_of(pool).leases.held_by("alice")[0].instance_id == good
    finally:
        dispatcher.stop()
    assert_nowhere(reply["worker"]["password"], [dispatcher, *(vm.agent for vm in vms)], pool)


def test_without_lease_passwords_the_dispatcher_sends_no_command_and_the_password_is_null(
        pool: Settings, vms: list[Vm], client: Client, tmp_path: Path) -> None:
    (iid,) = launch(pool, 1)
    vm = Vm(pool, iid, 4, tmp_path)
    vms.append(vm)
    (dispatcher,) = start_dispatchers(pool)
    try:
        vm.agent.wait_ready()
        wait_for(lambda: store_of(pool).workers.count("free", healthy_only=True) == 1,
                 what="the worker free")
        reply = client.claim("alice", f"r-{uuid.uuid4().hex[:6]}")
        assert reply["status"] == "assigned" and reply["worker"]["password"] is None
        assert reply["reason"] is None
        assert vm.code_server.config()["hashed_password"] is None  # untouched
    finally:
        dispatcher.stop()
