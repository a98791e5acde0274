"""Helpers for the dispatcher's integration tests (no tests here): real dispatcher
processes, workers registered the way agents do it, and a client that counts every reply."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from typing import Any

from shared import topology
from shared.asg import Asg
from shared.broker import Broker, RpcClient, get_one
from shared.config import Settings
from shared.messages import Heartbeat, Register, now_sent_at
from shared.store import Store
from tests.conftest import env_for
from tests.helpers import Proc, wait_for

#: Fast timings so the suite runs whole lifecycles in seconds.
FAST = {"wait_poll_interval": "0.1", "heartbeat_interval": "60", "dispatcher_threads": "8",
        "log_level": "INFO"}


def start_dispatchers(settings: Settings, n: int = 1, **env: Any) -> list[Proc]:
    procs = [Proc("dispatcher", env_for(settings, **{**FAST, **env}), name=f"dispatcher{k}")
             for k in range(n)]
    for p in procs:
        p.wait_ready()
    return procs


def store_of(settings: Settings) -> Store:
    return Store.from_settings(settings)


def launch(settings: Settings, n: int) -> list[str]:
    """Grow the (moto) ASG to n instances; their ids, sorted."""
    asg = Asg.from_settings(settings)
    asg.set_desired(n)
    return sorted(asg.describe().live_ids)


def publish_agent(settings: Settings, messages: list[bytes]) -> None:
    broker = Broker(settings.amqp_url, "tests")
    for body in messages:
        broker.publish(topology.AGENTS, body)
    broker.close()


def register_msg(instance_id: str, k: int = 0) -> bytes:
    return Register(type="register", instance_id=instance_id, private_ip=f"10.0.{k // 250}.{k % 250 + 1}",
                    public_ip=f"198.51.{100 + k // 250}.{k % 250 + 1}", instance_type="t3.medium",
                    availability_zone="us-east-1a", agent_version="1.0.0",
                    sent_at=now_sent_at()).to_json()


def heartbeat_msg(instance_id: str, healthy: bool) -> bytes:
    return Heartbeat(type="heartbeat", instance_id=instance_id, healthy=healthy,
                     sent_at=now_sent_at()).to_json()


def register_workers(settings: Settings, ids: list[str], *, wait: bool = True) -> None:
    publish_agent(settings, [register_msg(iid, k) for k, iid in enumerate(ids)])
    if wait:
        store = store_of(settings)
        wait_for(lambda: store.workers.count("free", healthy_only=True) >= len(ids), timeout=60,
                 interval=0.2, what=f"{len(ids)} free workers")


class Client(RpcClient):
    """An RpcClient that also keeps every reply it ever got (to catch a second reply)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.amqp_url, "tests-client")
        self.all: list[tuple[str, dict[str, Any]]] = []

    def _on_reply(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        super()._on_reply(channel, method, props, body)
        self.all.append((props.correlation_id or "", json.loads(body)))

    def claim(self, user: str, request_id: str | None = None, timeout: float = 10,
              **fields: Any) -> dict[str, Any]:
        body = {"request_id": request_id or uuid.uuid4().hex, "user_id": user, **fields}
        return json.loads(self.call(topology.CLAIMS, json.dumps(body).encode(), timeout))

    def lease(self, kind: str, user: str, instance_id: str, timeout: float = 10,
              **fields: Any) -> dict[str, Any]:
        body = {"type": kind, "request_id": uuid.uuid4().hex, "user_id": user,
                "instance_id": instance_id, **fields}
        return json.loads(self.call(topology.LEASES, json.dumps(body).encode(), timeout))

    def raw(self, queue: str, body: bytes, timeout: float = 10) -> dict[str, Any]:
        return json.loads(self.call(queue, body, timeout))

    def settle(self, seconds: float) -> None:
        """Keep listening a while (a second reply would arrive now)."""
        self.wait(["never"], seconds)


def dead_letters(settings: Settings) -> list[tuple[bytes, dict[str, Any]]]:
    out = []
    while (got := get_one(settings.amqp_url, "tests", topology.DEAD_LETTER)) is not None:
        out.append(got)
    return out


def metrics_text(proc: Proc) -> str:
    url = f"http://127.0.0.1:{proc.health_port}/metrics"
    return urllib.request.urlopen(url, timeout=5).read().decode()


def wait_logged(proc: Proc, msg: str, count: int = 1, timeout: float = 10) -> None:
    wait_for(lambda: sum(1 for line in proc.lines if line.get("msg") == msg) >= count,
             timeout=timeout, what=f"{count}× {msg!r} in the log of {proc.name}")


def stop_all(procs: list[Proc]) -> None:
    for p in procs:
        p.signal(15)
    deadline = time.monotonic() + 12
    for p in procs:
        try:
            p.popen.wait(max(0.1, deadline - time.monotonic()))
        except Exception:
            p.kill()
