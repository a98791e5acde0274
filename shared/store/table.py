"""One DynamoDB table and its single requests: the only place the store talks to boto3.

Every method here is ONE request, retried on its own while AWS is unreachable (``aws_call``:
jittered backoff, a few tries, then ``AwsUnavailable``). Operations of several requests
(shared.store.leases, .workers) are sequences of these, each step idempotent, so a failure
half-way never makes an earlier step run again (issue 12: a retried multi-write method used to
replay its first write, lose its own condition and report a race it had won).

A conditional write that loses its condition raises ``ConditionFailed`` carrying the item as
it was (``ReturnValuesOnConditionCheckFailure=ALL_OLD``): a normal, typed result.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from shared.aws import STANDARD, CallPolicy, Reachability, aws_call, error_code
from shared.errors import AwsUnavailable, ConditionFailed

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


def unmarshal(item: dict[str, Any] | None) -> dict[str, Any] | None:
    """A DynamoDB item (typed attribute values) → plain Python values (None stays None)."""
    if item is None:
        return None
    return {k: _plain(_de.deserialize(v)) for k, v in item.items()}


def marshal(values: dict[str, Any]) -> dict[str, Any]:
    """Plain values → DynamoDB attribute values (floats to milliseconds, as Decimals)."""
    return {k: _ser.serialize(Decimal(str(round(v, 3))) if isinstance(v, float) else v)
            for k, v in values.items()}


def key(value: str) -> dict[str, Any]:
    return {"instanceId": {"S": value}}


class TransactionCancelled(Exception):
    """A TransactWriteItems was cancelled; ``reasons`` holds one code per item (DynamoDB's
    CancellationReasons: ``None``, ``ConditionalCheckFailed``, ``TransactionConflict``...)."""

    def __init__(self, reasons: list[str | None]) -> None:
        super().__init__(f"transaction cancelled: {reasons}")
        self.reasons = reasons

    def failed(self, index: int) -> bool:
        return len(self.reasons) > index and self.reasons[index] == "ConditionalCheckFailed"


class Table:
    """Single requests on one table. Thread-safe (boto3 clients are). ``policy`` bounds each
    request's time and tries (shared.aws); ``reachability`` says whether DynamoDB answered
    the last one."""

    def __init__(self, *, name: str, dynamodb: Any, policy: CallPolicy = STANDARD,
                 reachability: Reachability | None = None) -> None:
        self.name = name
        self.db = dynamodb
        self.policy = policy
        self.reachability = reachability or Reachability("DynamoDB")

    @aws_call
    def _request(self, call: Any, **kwargs: Any) -> Any:
        """One request of a paginated read (each page is retried on its own)."""
        return call(**kwargs)

    @aws_call
    def get(self, item_key: str) -> dict[str, Any] | None:
        """One item, read consistently (it feeds a decision)."""
        resp = self.db.get_item(TableName=self.name, Key=key(item_key), ConsistentRead=True)
        return unmarshal(resp.get("Item"))

    @aws_call
    def update(self, item_key: str, update: str, values: dict[str, Any], *, condition: str,
               names: dict[str, str] | None = None, what: str) -> dict[str, Any]:
        """A conditional UpdateItem; the item after it, or ConditionFailed(what, old item)."""
        # DynamoDB refuses a name the expressions do not use: #s only where it appears
        names = {**({"#s": "status"} if "#s" in update + condition else {}), **(names or {})}
        kwargs: dict[str, Any] = {"ExpressionAttributeNames": names} if names else {}
        try:
            resp = self.db.update_item(
                TableName=self.name, Key=key(item_key), UpdateExpression=update,
                ConditionExpression=condition, ExpressionAttributeValues=marshal(values),
                ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD", **kwargs)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise ConditionFailed(what, unmarshal(exc.response.get("Item"))) from None
            raise
        if "Attributes" not in resp:  # a cut connection's empty answer, never DynamoDB's
            raise AwsUnavailable("DynamoDB answered an update without the item")
        return unmarshal(resp["Attributes"]) or {}

    @aws_call
    def update_unconditionally(self, item_key: str, update: str, values: dict[str, Any]
                               ) -> None:
        """An UpdateItem that cannot fail its own way (e.g. removing a member of a set)."""
        self.db.update_item(TableName=self.name, Key=key(item_key), UpdateExpression=update,
                            ExpressionAttributeValues=marshal(values))

    @aws_call
    def put_new(self, item: dict[str, Any]) -> bool:
        """PutItem only if no item has this key; False if one has."""
        try:
            self.db.put_item(TableName=self.name, Item=marshal(item),
                             ConditionExpression="attribute_not_exists(instanceId)")
            return True
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise

    @aws_call
    def put(self, item: dict[str, Any]) -> None:
        self.db.put_item(TableName=self.name, Item=marshal(item))

    @aws_call
    def delete(self, item_key: str, *, only_if_status: tuple[str, ...] | None = None
               ) -> bool:
        """DeleteItem (optionally only in these statuses: else ConditionFailed); False if
        there was nothing to delete."""
        kwargs: dict[str, Any] = {"TableName": self.name, "Key": key(item_key),
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
                raise ConditionFailed("delete: status changed meanwhile") from None
            raise
        return "Attributes" in resp

    @aws_call
    def transact(self, items: list[dict[str, Any]], *, token: str | None = None) -> None:
        """One TransactWriteItems (each item's TableName is filled in); a cancelled one
        raises TransactionCancelled with DynamoDB's reason per item. With ``token`` (a
        ClientRequestToken), a retry of the same request within 10 minutes is idempotent."""
        for item in items:
            next(iter(item.values()))["TableName"] = self.name
        extra = {"ClientRequestToken": token} if token else {}
        try:
            self.db.transact_write_items(TransactItems=items, **extra)
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            raise TransactionCancelled([None if r == "None" else r for r in reasons]) from None

    def query(self, index: str, key_condition: str, values: dict[str, Any], *,
              filter_expression: str | None = None, limit: int | None = None,
              forward: bool = True, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Items of an index query, page by page (each page one retried request)."""
        kwargs: dict[str, Any] = {
            "TableName": self.name, "IndexName": index,
            "KeyConditionExpression": key_condition,
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": marshal(values),
            "ScanIndexForward": forward, "Limit": page_size,
        }
        if filter_expression:
            kwargs["FilterExpression"] = filter_expression
        returned = 0
        while True:
            resp = self._request(self.db.query, **kwargs)
            for raw in resp.get("Items", []):
                yield unmarshal(raw)  # type: ignore[misc]
                returned += 1
                if limit is not None and returned >= limit:
                    return
            if "LastEvaluatedKey" not in resp:
                return
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def count(self, index: str, key_condition: str, values: dict[str, Any], *,
              filter_expression: str | None = None) -> int:
        """How many items an index query matches (Select COUNT, page by page)."""
        kwargs: dict[str, Any] = {
            "TableName": self.name, "IndexName": index, "Select": "COUNT",
            "KeyConditionExpression": key_condition,
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": marshal(values),
        }
        if filter_expression:
            kwargs["FilterExpression"] = filter_expression
        total = 0
        while True:
            resp = self._request(self.db.query, **kwargs)
            total += resp["Count"]
            if "LastEvaluatedKey" not in resp:
                return total
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def scan_prefix(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Every item whose key starts with ``prefix`` (a paginated Scan: rare sweeps only)."""
        kwargs: dict[str, Any] = {"TableName": self.name,
                                  "FilterExpression": "begins_with(instanceId, :p)",
                                  "ExpressionAttributeValues": {":p": {"S": prefix}}}
        while True:
            resp = self._request(self.db.scan, **kwargs)
            for raw in resp.get("Items", []):
                yield unmarshal(raw)  # type: ignore[misc]
            if "LastEvaluatedKey" not in resp:
                return
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
