"""Claim latency end to end (a real `python -m dispatcher`), next to the floor and a Scan.

    AMQP_URL=amqp://guest:guest@localhost:5672/<vhost> .venv/bin/python bench/claim_latency.py \
        --sizes 10,1000,10000 --claims 40

For each pool size N the table is seeded directly (BatchWriteItem) with N free workers,
then, one at a time, ``--claims`` claims go through the dispatcher (wait_seconds 0). Beside
them, in the same run and against the same moto:

* floor: a bare request/reply round trip over the broker (a responder that only answers)
  plus one conditional UpdateItem, the least any design must pay;
* scan: the old system's claim, a Scan for ``status = free`` then a conditional update.

Items read per claim is DynamoDB's ScannedCount (what it bills): for our index Query it is
the page we ask for, whatever N; for the Scan it is the whole table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

from shared import topology  # noqa: E402
from shared.broker import Consumer, Delivery, RpcClient, purge  # noqa: E402
from shared.config import Settings, parse_settings  # noqa: E402
from shared.store import Store  # noqa: E402
from shared.store.schema import HEARTBEAT_INDEX  # noqa: E402
from shared.store.table import marshal  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000


def seed(store: Store, n: int, start: int) -> None:
    now = time.time()
    rows = [{"PutRequest": {"Item": marshal({
        "instanceId": f"i-{k:017x}", "status": "free", "healthy": True,
        "lastHeartbeat": now - k * 0.001, "leaseExpiry": 0, "userId": None,
        "publicIp": f"3.0.{k // 250 % 250}.{k % 250 + 1}", "privateIp": "10.0.0.1"})}}
        for k in range(start, n)]
    for i in range(0, len(rows), 25):
        store.db.batch_write_item(RequestItems={store.table.name: rows[i:i + 25]})


def responder(url: str, queue: str, stop: threading.Event) -> Consumer:
    consumer = Consumer(url, "bench-echo", declare=False)

    def answer(d: Delivery) -> None:
        consumer.publish_here(d.reply_to or "", b"{}", correlation_id=d.correlation_id)
        d.ack()

    consumer.subscribe(queue, answer)
    threading.Thread(target=consumer.run, daemon=True).start()
    consumer.connected.wait(10)
    return consumer


def local_aws() -> tuple[Any, Settings, Store]:
    """A moto server, the bootstrapped table and ASG, empty queues: what every benchmark
    here starts from. Returns (server, settings, store); call ``server.stop()`` at the end."""
    from moto.server import ThreadedMotoServer

    from shared.bootstrap import bootstrap
    from tests.conftest import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per moto request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings = parse_settings(amqp_url=os.environ["AMQP_URL"],
                              aws_endpoint_url=f"http://127.0.0.1:{port}", health_port=0)
    bootstrap(settings)
    purge(settings.amqp_url, "bench", [q.name for q in topology.QUEUES])
    return server, settings, Store.from_settings(settings)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--claims", type=int, default=40)
    args = ap.parse_args()

    from tests.conftest import env_for
    from tests.helpers import Proc

    server, settings, store = local_aws()
    # the floor's responder listens on a queue of its own
    echo_q = f"bench.echo.{uuid.uuid4().hex[:6]}"
    from shared.broker import connect

    conn = connect(settings.amqp_url, "bench")
    conn.channel().queue_declare(echo_q, auto_delete=True)
    stop = threading.Event()
    responder(settings.amqp_url, echo_q, stop)
    # one claim at a time: no race for the lease recheck to catch (docs/dispatcher.md)
    proc = Proc("dispatcher", env_for(settings, target_available=0, lease_recheck_seconds=0))
    import boto3
    from botocore.config import Config

    # a Scan of 10,000 items on moto outlasts the adapters' 10 s read timeout
    slow = boto3.client("dynamodb", region_name=settings.aws_region,
                        endpoint_url=settings.aws_endpoint_url,
                        config=Config(read_timeout=300, retries={"max_attempts": 1}))
    rows = []
    have = 0
    try:
        proc.wait_ready()
        client = RpcClient(settings.amqp_url, "bench-client")
        for n in [int(x) for x in args.sizes.split(",")]:
            need = n + args.claims  # the claims lease some: keep the pool at n or more
            seed(store, need, have)
            have = need
            ours, floor, scan = [], [], []
            for k in range(args.claims):
                body = json.dumps({"request_id": f"b{n}-{k}", "user_id": f"bench{n}-{k}",
                                   "wait_seconds": 0}).encode()
                t = time.perf_counter()
                reply = json.loads(client.call(topology.CLAIMS, body, timeout=120))
                ours.append(time.perf_counter() - t)
                assert reply["status"] == "assigned", reply
                t = time.perf_counter()
                client.call(echo_q, b"{}", timeout=30)
                store.db.update_item(
                    TableName=store.table.name, Key={"instanceId": {"S": "i-floor"}},
                    UpdateExpression="SET hits = if_not_exists(hits, :z) + :one",
                    ConditionExpression="attribute_not_exists(locked)",
                    ExpressionAttributeValues={":z": {"N": "0"}, ":one": {"N": "1"}})
                floor.append(time.perf_counter() - t)
                # a Scan of 10,000 items takes seconds on moto: a few suffice
                if k < (5 if n < 10000 else 2):
                    t = time.perf_counter()
                    resp = slow.scan(TableName=store.table.name, FilterExpression="#s = :f",
                                         ExpressionAttributeNames={"#s": "status"},
                                         ExpressionAttributeValues={":f": {"S": "free"}})
                    scan_read = resp["ScannedCount"]
                    scan.append(time.perf_counter() - t)
            q = store.db.query(TableName=store.table.name, IndexName=HEARTBEAT_INDEX,
                               KeyConditionExpression="#s = :f", FilterExpression="healthy = :y",
                               ExpressionAttributeNames={"#s": "status"},
                               ExpressionAttributeValues={":f": {"S": "free"},
                                                          ":y": {"BOOL": True}},
                               ScanIndexForward=False, Limit=25)
            rows.append({
                "workers": n,
                "ours_p50_ms": round(pct(ours, 50), 1), "ours_p99_ms": round(pct(ours, 99), 1),
                "floor_p50_ms": round(pct(floor, 50), 1), "floor_p99_ms": round(pct(floor, 99), 1),
                "scan_p50_ms": round(pct(scan, 50), 1),
                "ours_items_read": q["ScannedCount"] + 2,  # index page + recall + user item
                "scan_items_read": scan_read,
            })
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.stop()
        conn.close()
        server.stop()
    print("| workers | ours p50 / p99 ms | floor p50 / p99 ms | Scan claim p50 ms "
          "| items read: ours / Scan |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']:,} | {r['ours_p50_ms']} / {r['ours_p99_ms']} | "
              f"{r['floor_p50_ms']} / {r['floor_p99_ms']} | {r['scan_p50_ms']} | "
              f"{r['ours_items_read']} / {r['scan_items_read']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
