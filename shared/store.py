"""The DynamoDB layer over the table of PROTOCOL §5.

One named, conditional operation per state change; losing the condition raises
``ConditionFailed`` (an expected outcome), carrying the item as it was where DynamoDB says.

Keys in the one table:

* ``i-…``                    a worker (status booting | free | leased | draining | dead)
* ``req#<user>#<request_id>`` a remembered request outcome (``expiresAt``, TTL attribute)
* ``user#<user>``            the set of instances a user holds (``instances``), so the
                             per-user limit is enforced in the same transaction as the lease
* ``lock#<name>``            a lease-based lock (one active scaler / reaper), with the notes
                             its holder leaves for the next one (the scaler's last raise)

Indexes (both sparse on ``status``, which only worker items carry):

* ``status-heartbeat-index`` (status, lastHeartbeat): free workers for a claim (never a
  Scan), and stale heartbeats for the reaper.
* ``status-lease-index`` (status, leaseExpiry): expired leases for the reaper.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from shared.aws import aws_call, client, error_code, translate
from shared.config import Settings
from shared.errors import ConditionFailed
from shared.state import Status, Worker

log = logging.getLogger("workerpool.store")

HEARTBEAT_INDEX = "status-heartbeat-index"
LEASE_INDEX = "status-lease-index"
TTL_ATTRIBUTE = "expiresAt"

_ser = TypeSerializer()
_de = TypeDeserializer()


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, set):
        return {_plain(v) for v in value}
    return value


def _num(value: float) -> Decimal:
    return Decimal(str(round(value, 3)))


def unmarshal(item: dict[str, Any] | None) -> dict[str, Any] | None:
    if item is None:
        return None
    return {k: _plain(_de.deserialize(v)) for k, v in item.items()}


def marshal(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _ser.serialize(_num(v) if isinstance(v, float) else v) for k, v in values.items()
    }


def to_worker(item: dict[str, Any]) -> Worker:
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
    )


def request_key(user_id: str, request_id: str) -> str:
    return f"req#{user_id}#{request_id}"


def tombstone_key(instance_id: str) -> str:
    return f"gone#{instance_id}"


class RequestSeen(ConditionFailed):
    """This (user, request_id) already has an outcome: ``outcome`` holds it."""

    def __init__(self, outcome: dict[str, Any]) -> None:
        super().__init__("request already answered", outcome)
        self.outcome = outcome


class UserAtLimit(ConditionFailed):
    """The user already holds MAX_LEASES_PER_USER leases."""


class Store:
    """Named operations on the table. Thread-safe (boto3 clients are)."""

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Store:
        return cls(table=settings.table_name, region=settings.aws_region,
                   endpoint_url=settings.aws_endpoint_url, **kwargs)

    def __init__(self, *, table: str, region: str, endpoint_url: str | None = None,
                 dynamodb: Any = None) -> None:
        self.table = table
        self.db = dynamodb or client("dynamodb", region=region, endpoint_url=endpoint_url)
        self._region, self._endpoint = region, endpoint_url
        self._ping_client: Any = dynamodb

    # --- plumbing ---------------------------------------------------------------------
    def _update(self, key: str, update: str, values: dict[str, Any], *, condition: str,
                names: dict[str, str] | None = None, what: str) -> dict[str, Any]:
        # DynamoDB refuses a name the expressions do not use: #s only where it appears
        names = {**({"#s": "status"} if "#s" in update + condition else {}), **(names or {})}
        try:
            resp = self.db.update_item(
                TableName=self.table,
                Key={"instanceId": {"S": key}},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=marshal(values),
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise ConditionFailed(what, unmarshal(exc.response.get("Item"))) from None
            raise
        return unmarshal(resp["Attributes"]) or {}

    def _query(self, index: str, key_condition: str, values: dict[str, Any], *,
               filter_expression: str | None = None, limit: int | None = None,
               forward: bool = True, page_size: int = 100) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index,
            "KeyConditionExpression": key_condition,
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": marshal(values),
            "ScanIndexForward": forward,
            "Limit": page_size,
        }
        if filter_expression:
            kwargs["FilterExpression"] = filter_expression
        returned = 0
        while True:
            resp = aws_call(self.db.query)(**kwargs)
            for raw in resp.get("Items", []):
                yield unmarshal(raw)  # type: ignore[misc]
                returned += 1
                if limit is not None and returned >= limit:
                    return
            if "LastEvaluatedKey" not in resp:
                return
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    # --- reads ------------------------------------------------------------------------
    @aws_call
    def get(self, instance_id: str) -> Worker | None:
        resp = self.db.get_item(TableName=self.table, Key={"instanceId": {"S": instance_id}},
                                ConsistentRead=True)
        item = unmarshal(resp.get("Item"))
        return to_worker(item) if item and "status" in item else None

    def find_free(self, limit: int = 10, *, fresh_after: float | None = None) -> list[Worker]:
        """Free, healthy workers, freshest heartbeat first: one index Query, never a Scan.
        With ``fresh_after``, only those heard from since then (a silent worker is never
        handed out, even before the reaper marks it dead): the index is sorted on it."""
        if fresh_after is None:
            key, values = "#s = :free", {":free": "free", ":yes": True}
        else:
            key = "#s = :free AND lastHeartbeat > :fresh"
            values = {":free": "free", ":yes": True, ":fresh": fresh_after}
        items = self._query(
            HEARTBEAT_INDEX, key, values,
            filter_expression="healthy = :yes", limit=limit, forward=False,
            page_size=max(limit, 10),
        )
        return [to_worker(i) for i in items]

    def by_status(self, status: Status, *, heartbeat_before: float | None = None
                  ) -> list[Worker]:
        """Workers in ``status`` (optionally only those silent since ``heartbeat_before``)."""
        if heartbeat_before is None:
            items = self._query(HEARTBEAT_INDEX, "#s = :st", {":st": status})
        else:
            items = self._query(HEARTBEAT_INDEX, "#s = :st AND lastHeartbeat < :t",
                                {":st": status, ":t": heartbeat_before})
        return [to_worker(i) for i in items]

    def expired_leases(self, now: float) -> list[Worker]:
        items = self._query(LEASE_INDEX, "#s = :leased AND leaseExpiry <= :now",
                            {":leased": "leased", ":now": now})
        return [to_worker(i) for i in items]

    @aws_call
    def count(self, status: Status, *, healthy_only: bool = False) -> int:
        kwargs: dict[str, Any] = {
            "TableName": self.table, "IndexName": HEARTBEAT_INDEX, "Select": "COUNT",
            "KeyConditionExpression": "#s = :st", "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": marshal({":st": status}),
        }
        if healthy_only:
            kwargs["FilterExpression"] = "healthy = :yes"
            kwargs["ExpressionAttributeValues"] = marshal({":st": status, ":yes": True})
        total = 0
        while True:
            resp = self.db.query(**kwargs)
            total += resp["Count"]
            if "LastEvaluatedKey" not in resp:
                return total
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    @aws_call
    def all_workers(self) -> list[Worker]:
        """Every worker item (a paginated Scan): the reaper's occasional orphan sweep only."""
        out: list[Worker] = []
        kwargs: dict[str, Any] = {"TableName": self.table,
                                  "FilterExpression": "begins_with(instanceId, :i)",
                                  "ExpressionAttributeValues": {":i": {"S": "i-"}}}
        while True:
            resp = self.db.scan(**kwargs)
            out.extend(to_worker(unmarshal(i)) for i in resp.get("Items", []))  # type: ignore[arg-type]
            if "LastEvaluatedKey" not in resp:
                return out
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    # --- agent lifecycle --------------------------------------------------------------
    @aws_call
    def register(self, instance_id: str, *, now: float, private_ip: str | None,
                 public_ip: str | None, instance_type: str | None = None,
                 availability_zone: str | None = None, agent_version: str | None = None
                 ) -> Worker:
        """booting/unknown → free. A free or leased worker that registers again (agent
        restart, broker reconnect) keeps its status and gets its addresses refreshed; a
        draining or dead one stays as it is (ConditionFailed)."""
        values = {":free": "free", ":booting": "booting", ":now": now, ":pub": public_ip,
                  ":priv": private_ip, ":type": instance_type, ":az": availability_zone,
                  ":ver": agent_version}
        new = {"Update": {
            "TableName": self.table, "Key": {"instanceId": {"S": instance_id}},
            "UpdateExpression":
                "SET #s = :free, healthy = :yes, lastHeartbeat = :now, registeredAt = :now, "
                "leaseExpiry = :zero, userId = :null, publicIp = :pub, privateIp = :priv, "
                "instanceType = :type, availabilityZone = :az, agentVersion = :ver "
                "REMOVE requestId, reason",
            "ConditionExpression": "attribute_not_exists(instanceId) OR #s = :booting",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": marshal(
                {**values, ":yes": True, ":zero": 0, ":null": None}),
        }}
        # a recycled instance's agent may still speak while its VM shuts down: its
        # tombstone keeps it from coming back as a free worker with the last user's disk
        not_recycled = {"ConditionCheck": {
            "TableName": self.table, "Key": {"instanceId": {"S": tombstone_key(instance_id)}},
            "ConditionExpression": "attribute_not_exists(instanceId)"}}
        try:
            self.db.transact_write_items(TransactItems=[new, not_recycled])
            return Worker(instance_id=instance_id, status="free", last_heartbeat=now,
                          healthy=True, public_ip=public_ip, private_ip=private_ip,
                          instance_type=instance_type, availability_zone=availability_zone)
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                raise ConditionFailed("register: this instance was recycled") from None
            if not reasons or reasons[0] != "ConditionalCheckFailed":
                raise ConditionFailed("register: concurrent change, try again") from None
        # already known: a free or leased worker gets its addresses refreshed
        item = self._update(
            instance_id,
            "SET lastHeartbeat = :now, publicIp = :pub, privateIp = :priv, "
            "instanceType = :type, availabilityZone = :az, agentVersion = :ver",
            {k: v for k, v in values.items() if k != ":booting"} | {":leased": "leased"},
            condition="#s IN (:free, :leased)",
            what="register: worker is draining or dead",
        )
        return to_worker(item)

    @aws_call
    def heartbeat(self, instance_id: str, *, healthy: bool, now: float) -> Worker:
        """Record a heartbeat of a free or leased worker (ConditionFailed otherwise)."""
        item = self._update(
            instance_id, "SET lastHeartbeat = :now, healthy = :h",
            {":now": now, ":h": healthy, ":free": "free", ":leased": "leased"},
            condition="#s IN (:free, :leased) AND lastHeartbeat <= :now",
            what="heartbeat: not a free or leased worker (or an older heartbeat)",
        )
        return to_worker(item)

    @aws_call
    def deregister(self, instance_id: str, *, now: float, reason: str = "deregistered"
                   ) -> Worker:
        """Out of the free set at once: free/leased/booting → draining."""
        # An unknown instance gets a draining item too: a register processed after this
        # deregister (agent messages run on several threads) is then refused, and the
        # reaper recycles the instance (it is going away) or drops the item as an orphan.
        item = self._update(
            instance_id, "SET #s = :draining, reason = :r, drainedAt = :now, "
            "lastHeartbeat = if_not_exists(lastHeartbeat, :now), "
            "leaseExpiry = if_not_exists(leaseExpiry, :zero), "
            "healthy = if_not_exists(healthy, :no), userId = if_not_exists(userId, :null), "
            "publicIp = if_not_exists(publicIp, :null), "
            "privateIp = if_not_exists(privateIp, :null)",
            {":draining": "draining", ":r": reason, ":now": now, ":free": "free",
             ":leased": "leased", ":booting": "booting", ":zero": 0, ":no": False,
             ":null": None},
            condition="attribute_not_exists(instanceId) OR #s IN (:free, :leased, :booting)",
            what="deregister: already draining or dead",
        )
        return to_worker(item)

    @aws_call
    def track_booting(self, instance_id: str, *, now: float) -> bool:
        """Record an ASG instance that has not registered yet; False if already known."""
        try:
            self.db.put_item(
                TableName=self.table,
                Item=marshal({"instanceId": instance_id, "status": "booting", "healthy": False,
                              "lastHeartbeat": now, "firstSeen": now, "leaseExpiry": 0,
                              "userId": None, "publicIp": None, "privateIp": None}),
                ConditionExpression="attribute_not_exists(instanceId)",
            )
            return True
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise

    # --- leases -----------------------------------------------------------------------
    @aws_call
    def lease(self, worker: Worker, *, user_id: str, request_id: str, lease_seconds: int,
              now: float, max_leases: int, remember_seconds: int,
              fresh_after: float | None = None) -> Worker:
        """free → leased for this user, atomically with remembering the request and counting
        the user's leases. Raises ConditionFailed (worker taken), RequestSeen (request
        already answered) or UserAtLimit."""
        expiry = int(now + lease_seconds)
        # the addresses go with the outcome: a repeated request is answered from it even
        # after the worker's own item is gone (recycled)
        outcome = {"status": "assigned", "instance_id": worker.instance_id,
                   "public_ip": worker.public_ip, "private_ip": worker.private_ip,
                   "lease_expiry": expiry}
        condition = "#s = :free AND healthy = :yes"
        fresh = {}
        if fresh_after is not None:
            condition += " AND lastHeartbeat > :fresh"
            fresh = {":fresh": fresh_after}
        items = [
            {"Update": {
                "TableName": self.table, "Key": {"instanceId": {"S": worker.instance_id}},
                "UpdateExpression": "SET #s = :leased, userId = :u, leaseExpiry = :exp, "
                                    "requestId = :rid, leasedAt = :now",
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": marshal({
                    ":leased": "leased", ":u": user_id, ":exp": expiry, ":rid": request_id,
                    ":now": now, ":free": "free", ":yes": True, **fresh}),
            }},
            {"Put": {
                "TableName": self.table,
                "Item": marshal({"instanceId": request_key(user_id, request_id),
                                 "outcome": json.dumps(outcome), "createdAt": now,
                                 TTL_ATTRIBUTE: int(now + remember_seconds)}),
                "ConditionExpression": "attribute_not_exists(instanceId)",
            }},
            {"Update": {
                "TableName": self.table, "Key": {"instanceId": {"S": f"user#{user_id}"}},
                "UpdateExpression": "ADD instances :one",
                "ConditionExpression": "attribute_not_exists(instances) OR size(instances) < :max",
                "ExpressionAttributeValues": marshal({":one": {worker.instance_id},
                                                      ":max": max_leases}),
            }},
        ]
        try:
            self.db.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                seen = self.recall(user_id, request_id)
                if seen is not None:
                    raise RequestSeen(seen) from None
            if len(reasons) > 2 and reasons[2] == "ConditionalCheckFailed":
                raise UserAtLimit("user holds MAX_LEASES_PER_USER leases") from None
            if reasons and reasons[0] == "ConditionalCheckFailed":
                raise ConditionFailed("lease: worker no longer free") from None
            if "TransactionConflict" in reasons:
                raise ConditionFailed("lease: concurrent transaction") from None
            raise
        return Worker(**{**worker.__dict__, "status": "leased", "user_id": user_id,
                         "lease_expiry": float(expiry), "request_id": request_id})

    @aws_call
    def unlease(self, instance_id: str, *, user_id: str, request_id: str) -> None:
        """Undo a lease whose reply could not be delivered: leased → free, forget it."""
        try:
            self._update(
                instance_id, "SET #s = :free, leaseExpiry = :zero, userId = :null "
                "REMOVE requestId, leasedAt",
                {":free": "free", ":zero": 0, ":null": None, ":leased": "leased",
                 ":u": user_id, ":rid": request_id},
                condition="#s = :leased AND userId = :u AND requestId = :rid",
                what="unlease: lease changed meanwhile",
            )
        finally:
            self.forget_lease(instance_id, user_id=user_id, request_id=request_id)

    @aws_call
    def forget_lease(self, instance_id: str, *, user_id: str, request_id: str) -> None:
        """Forget a lease's bookkeeping (the user's count, the request's outcome), leaving the
        worker's item alone: after an undo, or when the lease turned out not to be ours."""
        self.forget_user_instance(user_id, instance_id)
        self.db.delete_item(TableName=self.table,
                            Key={"instanceId": {"S": request_key(user_id, request_id)}})

    def holds(self, instance_id: str, *, user_id: str, request_id: str) -> bool:
        """Whether the worker's item (read consistently) is leased for this request."""
        w = self.get(instance_id)
        return (w is not None and w.status == "leased" and w.user_id == user_id
                and w.request_id == request_id)

    @aws_call
    def abandon(self, instance_id: str, *, user_id: str, request_id: str, now: float,
                reason: str) -> None:
        """Give up a lease just made, without handing the worker back: leased → draining
        (the reaper recycles it: e.g. its code-server is in an unknown state), and forget
        the request's outcome and the user's count, so the claim can lease another worker."""
        try:
            self._update(
                instance_id, "SET #s = :draining, reason = :r, drainedAt = :now",
                {":draining": "draining", ":r": reason, ":now": now, ":leased": "leased",
                 ":u": user_id, ":rid": request_id},
                condition="#s = :leased AND userId = :u AND requestId = :rid",
                what="abandon: lease changed meanwhile",
            )
        finally:
            self.forget_lease(instance_id, user_id=user_id, request_id=request_id)

    def user_leases(self, user_id: str) -> list[Worker]:
        """Workers currently leased to this user (consistent reads; self-healing set)."""
        resp = aws_call(self.db.get_item)(
            TableName=self.table, Key={"instanceId": {"S": f"user#{user_id}"}},
            ConsistentRead=True)
        ids = (unmarshal(resp.get("Item")) or {}).get("instances") or set()
        held = []
        for iid in sorted(ids):
            w = self.get(iid)
            if w is not None and w.status == "leased" and w.user_id == user_id:
                held.append(w)
            else:
                self.forget_user_instance(user_id, iid)
        return held

    @aws_call
    def forget_user_instance(self, user_id: str | None, instance_id: str) -> None:
        if not user_id:
            return
        self.db.update_item(
            TableName=self.table, Key={"instanceId": {"S": f"user#{user_id}"}},
            UpdateExpression="DELETE instances :one",
            ExpressionAttributeValues=marshal({":one": {instance_id}}),
        )

    @aws_call
    def renew(self, instance_id: str, *, user_id: str, lease_seconds: int, now: float
              ) -> Worker:
        """A live lease of this user → leaseExpiry = now + lease_seconds."""
        item = self._update(
            instance_id, "SET leaseExpiry = :exp, renewedAt = :now",
            {":exp": int(now + lease_seconds), ":now": now, ":leased": "leased",
             ":u": user_id},
            condition="#s = :leased AND userId = :u AND leaseExpiry > :now",
            what="renew: no live lease of this user",
        )
        return to_worker(item)

    @aws_call
    def release(self, instance_id: str, *, user_id: str, now: float) -> Worker:
        """This user's lease → draining (the reaper recycles the instance)."""
        item = self._update(
            instance_id, "SET #s = :draining, reason = :r, drainedAt = :now",
            {":draining": "draining", ":r": "released", ":now": now, ":leased": "leased",
             ":u": user_id},
            condition="#s = :leased AND userId = :u",
            what="release: no lease of this user",
        )
        self.forget_user_instance(user_id, instance_id)
        return to_worker(item)

    # --- reaper -----------------------------------------------------------------------
    @aws_call
    def expire(self, worker: Worker, *, now: float) -> Worker:
        """leased → draining, only if the lease is still the one seen and has expired (a
        renew that landed meanwhile wins)."""
        item = self._update(
            worker.instance_id, "SET #s = :draining, reason = :r, drainedAt = :now",
            {":draining": "draining", ":r": "expired", ":now": now, ":leased": "leased",
             ":exp": worker.lease_expiry},
            condition="#s = :leased AND leaseExpiry = :exp AND leaseExpiry <= :now",
            what="expire: lease renewed or released meanwhile",
        )
        self.forget_user_instance(worker.user_id, worker.instance_id)
        return to_worker(item)

    @aws_call
    def mark_dead(self, worker: Worker, *, now: float) -> Worker:
        """free/leased/booting → dead, only if no heartbeat landed since the one seen."""
        item = self._update(
            worker.instance_id, "SET #s = :dead, reason = :r, diedAt = :now",
            {":dead": "dead", ":r": f"was {worker.status}", ":now": now,
             ":st": worker.status, ":hb": worker.last_heartbeat},
            condition="#s = :st AND lastHeartbeat = :hb",
            what="mark_dead: heartbeat or status changed meanwhile",
        )
        self.forget_user_instance(worker.user_id, worker.instance_id)
        return to_worker(item)

    @aws_call
    def drain_free(self, worker: Worker, *, now: float, reason: str) -> Worker:
        """free → draining (surplus scale-in), only if still free."""
        item = self._update(
            worker.instance_id, "SET #s = :draining, reason = :r, drainedAt = :now",
            {":draining": "draining", ":r": reason, ":now": now, ":free": "free"},
            condition="#s = :free",
            what="drain_free: no longer free",
        )
        return to_worker(item)

    @aws_call
    def confirm_recyclable(self, instance_id: str, *, now: float) -> Worker:
        """The last write before a terminate: fails unless the worker is draining, dead or
        booting-too-long (never free or leased), so nothing live is ever terminated."""
        item = self._update(
            instance_id, "SET recycleStartedAt = :now",
            {":now": now, ":draining": "draining", ":dead": "dead", ":booting": "booting"},
            condition="#s IN (:draining, :dead, :booting)",
            what="recycle: worker is live again",
        )
        return to_worker(item)

    @aws_call
    def tombstone(self, instance_id: str, *, now: float, keep_seconds: int = 86400) -> None:
        """Remember that this instance was recycled: it may never register again."""
        self.db.put_item(TableName=self.table, Item=marshal({
            "instanceId": tombstone_key(instance_id), "recycledAt": now,
            TTL_ATTRIBUTE: int(now + keep_seconds)}))

    @aws_call
    def remove(self, instance_id: str, *, only_if_status: tuple[str, ...] | None = None
               ) -> bool:
        """Delete a worker item (optionally only in these statuses); False if it was gone."""
        kwargs: dict[str, Any] = {"TableName": self.table,
                                  "Key": {"instanceId": {"S": instance_id}},
                                  "ReturnValues": "ALL_OLD"}
        if only_if_status:
            names = {f":s{i}": s for i, s in enumerate(only_if_status)}
            kwargs["ConditionExpression"] = f"#s IN ({', '.join(names)})"
            kwargs["ExpressionAttributeNames"] = {"#s": "status"}
            kwargs["ExpressionAttributeValues"] = marshal(names)
        try:
            resp = self.db.delete_item(**kwargs)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise ConditionFailed("remove: status changed meanwhile") from None
            raise
        return "Attributes" in resp

    # --- remembered requests ----------------------------------------------------------
    @aws_call
    def recall(self, user_id: str, request_id: str) -> dict[str, Any] | None:
        resp = self.db.get_item(TableName=self.table,
                                Key={"instanceId": {"S": request_key(user_id, request_id)}},
                                ConsistentRead=True)
        item = unmarshal(resp.get("Item"))
        return json.loads(item["outcome"]) if item else None

    @aws_call
    def remember(self, user_id: str, request_id: str, outcome: dict[str, Any], *,
                 now: float, remember_seconds: int) -> dict[str, Any]:
        """Store an outcome unless one exists; returns the outcome that stands."""
        try:
            self.db.put_item(
                TableName=self.table,
                Item=marshal({"instanceId": request_key(user_id, request_id),
                              "outcome": json.dumps(outcome), "createdAt": now,
                              TTL_ATTRIBUTE: int(now + remember_seconds)}),
                ConditionExpression="attribute_not_exists(instanceId)",
            )
            return outcome
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
        return self.recall(user_id, request_id) or outcome

    # --- locks ------------------------------------------------------------------------
    @aws_call
    def acquire_lock(self, name: str, *, owner: str, ttl: float, now: float
                     ) -> dict[str, Any] | None:
        """Take or keep ``lock#name`` for ``ttl`` seconds: the lock item (with any notes an
        earlier holder left on it, see ``note_lock``), or None if another owner holds it."""
        try:
            return self._update(
                f"lock#{name}", "SET #o = :me, lockedUntil = :until",
                {":me": owner, ":until": now + ttl, ":now": now},
                condition="attribute_not_exists(#o) OR #o = :me OR lockedUntil < :now",
                names={"#o": "owner"}, what="lock held by another owner")
        except ConditionFailed:
            return None

    @aws_call
    def note_lock(self, name: str, *, owner: str, notes: dict[str, Any]) -> bool:
        """Leave ``notes`` (attribute → value) on ``lock#name`` for whoever holds it next;
        only the holder may. False if we no longer hold it."""
        names = {f"#n{i}": key for i, key in enumerate(notes)}
        values = {f":n{i}": value for i, value in enumerate(notes.values())}
        try:
            self._update(
                f"lock#{name}", "SET " + ", ".join(f"#n{i} = :n{i}" for i in range(len(notes))),
                {":me": owner, **values}, condition="#o = :me", names={"#o": "owner", **names},
                what="lock no longer ours")
            return True
        except ConditionFailed:
            return False

    @aws_call
    def release_lock(self, name: str, *, owner: str) -> None:
        """Give the lock up at once (its notes stay for the next holder)."""
        try:
            self._update(f"lock#{name}", "REMOVE #o, lockedUntil", {":me": owner},
                         condition="#o = :me", names={"#o": "owner"},
                         what="lock no longer ours")
        except ConditionFailed:
            pass  # another replica took it over meanwhile: nothing to give up

    # --- schema -----------------------------------------------------------------------
    @aws_call
    def create_table(self) -> bool:
        """Create the table and its indexes if absent (idempotent). True if created."""
        try:
            self.db.describe_table(TableName=self.table)
            return False
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
        gsi = [
            {"IndexName": name, "Projection": {"ProjectionType": "ALL"},
             "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"},
                           {"AttributeName": sort, "KeyType": "RANGE"}]}
            for name, sort in ((HEARTBEAT_INDEX, "lastHeartbeat"), (LEASE_INDEX, "leaseExpiry"))
        ]
        try:
            self.db.create_table(
                TableName=self.table,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[
                    {"AttributeName": "instanceId", "AttributeType": "S"},
                    {"AttributeName": "status", "AttributeType": "S"},
                    {"AttributeName": "lastHeartbeat", "AttributeType": "N"},
                    {"AttributeName": "leaseExpiry", "AttributeType": "N"},
                ],
                KeySchema=[{"AttributeName": "instanceId", "KeyType": "HASH"}],
                GlobalSecondaryIndexes=gsi,
            )
        except ClientError as exc:
            if error_code(exc) == "ResourceInUseException":  # created concurrently
                return False
            raise
        self.db.get_waiter("table_exists").wait(TableName=self.table,
                                                WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        try:
            self.db.update_time_to_live(
                TableName=self.table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE})
        except ClientError as exc:  # TTL is housekeeping only: rules compare times themselves
            log.warning("could not enable TTL", extra={"error": str(exc)})
        return True

    def ping(self) -> None:
        """One quick DescribeTable for /health: no retries, short timeouts, so a health
        check answers in about a second even when AWS does not."""
        if self._ping_client is None:
            self._ping_client = client("dynamodb", region=self._region,
                                       endpoint_url=self._endpoint, quick=True)
        try:
            self._ping_client.describe_table(TableName=self.table)
        except Exception as exc:
            raise translate(exc) from exc
