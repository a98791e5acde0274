"""The fault suite's rig: real processes whose AWS (and, when asked, broker) goes through a
cuttable proxy, so a test can refuse, blackhole or heal it at will, while the test itself
reads the table and the ASG directly. Timings are short so that an outage, a deadline and a
recovery fit in seconds."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shared.asg import Asg
from shared.broker import Broker
from shared.config import Settings
from shared.messages import Heartbeat, now_sent_at
from shared.store import Store
from tests.conftest import env_for
from tests.helpers import Proc
from tests.integration.test_dispatcher_support import FAST, Client
from tests.proxy import CuttableProxy


@dataclass
class Rig:
    """The pool's settings (the test's own view: straight to moto and the broker), an AWS
    proxy the processes go through, and the processes started so far."""

    settings: Settings
    aws: CuttableProxy
    broker: CuttableProxy
    procs: list[Proc] = field(default_factory=list)

    @property
    def store(self) -> Store:
        return Store.from_settings(self.settings)

    @property
    def asg(self) -> Asg:
        return Asg.from_settings(self.settings)

    def env(self, *, via_broker_proxy: bool = False, **extra: Any) -> dict[str, str]:
        env = env_for(self.settings, **{**FAST, **extra})
        env["AWS_ENDPOINT_URL"] = self.aws.endpoint
        if via_broker_proxy:
            env["AMQP_URL"] = self.broker.url(urlsplit(self.settings.amqp_url).path[1:] or "%2F")
        return env

    def start(self, module: str, name: str | None = None, *, via_broker_proxy: bool = False,
              **extra: Any) -> Proc:
        p = Proc(module, self.env(via_broker_proxy=via_broker_proxy, **extra),
                 name=name or module)
        self.procs.append(p)
        p.wait_ready()
        return p

    def replies(self, client: Client, sent: dict[str, Any], timeout: float
                ) -> dict[str, tuple[float, dict[str, Any]]]:
        """Replies as they arrive: correlation id -> (when, monotonic; the reply)."""
        got: dict[str, tuple[float, dict[str, Any]]] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(sent) and time.monotonic() < deadline:
            for cid, body in client.wait([c for c in sent if c not in got], 0.05).items():
                got[cid] = (time.monotonic(), json.loads(body))
        return got

    def launch(self, n: int) -> list[str]:
        """n instances in the ASG (through moto directly), sorted."""
        self.asg.set_desired(n)
        return sorted(self.asg.describe().live_ids)


class Heartbeats:
    """Agents' heartbeats over the broker from a thread (as the fleet sends them), for some
    instances, until stopped or told to leave one out."""

    def __init__(self, settings: Settings, ids: list[str], interval: float = 0.5) -> None:
        self.ids = list(ids)
        self.unhealthy: set[str] = set()  # these report healthy: false
        self.interval = interval
        self._broker = Broker(settings.amqp_url, "tests-agents")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from shared import topology

        while not self._stop.wait(self.interval):
            for iid in list(self.ids):
                self._broker.publish(topology.AGENTS, Heartbeat(
                    type="heartbeat", instance_id=iid, healthy=iid not in self.unhealthy,
                    sent_at=now_sent_at()).to_json())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._broker.close()


def health(p: Proc) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{p.health_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metric(p: Proc, name: str) -> float:
    """A metric's value (the first sample whose name and labels start with ``name``)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{p.health_port}/metrics", timeout=5)
    for line in body.read().decode().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def elapsed(since: float) -> float:
    return time.monotonic() - since
