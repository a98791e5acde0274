"""Trust (PROTOCOL v2 §1–§4, issue 13), against the real broker: a vhost of its own with two
broker users made by the test, ``svc`` (the services: SERVICE_USERS) and ``mallory`` (any
other holder of broker credentials, e.g. a lessee who read the agents' password on a VM).

A dispatcher runs with IDENTITY_CERT (a local signing authority standing in for AWS's) and
CLIENT_AUTH=broker. Each forged message below is dead-lettered with its reason, counted in
/metrics, and leaves the table as it was; genuine ones act.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared import topology
from shared.bootstrap import bootstrap
from shared.broker import Broker, RpcClient, get_one, purge
from shared.config import Settings
from shared.queues import command_queue, confirm_queue
from shared.store import Store
from sim.fakes import FakeCodeServer, FakeImds
from sim.identity import CERT_FILE, IdentityAuthority, document
from tests.conftest import env_for
from tests.helpers import Proc, wait_for
from tests.integration.test_dispatcher_support import FAST, launch


def ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def users(amqp_url: str) -> Iterator[dict[str, str]]:
    """A vhost with ``svc`` and ``mallory``, both with every right on it (the broker's
    permissions are not what protects us here: the checks are)."""
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    vhost, names = f"wp-trust-{tag}", {"svc": f"svc-{tag}", "mallory": f"mallory-{tag}"}
    parts = urlsplit(amqp_url)
    ctl("add_vhost", vhost)
    urls = {}
    for role, name in names.items():
        ctl("add_user", name, "pw-" + tag)
        ctl("set_permissions", "-p", vhost, name, ".*", ".*", ".*")
        urls[role] = (f"amqp://{quote(name)}:pw-{tag}@{parts.hostname}:{parts.port or 5672}/"
                      f"{quote(vhost, safe='')}")
    urls.update({f"{role}_user": name for role, name in names.items()})
    try:
        yield urls
    finally:
        for name in names.values():
            ctl("delete_user", name)
        ctl("delete_vhost", vhost)


class Rig:
    def __init__(self, settings: Settings, users: dict[str, str], tmp: Path) -> None:
        self.settings = settings
        self.users = users
        self.authority = IdentityAuthority.in_dir(tmp)
        self.store = Store.from_settings(settings)
        env = env_for(settings, **{**FAST, "IDENTITY_CERT": str(tmp / CERT_FILE),
                                   "CLIENT_AUTH": "broker",
                                   "SERVICE_USERS": users["svc_user"]})
        self.dispatcher = Proc("dispatcher", env)
        self.dispatcher.wait_ready()
        self.mallory = Broker(users["mallory"], "mallory")
        self.ids = launch(settings, 3)

    def register(self, key: Ed25519PrivateKey, iid: str, *, doc_for: str | None = None,
                 ip: str = "10.0.7.1") -> None:
        """A register as an agent on ``doc_for``'s VM would send it, with ``key``."""
        doc = document(instance_id=doc_for or iid, private_ip=ip, instance_type="t3.medium",
                       availability_zone="us-east-1a")
        body = json.dumps({
            "type": "register", "instance_id": iid, "private_ip": ip,
            "public_ip": "203.0.113.9", "identity_document": doc,
            "identity_signature": self.authority.sign(doc), "agent_key": public(key),
        }).encode()
        self.agent_message(body, key)

    def agent_message(self, body: bytes, key: Ed25519PrivateKey | None) -> None:
        headers = {topology.SIGNATURE_HEADER: sign(key, body)} if key else {}
        self.mallory.publish(topology.AGENTS, body, headers=headers)

    def dead_letters(self, n: int) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []

        def enough() -> bool:
            while (m := get_one(self.settings.amqp_url, "tests", topology.DEAD_LETTER)):
                got.append(m[1])
            return len(got) >= n

        wait_for(enough, 10, what=f"{n} dead-letter entries")
        return got

    def metric(self, reason: str) -> float:
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{self.dispatcher.health_port}/metrics", timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("workerpool_refused_messages_total")
                   and f'reason="{reason}"' in line)

    def close(self) -> None:
        self.mallory.close()
        assert self.dispatcher.stop() == 0


def public(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                            ).decode()


def sign(key: Ed25519PrivateKey, body: bytes) -> str:
    return base64.b64encode(key.sign(body)).decode()


@pytest.fixture
def rig(users: dict[str, str], aws: str, tmp_path: Path) -> Iterator[Rig]:
    from shared.config import parse_settings

    settings = parse_settings(amqp_url=users["svc"], aws_endpoint_url=aws, health_port=0)
    bootstrap(settings)
    purge(settings.amqp_url, "tests", [q.name for q in topology.QUEUES])
    r = Rig(settings, users, tmp_path)
    try:
        yield r
    except BaseException:
        print("\n".join(r.dispatcher.raw[-40:]))
        raise
    finally:
        r.close()


def test_a_replayed_genuine_document_with_another_key_registers_nothing(rig: Rig) -> None:
    owner, thief = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    a, b = rig.ids[:2]
    rig.register(owner, a)
    wait_for(lambda: rig.store.workers.get(a), 10, what="the genuine registration")
    before = rig.store.workers.get(a)
    # the thief replays a's genuine document: for a with its own key, and for b
    rig.register(thief, a)
    rig.register(thief, b, doc_for=a)
    reasons = sorted(h[topology.REASON_HEADER] for h in rig.dead_letters(2))
    assert reasons[0].startswith("agent_key: differs from the key this instance first")
    assert reasons[1].startswith("identity_document: instanceId differs from instance_id")
    assert rig.store.workers.get(a) == before and rig.store.workers.get(b) is None
    assert rig.store.workers.agent_key(a) == public(owner)
    assert rig.metric("agent key") == 1 and rig.metric("unattested") == 1


def test_unsigned_or_wrongly_signed_heartbeats_and_deregisters_change_nothing(rig: Rig
                                                                                ) -> None:
    owner, forger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    a = rig.ids[0]
    rig.register(owner, a)
    wait_for(lambda: rig.store.workers.get(a), 10, what="the registration")
    before = rig.store.workers.get(a)
    for kind in ("heartbeat", "deregister"):
        body = json.dumps({"type": kind, "instance_id": a, "healthy": False,
                           "reason": "forged"}).encode()
        rig.agent_message(body, None)
        rig.agent_message(body, forger)
    dead = rig.dead_letters(4)
    assert all(h[topology.REASON_HEADER].startswith("x-workerpool-signature") for h in dead)
    assert all(h[topology.SENDER_HEADER] == rig.users["mallory_user"] for h in dead)
    assert rig.store.workers.get(a) == before  # still free, healthy, same heartbeat
    assert rig.metric("signature") == 4
    # the genuine agent's own heartbeat still counts
    body = json.dumps({"type": "heartbeat", "instance_id": a, "healthy": False}).encode()
    rig.agent_message(body, owner)
    wait_for(lambda: not rig.store.workers.get(a).healthy, 10,  # type: ignore[union-attr]
             what="the signed heartbeat written")


def test_internal_queues_act_only_on_service_users_messages(rig: Rig) -> None:
    """A forged CapacityStatus would make the dispatcher refuse waiting claims; a forged
    waiting claim would jump the queue."""
    status = {"type": "capacity", "ok": False, "reason": "forged", "desired": 10,
              "max_size": 10, "free": 0, "booting": 0, "pending": 0,
              "sent_at": "2026-12-01T00:00:00Z"}
    rig.mallory.publish("", json.dumps(status).encode(), exchange=topology.CAPACITY_EXCHANGE)
    rig.mallory.publish(topology.WAITING, json.dumps(
        {"request_id": "r-jump", "user_id": "mallory", "wait_seconds": 60}).encode())
    dead = rig.dead_letters(2)
    assert {h[topology.REASON_HEADER] for h in dead} == {"untrusted sender"}
    assert rig.metric("untrusted sender") == 2


def test_under_client_auth_broker_a_user_acts_only_for_themself(rig: Rig) -> None:
    owner = Ed25519PrivateKey.generate()
    a = rig.ids[0]
    rig.register(owner, a)
    wait_for(lambda: rig.store.workers.get(a), 10, what="a free worker")
    svc = RpcClient(rig.users["svc"], "gateway-as-service")
    mallory = RpcClient(rig.users["mallory"], "mallory")
    try:
        # the service user may act for alice (as a portal would, via GATEWAY_USERS)
        got = json.loads(svc.call(topology.CLAIMS, json.dumps(
            {"request_id": "r-a", "user_id": "alice", "wait_seconds": 0}).encode(), 10))
        assert got["status"] == "assigned" and got["worker"]["instance_id"] == a
        for queue, body in (
                (topology.CLAIMS, {"request_id": "r-m", "user_id": "alice"}),
                (topology.LEASES, {"type": "release", "request_id": "r-m2",
                                   "user_id": "alice", "instance_id": a})):
            reply = json.loads(mallory.call(queue, json.dumps(body).encode(), 10))
            assert reply["status"] == "rejected" and reply["reason"].startswith("user_id:")
        assert rig.store.workers.get(a).user_id == "alice"  # type: ignore[union-attr]
        # for themself, mallory is answered as anybody is
        mine = json.loads(mallory.call(topology.CLAIMS, json.dumps(
            {"request_id": "r-own", "user_id": rig.users["mallory_user"],
             "wait_seconds": 0}).encode(), 10))
        assert mine["status"] == "unavailable"
    finally:
        svc.close()
        mallory.close()
    assert rig.metric("user_id") == 2


def test_a_real_agent_with_attestation_registers_is_claimed_and_refuses_a_forged_password(
        rig: Rig, tmp_path: Path) -> None:
    iid = rig.ids[0]
    imds = FakeImds(instance_id=iid, private_ip="10.0.3.4", authority=rig.authority).start()
    code_server = FakeCodeServer(config_path=tmp_path / "config.yaml").start()
    # the agent speaks with broker credentials every VM has (here mallory's): what makes it
    # believed is its attested key, not its broker user
    env = env_for(rig.settings, AMQP_URL=rig.users["mallory"], HEARTBEAT_INTERVAL="0.5",
                  SERVICE_USERS=rig.users["svc_user"],
                  AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url, CODE_SERVER_URL=code_server.url,
                  CODE_SERVER_CONFIG=str(tmp_path / "config.yaml"),
                  AGENT_KEY_FILE=str(tmp_path / "agent.key"))
    agent = Proc("agent", env)
    try:
        agent.wait_ready()
        worker = wait_for(lambda: rig.store.workers.get(iid), 10, what="the attested agent")
        assert worker.private_ip == "10.0.3.4"
        assert rig.store.workers.agent_key(iid)  # its key is fixed
        assert oct((tmp_path / "agent.key").stat().st_mode & 0o777) == "0o600"
        # a lessee with the agents' broker credentials tries to set this VM's password
        forged = {"type": "set_password", "command_id": "f" * 22, "hashed_password": "cd" * 32,
                  "confirm_to": confirm_queue("mallory"), "sent_at": "2026-12-01T00:00:00Z"}
        rig.mallory.publish(command_queue(iid), json.dumps(forged).encode())
        dead = rig.dead_letters(1)
        assert [h[topology.REASON_HEADER] for h in dead] == ["untrusted sender"], dead
        assert code_server.config()["hashed_password"] is None
        svc = RpcClient(rig.users["svc"], "client")
        try:
            got = json.loads(svc.call(topology.CLAIMS, json.dumps(
                {"request_id": "r-1", "user_id": "alice", "wait_seconds": 5}).encode(), 15))
        finally:
            svc.close()
        assert got["status"] == "assigned" and got["worker"]["instance_id"] == iid
    finally:
        agent.stop()
        imds.stop()
        code_server.stop()
