"""The table's shape (PROTOCOL §5): keys, indexes, the TTL attribute, and its creation.

Keys in the one table:

* ``i-…``                     a worker (status booting | free | leased | draining | dead)
* ``req#<user>#<request_id>`` a remembered request outcome (``expiresAt``, the TTL attribute)
* ``user#<user>``             the set of instances a user holds (``instances``), so the
                              per-user limit is enforced in the same transaction as the lease
* ``lock#<name>``             a lease-based lock (one active scaler / reaper) and its notes
* ``gone#<instance-id>``      a tombstone: a recycled instance may never register again

Indexes (both sparse on ``status``, which only worker items carry):

* ``status-heartbeat-index`` (status, lastHeartbeat): free workers for a claim (never a
  Scan), and stale heartbeats for the reaper.
* ``status-lease-index`` (status, leaseExpiry): expired leases for the reaper.

TTL deletes old items as housekeeping only (days late, and never on emulators): every rule
compares times itself.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import ClientError

from shared.aws import aws_call, error_code
from shared.state import LeaseClock, Worker

log = logging.getLogger(__name__)

HEARTBEAT_INDEX = "status-heartbeat-index"
LEASE_INDEX = "status-lease-index"
TTL_ATTRIBUTE = "expiresAt"


def request_key(user_id: str, request_id: str) -> str:
    return f"req#{user_id}#{request_id}"


def user_key(user_id: str) -> str:
    return f"user#{user_id}"


def lock_key(name: str) -> str:
    return f"lock#{name}"


def tombstone_key(instance_id: str) -> str:
    return f"gone#{instance_id}"


def to_worker(item: dict[str, Any]) -> Worker:
    """A worker item → the plain Worker the decisions work on."""
    return Worker(
        instance_id=item["instanceId"],
        status=item["status"],
        last_heartbeat=float(item.get("lastHeartbeat") or 0),
        lease_expiry=float(item.get("leaseExpiry") or 0),
        user_id=item.get("userId"),
        healthy=bool(item.get("healthy")),
        public_ip=item.get("publicIp"),
        private_ip=item.get("privateIp"),
        request_id=item.get("requestId"),
        first_seen=item.get("firstSeen"),
        reason=item.get("reason"),
        instance_type=item.get("instanceType"),
        availability_zone=item.get("availabilityZone"),
        tls_fingerprint=item.get("tlsFingerprint"),
        unhealthy_since=item.get("unhealthySince"),
    )


def _indexes() -> list[dict[str, Any]]:
    return [
        {"IndexName": name, "Projection": {"ProjectionType": "ALL"},
         "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"},
                       {"AttributeName": sort, "KeyType": "RANGE"}]}
        for name, sort in ((HEARTBEAT_INDEX, "lastHeartbeat"), (LEASE_INDEX, "leaseExpiry"))
    ]


@aws_call
def _exists(db: Any, table: str) -> bool:
    try:
        db.describe_table(TableName=table)
        return True
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        return False


@aws_call
def _create(db: Any, table: str) -> bool:
    try:
        db.create_table(
            TableName=table,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "instanceId", "AttributeType": "S"},
                {"AttributeName": "status", "AttributeType": "S"},
                {"AttributeName": "lastHeartbeat", "AttributeType": "N"},
                {"AttributeName": "leaseExpiry", "AttributeType": "N"},
            ],
            KeySchema=[{"AttributeName": "instanceId", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=_indexes(),
        )
        return True
    except ClientError as exc:
        if error_code(exc) == "ResourceInUseException":  # created concurrently
            return False
        raise


def create_table(db: Any, table: str) -> bool:
    """Create the table and its indexes if absent (idempotent); True if created. Each step
    is one request retried on its own, so a step never runs twice after it succeeded."""
    if _exists(db, table) or not _create(db, table):
        return False
    aws_call(db.get_waiter("table_exists").wait)(
        TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    try:
        db.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE})
    except ClientError as exc:  # TTL is housekeeping only: rules compare times themselves
        log.warning("could not enable TTL", extra={"error": str(exc)})
    return True


def to_lease_clock(item: dict[str, Any]) -> LeaseClock:
    return LeaseClock(to_worker(item), item.get("lastActivity"), item.get("leasedAt"),
                      item.get("renewedAt"), item.get("notice"))
