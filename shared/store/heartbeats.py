"""Heartbeats written in batches: one BatchExecuteStatement of up to 25 PartiQL UPDATEs.

A heartbeat is the pool's bulk write (10,000 agents at one per 15 s are 667 a second), and
one UpdateItem through boto3 costs about 1.4 ms of CPU on its own: more than the rest of a
heartbeat's handling. A batch of 25 costs about 0.1 ms a heartbeat (measured against
DynamoDB Local, bench/heartbeats.py). Each statement keeps the single write's condition (a
free or leased worker, and no newer heartbeat written), succeeds or fails on its own, and
costs the same write units as an UpdateItem (a transaction would cost twice).

moto answers a PartiQL UPDATE without applying it, so whether the table applies them is
probed once (a probe item, never an ``i-`` key) and, where it does not, each heartbeat is an
UpdateItem as before. IAM: ``dynamodb:PartiQLUpdate`` on the table.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from shared.aws import aws_call, translate
from shared.errors import AwsUnavailable
from shared.store.table import Table, key, marshal

log = logging.getLogger(__name__)

#: BatchExecuteStatement's limit.
BATCH = 25
PROBE_KEY = "probe#partiql"
#: After a probe DynamoDB did not answer, heartbeats go one by one this long before the next.
PROBE_AGAIN_SECONDS = 30.0

Result = Literal["written", "refused", "failed"]


@dataclass(frozen=True)
class Beat:
    """One instance's heartbeat to write: ``at`` becomes its lastHeartbeat."""

    instance_id: str
    healthy: bool
    at: float
    last_activity: float | None = None


def statement(table: str, beat: Beat) -> dict[str, Any]:
    """The PartiQL UPDATE of one healthy heartbeat (the same condition as UpdateItem's)."""
    sets = "SET lastHeartbeat=? SET healthy=?"
    params: list[Any] = [beat.at, True]
    if beat.last_activity is not None:
        sets += " SET lastActivity=?"
        params.append(beat.last_activity)
    text = (f'UPDATE "{table}" {sets} REMOVE unhealthySince WHERE instanceId=? '
            "AND \"status\" IN ['free','leased'] AND lastHeartbeat<=?")
    params += [beat.instance_id, beat.at]
    return {"Statement": text, "Parameters": [marshal({"v": p})["v"] for p in params]}


def results(responses: list[dict[str, Any]]) -> list[Result]:
    """Each statement's fate: written, refused by its condition, or failed (throttled...)."""
    out: list[Result] = []
    for r in responses:
        code = (r.get("Error") or {}).get("Code")
        out.append("written" if code is None else
                   "refused" if code == "ConditionalCheckFailed" else "failed")
    return out


class _Unsupported(Exception):
    """The probe's statement failed inside the service."""


class BatchedHeartbeats:
    """Thread-safe."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self._applies: bool | None = None  # whether this table applies PartiQL UPDATEs
        self._probe_after = float("-inf")
        self._lock = threading.Lock()

    @property
    def policy(self) -> Any:  # aws_call reads the table's call policy and reachability
        return self.table.policy

    @property
    def reachability(self) -> Any:
        return self.table.reachability

    def available(self) -> bool:
        """Whether batches apply here (probed once; moto's PartiQL does not). While DynamoDB
        does not answer, False, and the probe is tried again PROBE_AGAIN_SECONDS later (a
        probe is four requests: not for every batch of a struggling table)."""
        with self._lock:
            if self._applies is None and time.monotonic() >= self._probe_after:
                self._applies = self._probe()
                self._probe_after = time.monotonic() + PROBE_AGAIN_SECONDS
            return bool(self._applies)

    def write(self, beats: list[Beat]) -> list[Result]:
        """Healthy heartbeats (at most BATCH, distinct instances), in one request.
        AwsUnavailable when DynamoDB does not answer."""
        return results(self._execute([statement(self.table.name, b) for b in beats]))

    @aws_call
    def _execute(self, statements: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(self.table.db.batch_execute_statement(Statements=statements)["Responses"])

    def _probe(self) -> bool | None:
        db, name = self.table.db, self.table.name
        try:
            try:
                db.put_item(TableName=name, Item=marshal(
                    {"instanceId": PROBE_KEY, "status": "free", "lastHeartbeat": 0}))
                db.batch_execute_statement(Statements=[statement(name, Beat(PROBE_KEY, True,
                                                                            1.0))])
                item = db.get_item(TableName=name, Key=key(PROBE_KEY), ConsistentRead=True)
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
                    # an emulator that cannot parse the statement (the moto server) fails
                    # inside: no table that applies PartiQL would (botocore retried it)
                    raise _Unsupported(str(exc)) from exc
                raise translate(exc) from exc
            except BotoCoreError as exc:
                raise translate(exc) from exc
            finally:
                self._forget_probe()
        except AwsUnavailable:
            return None  # not known yet
        except Exception as exc:  # AwsError: e.g. no dynamodb:PartiQLUpdate in the policy;
            # anything else: an emulator that cannot parse the statement (in-process moto)
            log.warning("heartbeats are written one by one: PartiQL batches are refused",
                        extra={"error": str(exc)[:300]})
            return False
        applied = item.get("Item", {}).get("lastHeartbeat", {}).get("N") == "1"
        log.info("heartbeats are written in batches" if applied else
                 "heartbeats are written one by one: this DynamoDB does not apply PartiQL "
                 "updates (moto)", extra={"partiql": applied})
        return applied

    def _forget_probe(self) -> None:
        try:
            self.table.db.delete_item(TableName=self.table.name, Key=key(PROBE_KEY))
        except (ClientError, BotoCoreError):
            log.debug("probe item not deleted (the next probe puts it again)")
