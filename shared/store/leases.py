"""Leases: a free worker leased to a user (one transaction), renewed, released, expired or
undone; and the set of instances each user holds (``user#<user>``).

An operation of several writes is a sequence of single, individually retried, idempotent
steps (never a retried block): e.g. ``expire`` is the worker's conditional update, then the
user's set loses the instance; if that second step fails, the lease is still expired, and
the set heals itself on its next read (``held_by`` drops what is no longer leased).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from shared.errors import AwsError, AwsUnavailable, ConditionFailed
from shared.state import Worker
from shared.store.requests import Requests, outcome_item
from shared.store.schema import LEASE_INDEX, to_worker, user_key
from shared.store.table import Table, TransactionCancelled, key, marshal

log = logging.getLogger(__name__)


class RequestSeen(ConditionFailed):
    """This (user, request_id) already has an outcome: ``outcome`` holds it."""

    def __init__(self, outcome: dict[str, Any]) -> None:
        super().__init__("request already answered", outcome)
        self.outcome = outcome


class UserAtLimit(ConditionFailed):
    """The user already holds MAX_LEASES_PER_USER leases."""


class Leases:
    def __init__(self, table: Table, requests: Requests) -> None:
        self.table = table
        self.requests = requests

    # --- reads --------------------------------------------------------------------------
    def expired(self, now: float) -> list[Worker]:
        items = self.table.query(LEASE_INDEX, "#s = :leased AND leaseExpiry <= :now",
                                 {":leased": "leased", ":now": now})
        return [to_worker(i) for i in items]

    def held_by(self, user_id: str) -> list[Worker]:
        """Workers currently leased to this user (consistent reads). The user's set heals
        itself: an instance in it that is no longer this user's lease is dropped."""
        ids = (self.table.get(user_key(user_id)) or {}).get("instances") or set()
        held = []
        for iid in sorted(ids):
            item = self.table.get(iid)
            w = to_worker(item) if item and "status" in item else None
            if w is not None and w.status == "leased" and w.user_id == user_id:
                held.append(w)
            else:
                self.forget_user(user_id, iid)
        return held

    # --- a new lease --------------------------------------------------------------------
    def grant(self, worker: Worker, *, user_id: str, request_id: str, lease_seconds: int,
              now: float, max_leases: int, remember_seconds: int,
              fresh_after: float | None = None, reply_key: str | None = None) -> Worker:
        """free → leased for this user, atomically with remembering the request and counting
        the user's leases (one transaction). Raises ConditionFailed (worker taken),
        RequestSeen (request already answered) or UserAtLimit."""
        expiry = int(now + lease_seconds)
        # the addresses go with the outcome: a repeated request is answered from it even
        # after the worker's own item is gone (recycled)
        outcome = {"status": "assigned", "instance_id": worker.instance_id,
                   "public_ip": worker.public_ip, "private_ip": worker.private_ip,
                   "lease_expiry": expiry, "tls_fingerprint": worker.tls_fingerprint,
                   "reply": reply_key}
        try:
            self.table.transact([
                self._take(worker, user_id, request_id, expiry, now, fresh_after),
                {"Put": {"Item": marshal(outcome_item(user_id, request_id, outcome, now=now,
                                                      remember_seconds=remember_seconds)),
                         "ConditionExpression": "attribute_not_exists(instanceId)"}},
                {"Update": {
                    "Key": key(user_key(user_id)), "UpdateExpression": "ADD instances :one",
                    "ConditionExpression":
                        "attribute_not_exists(instances) OR size(instances) < :max",
                    "ExpressionAttributeValues": marshal({":one": {worker.instance_id},
                                                          ":max": max_leases})}},
            ], token=_token(worker.instance_id, user_id, request_id, now))
        except TransactionCancelled as exc:
            raise self._why_not(exc, user_id, request_id) from None
        return Worker(**{**worker.__dict__, "status": "leased", "user_id": user_id,
                         "lease_expiry": float(expiry), "request_id": request_id})

    @staticmethod
    def _take(worker: Worker, user_id: str, request_id: str, expiry: int, now: float,
              fresh_after: float | None) -> dict[str, Any]:
        condition = "#s = :free AND healthy = :yes"
        values: dict[str, Any] = {":leased": "leased", ":u": user_id, ":exp": expiry,
                                  ":rid": request_id, ":now": now, ":free": "free",
                                  ":yes": True}
        if fresh_after is not None:
            condition += " AND lastHeartbeat > :fresh"
            values[":fresh"] = fresh_after
        return {"Update": {
            "Key": key(worker.instance_id),
            "UpdateExpression": "SET #s = :leased, userId = :u, leaseExpiry = :exp, "
                                "requestId = :rid, leasedAt = :now",
            "ConditionExpression": condition, "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": marshal(values)}}

    def _why_not(self, exc: TransactionCancelled, user_id: str, request_id: str
                 ) -> ConditionFailed:
        """Which condition cancelled the lease (read only now, to say why)."""
        if exc.failed(1):
            seen = self.requests.recall(user_id, request_id)
            if seen is not None:
                return RequestSeen(seen)
        if exc.failed(2):
            return UserAtLimit("user holds MAX_LEASES_PER_USER leases")
        if exc.failed(0):
            return ConditionFailed("lease: worker no longer free")
        return ConditionFailed(f"lease: concurrent transaction ({exc.reasons})")

    # --- the holder's requests ------------------------------------------------------------
    def renew(self, instance_id: str, *, user_id: str, lease_seconds: int, now: float
              ) -> Worker:
        """A live lease of this user → leaseExpiry = now + lease_seconds."""
        item = self.table.update(
            instance_id, "SET leaseExpiry = :exp, renewedAt = :now",
            {":exp": int(now + lease_seconds), ":now": now, ":leased": "leased",
             ":u": user_id},
            condition="#s = :leased AND userId = :u AND leaseExpiry > :now",
            what="renew: no live lease of this user",
        )
        return to_worker(item)

    def release(self, instance_id: str, *, user_id: str, now: float) -> Worker:
        """This user's lease → draining (the reaper recycles the instance), then the user's
        set loses it."""
        item = self._end(instance_id, "released", now, condition="#s = :leased AND userId = :u",
                         values={":u": user_id}, what="release: no lease of this user")
        self._tidy_user(user_id, instance_id)
        return item

    def expire(self, worker: Worker, *, now: float) -> Worker:
        """leased → draining, only if the lease is still the one seen and has expired (a
        renew that landed meanwhile wins), then the user's set loses it."""
        item = self._end(worker.instance_id, "expired", now,
                         condition="#s = :leased AND leaseExpiry = :exp AND leaseExpiry <= :now",
                         values={":exp": worker.lease_expiry},
                         what="expire: lease renewed or released meanwhile")
        self._tidy_user(worker.user_id, worker.instance_id)
        return item

    def _end(self, instance_id: str, reason: str, now: float, *, condition: str,
             values: dict[str, Any], what: str) -> Worker:
        item = self.table.update(
            instance_id, "SET #s = :draining, reason = :r, drainedAt = :now",
            {":draining": "draining", ":r": reason, ":now": now, ":leased": "leased",
             **values}, condition=condition, what=what)
        return to_worker(item)

    # --- undoing a lease just made --------------------------------------------------------
    def undo(self, instance_id: str, *, user_id: str, request_id: str, now: float,
             outcome: dict[str, Any], remember_seconds: int) -> None:
        """Give up a lease whose reply could not be delivered, without ever freeing the
        worker (a retry of the request may have been told ``assigned`` meanwhile, by another
        dispatcher): leased → draining (the reaper recycles it), the user's count forgotten,
        and the request's outcome replaced by ``outcome`` (so a repeat is told the truth).
        A lease that changed meanwhile is left alone (ConditionFailed)."""
        self.table.update(
            instance_id, "SET #s = :draining, reason = :r, drainedAt = :now",
            {":draining": "draining", ":r": "reply undeliverable", ":now": now,
             ":leased": "leased", ":u": user_id, ":rid": request_id},
            condition="#s = :leased AND userId = :u AND requestId = :rid",
            what="undo: lease changed meanwhile")
        self._tidy_user(user_id, instance_id)
        self.requests.replace(user_id, request_id, outcome, now=now,
                              remember_seconds=remember_seconds)

    def abandon(self, instance_id: str, *, user_id: str, request_id: str, now: float,
                reason: str) -> None:
        """Give up a lease just made, without handing the worker back: leased → draining
        (the reaper recycles it: e.g. its code-server is in an unknown state), then forget
        the request's outcome and the user's count, so the claim can lease another worker."""
        try:
            self.table.update(
                instance_id, "SET #s = :draining, reason = :r, drainedAt = :now",
                {":draining": "draining", ":r": reason, ":now": now, ":leased": "leased",
                 ":u": user_id, ":rid": request_id},
                condition="#s = :leased AND userId = :u AND requestId = :rid",
                what="abandon: lease changed meanwhile")
        finally:
            self.forget(instance_id, user_id=user_id, request_id=request_id)

    def forget(self, instance_id: str, *, user_id: str, request_id: str) -> None:
        """Forget a lease's bookkeeping (the user's count, the request's outcome), leaving
        the worker's item alone: two single, idempotent deletes."""
        self.forget_user(user_id, instance_id)
        self.requests.forget(user_id, request_id)

    def _tidy_user(self, user_id: str | None, instance_id: str) -> None:
        """The second step after a lease ended: best effort. The lease has ended whatever
        happens here, and a set that still lists the instance heals on its next read."""
        try:
            self.forget_user(user_id, instance_id)
        except (AwsUnavailable, AwsError) as exc:
            log.warning("lease ended; the user's lease set heals on its next read",
                        extra={"user_id": user_id, "instance_id": instance_id,
                               "error": str(exc)})

    def forget_user(self, user_id: str | None, instance_id: str) -> None:
        """The user's set loses this instance (idempotent; nothing to do without a user)."""
        if user_id:
            self.table.update_unconditionally(user_key(user_id), "DELETE instances :one",
                                              {":one": {instance_id}})


def _token(*parts: object) -> str:
    """A ClientRequestToken for one lease attempt: a retry of the same request (a timeout
    that hid a success) is then answered as the success it was, not as a lost race."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:36]
