"""The stage every benchmark here runs on, black box: DynamoDB Local (``scripts/dynamodb``),
the ASG on moto (one request at a time, sim/motoserver.py), the real broker at AMQP_URL,
and real ``python -m dispatcher`` processes whose DynamoDB goes through a counting proxy
(bench/counting.py). A fresh table per stage, dropped at the end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/claims.py` as well as `python -m bench.claims`
    sys.path.insert(0, str(ROOT))
# DynamoDB Local refuses credentials that are not letters and digits
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

from shared.config import Settings, parse_settings  # noqa: E402
from shared.store import Store  # noqa: E402
from shared.store.table import marshal  # noqa: E402
from tests.helpers import Proc  # noqa: E402

DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/%2F"

#: What every benchmarked dispatcher runs with. HEARTBEAT_INTERVAL:
#: the seeded workers must stay alive (HEARTBEAT_TIMEOUT = 3 × it) for the whole run.
#: TARGET_AVAILABLE=0: no scaler here to hear about shortages.
DISPATCHER_ENV = {"HEARTBEAT_INTERVAL": "600",
                  "TARGET_AVAILABLE": "0", "HEALTH_PORT": "0"}


def amqp_url() -> str:
    return os.environ.get("AMQP_URL", DEFAULT_AMQP_URL)


def dynamodb_local() -> str:
    """DynamoDB Local's URL, started (and installed) by scripts/dynamodb if needed."""
    done = subprocess.run([str(ROOT / "scripts" / "dynamodb"), "start"], capture_output=True,
                          text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"scripts/dynamodb start failed ({done.returncode}): "
                         f"{done.stderr.strip()[-1000:]}")
    return done.stdout.strip().splitlines()[-1]


@dataclass
class Stage:
    """What a benchmark needs: the settings (table, ASG, broker) and a store of its own that
    talks to DynamoDB Local directly (seeding, restoring: never counted)."""

    settings: Settings
    dynamodb: str
    moto: str
    store: Store

    def dispatcher(self, dynamodb_url: str, name: str = "dispatcher", **extra: Any) -> Proc:
        """A real ``python -m dispatcher`` (ready), its DynamoDB at ``dynamodb_url``."""
        s = self.settings
        env = {"AMQP_URL": s.amqp_url, "AWS_ENDPOINT_URL": self.moto,
               "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_url, "AWS_REGION": s.aws_region,
               "TABLE_NAME": s.table_name, "ASG_NAME": s.asg_name, **DISPATCHER_ENV,
               **{k.upper(): str(v) for k, v in extra.items()}}
        proc = Proc("dispatcher", env, name=name)
        proc.wait_ready(60)
        return proc


@contextmanager
def stage(label: str) -> Iterator[Stage]:
    """DynamoDB Local + a fresh table, moto + the ASG, every workerpool queue empty."""
    from shared import topology
    from shared.bootstrap import bootstrap
    from shared.broker import purge
    from sim.motoserver import SerializedMotoServer

    url = dynamodb_local()
    moto = SerializedMotoServer().start()
    # this process's clients: DynamoDB to DynamoDB Local, the rest (the ASG) to moto
    os.environ["AWS_ENDPOINT_URL"] = moto.endpoint
    os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = url
    table = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    settings = parse_settings(amqp_url=amqp_url(), aws_endpoint_url=moto.endpoint,
                              table_name=table, health_port=0)
    queues = [q.name for q in topology.QUEUES]
    try:
        bootstrap(settings, broker=False)
        purge(settings.amqp_url, "bench", queues)
        yield Stage(settings, url, moto.endpoint, Store.from_settings(settings))
    finally:
        try:
            Store.from_settings(settings).db.delete_table(TableName=table)
        except Exception as exc:  # a table left behind costs memory only
            print(f"(could not drop table {table}: {exc})", file=sys.stderr)
        purge(settings.amqp_url, "bench", queues)
        moto.stop()


def worker_id(k: int) -> str:
    return f"i-{k:017x}"


#: The seeded workers' heartbeats spread over this much of the past, as a live fleet's spread
#: over HEARTBEAT_INTERVAL (agents boot at different moments): within the bench dispatchers'
#: interval (DISPATCHER_ENV), so that a dispatcher's refill from a random split point of the
#: interval finds another part of the pool than another dispatcher's.
SPREAD_SECONDS = 600.0
_GOLDEN = 0.6180339887498949


def registered(k: int, now: float) -> dict[str, Any]:
    """Worker k's item as a (v1, unsigned) agent's registration leaves it (shared/store/
    workers.py ``register``): free, healthy, heard from within the last SPREAD_SECONDS
    (evenly: worker k at the golden-ratio point k·φ mod 1 of that time)."""
    return {"instanceId": worker_id(k), "status": "free", "healthy": True,
            "lastHeartbeat": now - (k * _GOLDEN) % 1.0 * SPREAD_SECONDS,
            "registeredAt": now - 2 * SPREAD_SECONDS, "leaseExpiry": 0,
            "userId": None, "publicIp": f"198.51.{100 + k // 250 % 100}.{k % 250 + 1}",
            "privateIp": f"10.0.{k // 250 % 250}.{k % 250 + 1}", "instanceType": "t3.medium",
            "availabilityZone": "us-east-1a", "agentVersion": "1.0.0", "tlsFingerprint": None}


def seed(store: Store, start: int, end: int) -> None:
    """Registered free workers ``start``..``end - 1`` (BatchWriteItem, uncounted): written
    directly rather than through 10,000 registrations, which would take minutes."""
    now = time.time()
    rows = [{"PutRequest": {"Item": marshal(registered(k, now))}} for k in range(start, end)]
    for i in range(0, len(rows), 25):
        batch = {store.table.name: rows[i:i + 25]}
        while batch:
            resp = store.db.batch_write_item(RequestItems=batch)
            batch = resp.get("UnprocessedItems") or {}


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (/proc/<pid>/stat utime + stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(health_port: int, name: str) -> float | None:
    """A counter from a process's /metrics (None when it does not export it); ``name`` may
    carry labels, as exported: ``workerpool_lease_attempts_total{result="won"}``."""
    url = f"http://127.0.0.1:{health_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else None


def stop(procs: list[Proc]) -> None:
    for p in procs:
        try:
            p.stop()
        except AssertionError as exc:  # did not stop in time: killed; say so, go on
            print(f"({p.name}: {str(exc).splitlines()[0]})", file=sys.stderr)
