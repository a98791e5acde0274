"""Idle reclaim and warnings (issue 17, parts 1 and 2), as real processes on the simulated
fleet: dispatcher, scaler, reaper, ``python -m sim.fleet`` (real agents, fake code-servers
whose ``lastHeartbeat`` the fleet's control API sets) and ``workerpool watch``.

* An idle lease is warned (``lease_ending``, reason idle) on workerpool.events and on the VM
  (its notice file, and the line its agent ran the wall stand-in with); activity moves the
  end (``lease_extended``); idle again, it is warned again and reclaimed (``lease_ended``),
  and the instance is terminated.
* A busy user's lease is warned before its expiry, and a renew says so (``lease_extended``).
* ``workerpool status`` shows each lease's idle time.

Timings are seconds: IDLE_SECONDS=6, WARN_BEFORE_SECONDS=3.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import topology
from shared.asg import Asg
from shared.broker import RpcClient
from shared.config import Settings
from shared.store import Store
from tests.conftest import env_for
from tests.helpers import Proc, unique, wait_for
from tests.integration.test_cli_support import cli_env, start

pytestmark = pytest.mark.e2e

IDLE, WARN = 6, 3
TIMINGS = dict(
    TARGET_AVAILABLE=1, ASG_MAX_SIZE=6, HEARTBEAT_INTERVAL=0.5, HEARTBEAT_TIMEOUT=4,
    REAP_INTERVAL=0.3, RECONCILE_INTERVAL=0.3, COOLDOWN_SECONDS=1, BOOT_TIMEOUT_SECONDS=60,
    FLEET_BOOT_DELAY=0.3, LOCK_TTL_SECONDS=3, WAIT_POLL_INTERVAL=0.1,
    ORPHAN_SWEEP_INTERVAL=2, SCALE_IN_IDLE_SECONDS=3600, LOG_LEVEL="INFO",
    IDLE_SECONDS=IDLE, WARN_BEFORE_SECONDS=WARN,
)


class Watch:
    """``workerpool watch --json`` for one user, its events collected as they come."""

    def __init__(self, settings: Settings, home: Path, user: str) -> None:
        self.proc = start(cli_env(settings, home), "watch", "-u", user, "--json")
        assert self.proc.stderr is not None and self.proc.stdout is not None
        line = self.proc.stderr.readline()
        assert "watching the events of" in line, line
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def next(self, kind: str, after: int = 0, timeout: float = 20) -> tuple[int, dict[str, Any]]:
        """The first event of ``kind`` at index ``after`` or later (waiting for it)."""
        def found() -> tuple[int, dict[str, Any]] | None:
            for i, e in enumerate(self.events[after:], after):
                if e["type"] == kind:
                    return i, e
            return None

        return wait_for(found, timeout, interval=0.1,  # type: ignore[no-any-return]
                        what=f"{kind} after #{after} (seen {self.events})")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Pool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store, self.asg = Store.from_settings(settings), Asg.from_settings(settings)
        env = env_for(settings, **TIMINGS)
        self.procs = [Proc("dispatcher", env), Proc("scaler", env), Proc("reaper", env),
                      Proc("sim.fleet", env, "fleet")]
        for p in self.procs:
            p.wait_ready(30)
        self.control = int(self.procs[-1].wait_ready()["control_port"])
        self.rpc = RpcClient(settings.amqp_url, "cli@e2e")

    def claim(self, user: str, **extra: Any) -> dict[str, Any]:
        body = {"request_id": unique("r"), "user_id": user, "wait_seconds": 30, **extra}
        return json.loads(self.rpc.call(topology.CLAIMS, json.dumps(body).encode(), 45))

    def lease_call(self, kind: str, user: str, iid: str | None = None, **extra: Any
                   ) -> dict[str, Any]:
        body = {"type": kind, "request_id": unique("r"), "user_id": user, **extra,
                **({"instance_id": iid} if iid else {})}
        return json.loads(self.rpc.call(topology.LEASES, json.dumps(body).encode(), 15))

    def fleet(self, path: str, method: str = "POST") -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.control}{path}", method=method)
        return json.loads(urllib.request.urlopen(req, timeout=5).read())

    def vm(self, iid: str) -> dict[str, Any]:
        return next(v for v in self.fleet("/instances", "GET") if v["instance_id"] == iid)

    def logs(self) -> str:
        return "\n\n".join(f"== {p.name}\n" + "\n".join(p.raw[-40:]) for p in self.procs)

    def close(self) -> None:
        self.rpc.close()
        codes = {p.name: p.stop() for p in reversed(self.procs)}
        assert all(code == 0 for code in codes.values()), codes


@pytest.fixture(scope="module")
def live(moto_endpoint: str, amqp_url: str) -> Iterator[Pool]:
    from shared.bootstrap import bootstrap
    from shared.broker import purge
    from shared.config import parse_settings

    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset",
                                                  method="POST"), timeout=5).read()
    purge(amqp_url, "e2e", [q.name for q in topology.QUEUES])
    settings = parse_settings(amqp_url=amqp_url, aws_endpoint_url=moto_endpoint,
                              asg_max_size=6, health_port=0)
    bootstrap(settings)
    p = Pool(settings)
    try:
        yield p
    except BaseException:
        print(p.logs())
        raise
    finally:
        p.close()


def test_an_idle_lease_is_warned_on_the_vm_extended_by_activity_then_reclaimed(
        live: Pool, tmp_path: Path) -> None:
    user = unique("ivy")
    watch = Watch(live.settings, tmp_path, user)
    try:
        reply = live.claim(user, lease_seconds=600)
        assert reply["status"] == "assigned", reply
        iid = reply["worker"]["instance_id"]
        # nobody uses it: warned WARN_BEFORE_SECONDS before IDLE_SECONDS from the lease
        i, warned = watch.next("lease_ending")
        assert (warned["reason"], warned["instance_id"]) == ("idle", iid)
        vm = live.vm(iid)
        notice = wait_for(lambda: Path(vm["notice_file"]).exists()
                          and Path(vm["notice_file"]).read_text(), 10, what="notice file")
        assert f"{iid} ({user}) has been idle" in notice and f"ends_at: {warned['ends_at']}" \
            in notice
        # the agent runs the wall stand-in once the notice file is written
        wall = wait_for(lambda: Path(vm["wall_log"]).exists()
                        and Path(vm["wall_log"]).read_text(), 10, what="wall")
        assert wall.strip() == notice.splitlines()[0]
        # the user comes back: the end moves, and they are told
        live.fleet(f"/instances/{iid}/activity")
        i, extended = watch.next("lease_extended", i + 1, timeout=10)
        assert extended["ends_at"] > warned["ends_at"]
        (lease,) = live.lease_call("status", user)["leases"]
        assert lease["instance_id"] == iid and lease["idle_seconds"] <= 3
        assert "is kept" in Path(vm["notice_file"]).read_text()
        # and leaves: warned again, then the lease ends and the worker is recycled
        i, again = watch.next("lease_ending", i + 1)
        assert again["ends_at"] == extended["ends_at"]
        _, ended = watch.next("lease_ended", i + 1)
        assert (ended["reason"], ended["instance_id"]) == ("idle", iid)
        wait_for(lambda: iid not in live.asg.describe().live_ids, 20, what="terminated")
        item = live.store.workers.get(iid)  # once: the reaper may remove it meanwhile
        assert item is None or item.status in ("draining", "dead")
        assert live.lease_call("status", user)["leases"] == []
        assert len([e for e in watch.events if e["type"] == "lease_ending"]) == 2
    finally:
        watch.stop()


def test_a_busy_lease_is_warned_before_its_expiry_and_a_renew_says_extended(
        live: Pool, tmp_path: Path) -> None:
    user = unique("kim")
    watch = Watch(live.settings, tmp_path, user)
    try:
        reply = live.claim(user, lease_seconds=12)
        assert reply["status"] == "assigned", reply
        iid = reply["worker"]["instance_id"]
        live.fleet(f"/instances/{iid}/active")  # at work the whole time: never idle
        i, warned = watch.next("lease_ending")
        assert warned["reason"] == "expiry" and warned["ends_at"] == reply["lease_expiry"]
        sent = time.time()
        renewed = live.lease_call("renew", user, iid, lease_seconds=60)
        assert renewed["status"] == "renewed", renewed
        _, extended = watch.next("lease_extended", i + 1, timeout=10)
        assert extended["previous_ends_at"] == warned["ends_at"]
        assert extended["ends_at"] > warned["ends_at"] and time.time() - sent < 10
        time.sleep(2)  # busy: no more warnings while the user works
        assert [e["type"] for e in watch.events] == ["lease_ending", "lease_extended"]
        assert live.lease_call("release", user, iid)["status"] == "released"
    finally:
        watch.stop()
