"""The whole pool, as real processes: broker, moto server, dispatcher ×2, scaler, reaper and
the simulated fleet. The old system's manual flow and more: the pool warms to target; a
claim is assigned and the table shows it; a burst raises desired capacity by the missing
machines and every claim is served; release → terminated and replaced; a lease expires →
reclaimed; an agent dies → dead and replaced; the pool returns to target after each.

Runnable alone: ``./scripts/test tests/e2e -q``. Every AWS operation the services perform is
recorded and checked against the CloudFormation policy (least privilege, issue 8).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import topology
from shared.asg import Asg
from shared.bootstrap import bootstrap
from shared.broker import RpcClient, purge
from shared.config import Settings, parse_settings
from shared.fingerprint import presented, same
from shared.store import Store
from sim.identity import CERT_FILE, KEY_FILE, IdentityAuthority
from tests.conftest import env_for
from tests.helpers import Proc, unique, wait_for

pytestmark = pytest.mark.e2e

TARGET = 2
TIMINGS = dict(
    TARGET_AVAILABLE=TARGET, ASG_MAX_SIZE=12, HEARTBEAT_INTERVAL=0.5, HEARTBEAT_TIMEOUT=3,
    REAP_INTERVAL=0.3, COOLDOWN_SECONDS=1, RECONCILE_INTERVAL=0.3, BOOT_TIMEOUT_SECONDS=30,
    FLEET_BOOT_DELAY=0.3, LOCK_TTL_SECONDS=3, WAIT_POLL_INTERVAL=0.1, ORPHAN_SWEEP_INTERVAL=2,
    SCALE_IN_IDLE_SECONDS=3600, LOG_LEVEL="INFO",
)


class Pool:
    """Attestation and TLS on, as `workerpool dev` and a real deployment run it: the fleet's
    IMDS signs identity documents (IDENTITY_CERT for the dispatchers), and each simulated
    code-server serves https with the certificate its agent registers."""

    def __init__(self, settings: Settings, record: Path, identity: Path) -> None:
        self.settings = settings
        self.record = record
        self.store = Store.from_settings(settings)
        self.asg = Asg.from_settings(settings)
        IdentityAuthority.in_dir(identity)
        env = env_for(settings, WORKERPOOL_RECORD_AWS_CALLS=str(record), **TIMINGS,
                      IDENTITY_CERT=str(identity / CERT_FILE),
                      FLEET_IDENTITY_KEY=str(identity / KEY_FILE), FLEET_TLS="1")
        self.procs = [Proc("dispatcher", env, "dispatcher-1"), Proc("dispatcher", env, "dispatcher-2"),
                      Proc("scaler", env), Proc("reaper", env), Proc("sim.fleet", env, "fleet")]
        for p in self.procs:
            p.wait_ready(30)
        self.fleet_control = int(self.procs[-1].wait_ready()["control_port"])
        self.rpc = RpcClient(settings.amqp_url, "cli@e2e")

    def free(self) -> list[str]:
        return sorted(w.instance_id for w in self.store.workers.find_free(limit=100))

    def wait_target(self, timeout: float = 40) -> list[str]:
        def enough() -> list[str] | None:
            free = self.free()
            return free if len(free) >= TARGET else None

        return wait_for(enough, timeout, interval=0.2,  # type: ignore[no-any-return]
                        what=f"{TARGET} free workers")

    def claim(self, user: str, **extra: Any) -> dict[str, Any]:
        body = {"request_id": unique("r"), "user_id": user, **extra}
        wait = extra.get("wait_seconds", 30)
        return json.loads(self.rpc.call(topology.CLAIMS, json.dumps(body).encode(), wait + 15))

    def lease_call(self, kind: str, user: str, instance_id: str) -> dict[str, Any]:
        body = {"type": kind, "request_id": unique("r"), "user_id": user,
                "instance_id": instance_id}
        return json.loads(self.rpc.call(topology.LEASES, json.dumps(body).encode(), 15))

    def fleet(self, path: str) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.fleet_control}{path}",
                                     method="POST" if path != "/instances" else "GET")
        return json.loads(urllib.request.urlopen(req, timeout=5).read() or b"null")

    def set_desired_calls(self) -> list[str]:
        return [line for line in self.record.read_text().splitlines()
                if line == "autoscaling:SetDesiredCapacity"]

    def logs(self) -> str:
        return "\n\n".join(f"== {p.name}\n" + "\n".join(p.raw[-40:]) for p in self.procs)

    def close(self) -> None:
        self.rpc.close()
        codes = {p.name: p.stop() for p in reversed(self.procs)}
        assert all(code == 0 for code in codes.values()), codes


@pytest.fixture(scope="module")
def live(moto_endpoint: str, amqp_url: str, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Pool]:
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset",
                                                  method="POST"), timeout=5).read()
    purge(amqp_url, "e2e", [q.name for q in topology.QUEUES])
    settings = parse_settings(amqp_url=amqp_url, aws_endpoint_url=moto_endpoint,
                              asg_max_size=TIMINGS["ASG_MAX_SIZE"], health_port=0)
    bootstrap(settings)
    record = tmp_path_factory.mktemp("aws") / "calls.txt"
    record.touch()
    p = Pool(settings, record, tmp_path_factory.mktemp("identity"))
    try:
        yield p
    except BaseException:
        print(p.logs())
        raise
    finally:
        p.close()


def test_the_pool_warms_to_target_on_its_own(live: Pool) -> None:
    free = live.wait_target()
    assert len(free) == TARGET
    assert live.asg.describe().desired == TARGET


def test_a_claim_is_assigned_and_the_table_shows_the_lease(live: Pool) -> None:
    live.wait_target()
    reply = live.claim("alice", lease_seconds=600)
    assert reply["status"] == "assigned", reply
    iid = reply["worker"]["instance_id"]
    item = live.store.workers.get(iid)
    assert item is not None and item.status == "leased" and item.user_id == "alice"
    assert live.store.workers.agent_key(iid)  # registered attested, its key fixed
    # code-server over TLS: the reply's fingerprint is the certificate the VM serves
    assert reply["worker"]["url"].startswith("https://")
    assert reply["worker"]["url"].endswith(":8080")
    vm = next(v for v in live.fleet("/instances") if v["instance_id"] == iid)
    assert same(presented(vm["code_server_url"]), reply["worker"]["tls_fingerprint"])
    # the scaler protects the leased instance from scale-in
    wait_for(lambda: any(i.instance_id == iid and i.protected
                         for i in live.asg.describe().instances), 10, what="protection")
    # and refills the pool behind it
    assert len(live.wait_target()) == TARGET
    assert live.lease_call("release", "alice", iid)["status"] == "released"


def test_a_burst_raises_desired_by_the_missing_machines_and_every_claim_is_served(live: Pool
                                                                                  ) -> None:
    live.wait_target()
    wait_for(lambda: not live.store.workers.by_status("draining"), 20, what="recycling done")
    before = live.asg.describe().desired
    calls_before = len(live.set_desired_calls())
    users = [unique("burst") for _ in range(6)]
    cids = {live.rpc.send(topology.CLAIMS, json.dumps(
        {"request_id": unique("r"), "user_id": u, "wait_seconds": 60}).encode()): u
        for u in users}
    replies = live.rpc.wait(cids, timeout=75)
    statuses = [json.loads(r)["status"] for r in replies.values()]
    assert len(replies) == 6 and statuses == ["assigned"] * 6, replies
    instances = {json.loads(r)["worker"]["instance_id"] for r in replies.values()}
    assert len(instances) == 6
    # 6 claims against 2 free: 4 missing for the claims + 2 to refill the target, and not one
    # machine more. The claims reach the dispatchers over a second or so, so the scaler may
    # learn the shortage in steps (the single call for a whole burst is the scaler's own
    # test); it is never a call per claim.
    # A lease and a dispatcher's next waiting count can cross on the way to the scaler,
    # which may then count one claim twice for up to a second: one machine of overshoot per
    # dispatcher at most (two here; docs/scaler.md), which surplus scale-in takes back.
    # Never a machine per claim.
    after = live.asg.describe().desired
    assert 6 <= after - before <= 8
    assert len(live.set_desired_calls()) - calls_before < len(users)
    for cid, user in cids.items():
        iid = json.loads(replies[cid])["worker"]["instance_id"]
        assert live.lease_call("release", user, iid)["status"] == "released"
    live.wait_target()


def test_a_released_worker_is_terminated_and_replaced(live: Pool) -> None:
    live.wait_target()
    reply = live.claim("bob")
    iid = reply["worker"]["instance_id"]
    assert live.lease_call("release", "bob", iid)["status"] == "released"
    wait_for(lambda: iid not in live.asg.describe().live_ids, 20, what="instance terminated")
    wait_for(lambda: live.store.workers.get(iid) is None, 20, what="item removed")
    assert iid not in live.wait_target()


def test_an_expired_lease_is_reclaimed(live: Pool) -> None:
    live.wait_target()
    reply = live.claim("carol", lease_seconds=10)
    iid = reply["worker"]["instance_id"]
    time.sleep(9)
    assert iid in live.asg.describe().live_ids  # not before its time
    wait_for(lambda: iid not in live.asg.describe().live_ids, 20, what="expired lease reclaimed")
    assert live.lease_call("renew", "carol", iid)["status"] == "not_found"
    live.wait_target()


def test_a_dead_agent_is_replaced(live: Pool) -> None:
    free = live.wait_target()
    victim = free[0]
    live.fleet(f"/instances/{victim}/hang")
    wait_for(lambda: victim not in live.asg.describe().live_ids, 30, what="dead worker recycled")
    assert victim not in live.wait_target()


def test_every_process_reports_healthy_with_metrics(live: Pool) -> None:
    for proc in live.procs:
        port = proc.health_port
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                                   timeout=5).read())
        assert health["status"] == "ok", (proc.name, health)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert metrics.startswith(b"#") or metrics == b"", proc.name


def test_bootstrap_again_is_harmless_and_uses_only_allowed_calls(live: Pool) -> None:
    env = env_for(live.settings, WORKERPOOL_RECORD_AWS_CALLS=str(live.record))
    env.pop("AWS_ENDPOINT_URL")  # as on AWS: the stack made the ASG; bootstrap checks the table
    env["AWS_ENDPOINT_URL_DYNAMODB"] = live.settings.aws_endpoint_url or ""
    done = subprocess.run([sys.executable, "-m", "shared.cli", "bootstrap", "--no-broker"],
                          env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["table_created"] is False


def test_every_aws_call_the_services_made_is_allowed_by_the_deployed_policy(live: Pool) -> None:
    from tests import iam

    recorded = iam.read_recording(live.record)
    not_allowed, never_used = iam.check(recorded, iam.policy())
    assert not not_allowed, f"calls the CloudFormation policy does not allow: {not_allowed}"
    assert not never_used, f"the policy grants what the services never called: {never_used}"
