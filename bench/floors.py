"""The least a claim can cost, served the way ours is, so that the figures beside ours differ
only in the DynamoDB work: a consumer on a quorum queue of its own (as workerpool.claims is)
receives the request, does its work through its own counting proxy, replies with a publisher
confirm (as the dispatcher does) and acks.

* ``floor``: one conditional UpdateItem, the least any design that stores a lease must pay;
* ``contract``: one TransactWriteItems of 3 items (the worker free → leased, the request
  remembered, the user's lease set grown), the least a claim must write to keep PROTOCOL §3's
  promises (a repeated request gets the same worker, a user never exceeds the limit, even
  with concurrent claims on several dispatchers);
* ``scan``: the old system's claim, a Scan for ``status = free`` page by page until one is
  found, then a conditional UpdateItem on it (the bench frees that worker again, uncounted).

The floors write items whose keys start with ``bench#`` and carry no ``status``: they are
in no index and never seen by the dispatcher.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

from shared.broker import Consumer, Delivery, RpcClient, connect

FLOOR, CONTRACT, SCAN = "floor", "contract", "scan"
KINDS = (FLOOR, CONTRACT, SCAN)


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def floor_write(db: Any, table: str, k: int) -> dict[str, Any]:
    db.update_item(
        TableName=table, Key={"instanceId": {"S": "bench#floor"}},
        UpdateExpression="SET hits = if_not_exists(hits, :z) + :one, userId = :u",
        ConditionExpression="attribute_not_exists(gone)",
        ExpressionAttributeValues={":z": _n(0), ":one": _n(1), ":u": {"S": f"u{k}"}})
    return {}


def contract_write(db: Any, table: str, k: int, run: str) -> dict[str, Any]:
    user = f"bench#user#{run}#{k}"
    db.transact_write_items(TransactItems=[
        {"Update": {"TableName": table, "Key": {"instanceId": {"S": "bench#worker"}},
                    "UpdateExpression": "SET hits = if_not_exists(hits, :z) + :one, "
                                        "userId = :u",
                    "ConditionExpression": "attribute_not_exists(gone)",
                    "ExpressionAttributeValues": {":z": _n(0), ":one": _n(1),
                                                  ":u": {"S": user}}}},
        {"Put": {"TableName": table,
                 "Item": {"instanceId": {"S": f"bench#req#{run}#{k}"},
                          "outcome": {"S": "assigned"}, "expiresAt": _n(2_000_000_000)},
                 "ConditionExpression": "attribute_not_exists(instanceId)"}},
        {"Update": {"TableName": table, "Key": {"instanceId": {"S": user}},
                    "UpdateExpression": "ADD leases :w",
                    "ConditionExpression": "attribute_not_exists(leases) OR size(leases) < :max",
                    "ExpressionAttributeValues": {":w": {"SS": ["bench#worker"]},
                                                  ":max": _n(1)}}},
    ])
    return {}


def scan_claim(db: Any, table: str) -> dict[str, Any]:
    """The first free worker a Scan finds, leased with a conditional write."""
    kwargs: dict[str, Any] = {"TableName": table, "FilterExpression": "#s = :f",
                              "ExpressionAttributeNames": {"#s": "status"},
                              "ExpressionAttributeValues": {":f": {"S": "free"}}}
    while True:
        resp = db.scan(**kwargs)
        for item in resp.get("Items", []):
            try:
                db.update_item(TableName=table, Key={"instanceId": item["instanceId"]},
                               UpdateExpression="SET #s = :l", ConditionExpression="#s = :f",
                               ExpressionAttributeNames={"#s": "status"},
                               ExpressionAttributeValues={":f": {"S": "free"},
                                                          ":l": {"S": "leased"}})
            except db.exceptions.ConditionalCheckFailedException:
                continue
            return {"instance_id": item["instanceId"]["S"]}
        if "LastEvaluatedKey" not in resp:
            return {"instance_id": None}
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


def free_again(db: Any, table: str, instance_id: str) -> None:
    """Undo a Scan claim's lease (the pool stays the size we say)."""
    db.update_item(TableName=table, Key={"instanceId": {"S": instance_id}},
                   UpdateExpression="SET #s = :f", ExpressionAttributeNames={"#s": "status"},
                   ExpressionAttributeValues={":f": {"S": "free"}})


class Floors:
    """Three responders (one per kind) on one consumer thread; ``call`` asks one of them."""

    def __init__(self, amqp_url: str, db: Any, table: str) -> None:
        self._url = amqp_url
        run = uuid.uuid4().hex[:6]
        self.queues = {kind: f"bench.{kind}.{run}" for kind in KINDS}
        work: dict[str, Callable[[int], dict[str, Any]]] = {
            FLOOR: lambda k: floor_write(db, table, k),
            CONTRACT: lambda k: contract_write(db, table, k, run),
            SCAN: lambda k: scan_claim(db, table),
        }
        conn = connect(amqp_url, "bench-floors")
        channel = conn.channel()
        for q in self.queues.values():
            channel.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
        conn.close()
        self._consumer = Consumer(amqp_url, "bench-floors", declare=False)
        for kind, q in self.queues.items():
            self._consumer.subscribe(q, self._answer(work[kind]))
        self._thread = threading.Thread(target=self._consumer.run, daemon=True, name="floors")
        self._thread.start()
        if not self._consumer.connected.wait(15):
            raise RuntimeError("the floors' consumer did not connect to the broker")

    def _answer(self, work: Callable[[int], dict[str, Any]]) -> Callable[[Delivery], None]:
        def handle(d: Delivery) -> None:
            reply = work(int(json.loads(d.body)["k"]))
            self._consumer.publish_here(d.reply_to or "", json.dumps(reply).encode(),
                                        correlation_id=d.correlation_id)
            d.ack()

        return handle

    def call(self, client: RpcClient, kind: str, k: int) -> dict[str, Any]:
        body = json.dumps({"k": k}).encode()
        return dict(json.loads(client.call(self.queues[kind], body, timeout=60)))

    def close(self) -> None:
        self._consumer.stop()
        self._thread.join(10)
        conn = connect(self._url, "bench-floors")
        channel = conn.channel()
        for q in self.queues.values():
            channel.queue_delete(q)
        conn.close()
