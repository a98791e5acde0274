"""The DynamoDB layer over the table of PROTOCOL §5, by kind of item.

``Store`` holds one client and one ``Table`` (its single, retried requests) and offers the
items by kind: ``workers`` (register, heartbeat, find free, status changes), ``leases``
(lease, renew, release, expire, undo, the per-user sets), ``requests`` (remembered
outcomes) and ``locks`` (one active replica). ``schema`` says what the table looks like.
This package and shared.asg are the only ones that import boto3.
"""

from __future__ import annotations

from typing import Any

from shared.aws import QUICK, STANDARD, CallPolicy, Reachability, client, translate
from shared.config import Settings
from shared.store.heartbeats import BatchedHeartbeats
from shared.store.leases import Leases, RequestSeen, UserAtLimit
from shared.store.locks import Locks
from shared.store.requests import Requests
from shared.store.schema import create_table
from shared.store.table import Table
from shared.store.workers import KeyMismatch, Workers

__all__ = ["KeyMismatch", "Leases", "Locks", "RequestSeen", "Requests", "Store", "UserAtLimit",
           "Workers"]


class Store:
    """The table's items by kind. Thread-safe (boto3 clients are)."""

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Store:
        """``policy=FAST`` for a process with deadlines (the dispatcher). The endpoint is
        botocore's to resolve (``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_ENDPOINT_URL``)."""
        return cls(table=settings.table_name, region=settings.aws_region, **kwargs)

    def __init__(self, *, table: str, region: str, endpoint_url: str | None = None,
                 dynamodb: Any = None, policy: CallPolicy = STANDARD) -> None:
        self.db = dynamodb or client("dynamodb", region=region, endpoint_url=endpoint_url,
                                     policy=policy)
        self.table = Table(name=table, dynamodb=self.db, policy=policy)
        self.workers = Workers(self.table)
        self.requests = Requests(self.table)
        self.leases = Leases(self.table, self.requests)
        self.locks = Locks(self.table)
        self.heartbeats = BatchedHeartbeats(self.table)  # healthy ones, 25 per request
        self._region, self._endpoint = region, endpoint_url
        self._own_client = dynamodb is None
        self._ping_client: Any = dynamodb
        self._quick: Store | None = None

    def create_table(self) -> bool:
        """Create the table and its indexes if absent (idempotent). True if created."""
        return create_table(self.db, self.table.name)

    @property
    def reachability(self) -> Reachability:
        """Whether DynamoDB answered our last request."""
        return self.table.reachability

    def quick(self) -> Store:
        """The same table through one short try per request (QUICK): for what must not wait
        on an unreachable DynamoDB (a claim's answer at its deadline, a health probe)."""
        if self._quick is None:
            self._quick = Store(table=self.table.name, region=self._region,
                                endpoint_url=self._endpoint, policy=QUICK,
                                dynamodb=None if self._own_client else self.db)
            self._quick.table.reachability = self.table.reachability
        return self._quick

    def ping(self) -> None:
        """One quick DescribeTable for /health: no retries, short timeouts, so a health
        check answers in about a second even when AWS does not."""
        if self._ping_client is None:
            self._ping_client = client("dynamodb", region=self._region,
                                       endpoint_url=self._endpoint, policy=QUICK)
        try:
            self._ping_client.describe_table(TableName=self.table.name)
        except Exception as exc:
            raise translate(exc) from exc
