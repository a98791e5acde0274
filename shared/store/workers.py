"""Worker items (``i-…``): registration, heartbeats, finding free ones, status changes.

One named, conditional write per state change; losing the condition raises
``ConditionFailed`` carrying the item as it was. Leases (free → leased and back) are in
shared.store.leases.
"""

from __future__ import annotations

from typing import Any

from shared.errors import ConditionFailed
from shared.state import LeaseClock, Status, Worker
from shared.store.schema import (
    HEARTBEAT_INDEX,
    TTL_ATTRIBUTE,
    to_lease_clock,
    to_worker,
    tombstone_key,
)
from shared.store.table import Table, TransactionCancelled, key, marshal

#: How long a tombstone keeps a recycled instance from registering again.
TOMBSTONE_SECONDS = 86400


class KeyMismatch(ConditionFailed):
    """A register whose agent key differs from the one the instance's first accepted
    register fixed (or has none, where one is recorded): refused, the item unchanged."""


class Workers:
    def __init__(self, table: Table) -> None:
        self.table = table

    # --- reads --------------------------------------------------------------------------
    def get(self, instance_id: str) -> Worker | None:
        """The worker, read consistently; None if it has no worker item."""
        item = self.table.get(instance_id)
        return to_worker(item) if item and "status" in item else None

    def find_free(self, limit: int = 10, *, fresh_after: float | None = None,
                  split: float | None = None) -> list[Worker]:
        """Free, healthy workers, freshest heartbeat first: one index Query, never a Scan.
        With ``fresh_after``, only those heard from since then (a silent worker is never
        handed out, even before the reaper marks it dead): the index is sorted on it.
        With ``split`` (a heartbeat time after ``fresh_after``), those heard from at or
        before it first, then (a second Query, only if that page is short) the fresher
        ones: dispatchers that split at different points get different pages."""
        if split is None or fresh_after is None:
            return self._free_page(limit, fresh_after, None)
        found = self._free_page(limit, fresh_after, split)
        if len(found) < limit:
            found += self._free_page(limit - len(found), split, None)
        return found

    def _free_page(self, limit: int, after: float | None, until: float | None
                   ) -> list[Worker]:
        values: dict[str, Any] = {":free": "free", ":yes": True}
        condition = "#s = :free"
        if after is not None and until is not None:
            condition += " AND lastHeartbeat BETWEEN :fresh AND :until"
            values[":fresh"], values[":until"] = after, until
        elif after is not None:
            condition += " AND lastHeartbeat > :fresh"
            values[":fresh"] = after
        items = self.table.query(HEARTBEAT_INDEX, condition, values,
                                 filter_expression="healthy = :yes", limit=limit,
                                 forward=False, page_size=max(limit, 10))
        return [to_worker(i) for i in items]

    def by_status(self, status: Status, *, heartbeat_before: float | None = None
                  ) -> list[Worker]:
        """Workers in ``status`` (optionally only those silent since ``heartbeat_before``)."""
        if heartbeat_before is None:
            items = self.table.query(HEARTBEAT_INDEX, "#s = :st", {":st": status})
        else:
            items = self.table.query(HEARTBEAT_INDEX, "#s = :st AND lastHeartbeat < :t",
                                     {":st": status, ":t": heartbeat_before})
        return [to_worker(i) for i in items]

    def count(self, status: Status, *, healthy_only: bool = False) -> int:
        if healthy_only:
            return self.table.count(HEARTBEAT_INDEX, "#s = :st", {":st": status, ":yes": True},
                                    filter_expression="healthy = :yes")
        return self.table.count(HEARTBEAT_INDEX, "#s = :st", {":st": status})

    def all(self) -> list[Worker]:
        """Every worker item (a paginated Scan): the reaper's occasional orphan sweep only."""
        return [to_worker(i) for i in self.table.scan_prefix("i-")]

    # --- the agent's lifecycle ----------------------------------------------------------
    def agent_key(self, instance_id: str) -> str | None:
        """The agent key the instance's first accepted register fixed; ``""`` when it
        registered without one (a v1 agent: it can never get one); None when it has not
        registered (no item, or only a booting one)."""
        item = self.table.get(instance_id) or {}
        if item.get("status") in (None, "booting") or "registeredAt" not in item:
            return item.get("agentKey")
        return str(item.get("agentKey") or "")

    def register(self, instance_id: str, *, now: float, private_ip: str | None,
                 public_ip: str | None, instance_type: str | None = None,
                 availability_zone: str | None = None, agent_version: str | None = None,
                 agent_key: str | None = None, tls_fingerprint: str | None = None
                 ) -> Worker:
        """booting/unknown → free, fixing ``agent_key``. A free or leased worker that
        registers again (agent restart, broker reconnect) keeps its status and gets its
        addresses refreshed, only with the key it registered with (KeyMismatch otherwise); a
        draining or dead one stays as it is, and a recycled one (tombstoned) never comes back
        (ConditionFailed)."""
        facts = {":now": now, ":pub": public_ip, ":priv": private_ip, ":type": instance_type,
                 ":az": availability_zone, ":ver": agent_version, ":tls": tls_fingerprint}
        # DynamoDB refuses an unused value; a null key would be an attribute that exists
        key = {":key": agent_key} if agent_key is not None else {}
        try:
            self._register_new(instance_id, {**facts, **key})
        except TransactionCancelled as exc:
            if exc.failed(1):
                raise ConditionFailed("register: this instance was recycled") from None
            if not exc.failed(0):
                raise ConditionFailed("register: concurrent change, try again") from None
        else:
            return Worker(instance_id=instance_id, status="free", last_heartbeat=now,
                          healthy=True, public_ip=public_ip, private_ip=private_ip,
                          instance_type=instance_type, availability_zone=availability_zone,
                          tls_fingerprint=tls_fingerprint)
        return self._register_again(instance_id, {**facts, **key})

    def _register_again(self, instance_id: str, facts: dict[str, Any]) -> Worker:
        """Already known: a free or leased worker gets its addresses refreshed, if the
        register carries the key the first one fixed (or none, where none was)."""
        same_key = ("agentKey = :key" if ":key" in facts
                    else "attribute_not_exists(agentKey)")
        try:
            item = self.table.update(
                instance_id,
                "SET lastHeartbeat = :now, publicIp = :pub, privateIp = :priv, "
                "instanceType = :type, availabilityZone = :az, agentVersion = :ver, "
                "tlsFingerprint = :tls",
                {**facts, ":free": "free", ":leased": "leased"},
                condition=f"#s IN (:free, :leased) AND {same_key}",
                what="register: worker is draining or dead",
            )
        except ConditionFailed as exc:
            if exc.item and exc.item.get("status") in ("free", "leased"):
                raise KeyMismatch("agent_key: differs from the key this instance first "
                                  "registered with", exc.item) from None
            raise
        return to_worker(item)

    def _register_new(self, instance_id: str, facts: dict[str, Any]) -> None:
        """One transaction: the item becomes free unless it exists beyond booting, and only
        while no tombstone says the instance was recycled (its agent can still speak while
        the VM shuts down)."""
        set_key = ", agentKey = :key" if ":key" in facts else ""
        self.table.transact([
            {"Update": {
                "Key": key(instance_id),
                "UpdateExpression":
                    "SET #s = :free, healthy = :yes, lastHeartbeat = :now, "
                    "registeredAt = :now, leaseExpiry = :zero, userId = :null, "
                    "publicIp = :pub, privateIp = :priv, instanceType = :type, "
                    f"availabilityZone = :az, agentVersion = :ver, tlsFingerprint = :tls{set_key} "
                    "REMOVE requestId, reason",
                "ConditionExpression": "attribute_not_exists(instanceId) OR #s = :booting",
                "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": marshal({
                    **facts, ":free": "free", ":booting": "booting", ":yes": True,
                    ":zero": 0, ":null": None}),
            }},
            {"ConditionCheck": {
                "Key": key(tombstone_key(instance_id)),
                "ConditionExpression": "attribute_not_exists(instanceId)"}},
        ])

    def heartbeat(self, instance_id: str, *, healthy: bool, now: float,
                  last_activity: float | None = None) -> Worker:
        """Record a heartbeat of a free or leased worker (ConditionFailed otherwise), since
        when it has been unhealthy (the reaper replaces a free one after a grace), and the
        user's ``last_activity`` (at most ``now``) when newer than the one stored."""
        sets = ["lastHeartbeat = :now", "healthy = :h"]
        values: dict[str, Any] = {":now": now, ":h": healthy, ":free": "free",
                                  ":leased": "leased"}
        condition = "#s IN (:free, :leased) AND lastHeartbeat <= :now"
        if not healthy:
            sets.append("unhealthySince = if_not_exists(unhealthySince, :now)")
        if last_activity is not None:
            sets.append("lastActivity = :act")
            values[":act"] = min(last_activity, now)
            condition += " AND (attribute_not_exists(lastActivity) OR lastActivity <= :act)"
        try:
            item = self.table.update(
                instance_id, "SET " + ", ".join(sets) + (" REMOVE unhealthySince"
                                                         if healthy else ""),
                values, condition=condition,
                what="heartbeat: not a free or leased worker (or an older heartbeat)")
        except ConditionFailed as exc:
            if ":act" in values and (exc.item or {}).get("lastActivity", 0) > values[":act"]:
                # older activity than stored (a clock stepped back): the beat still counts
                return self.heartbeat(instance_id, healthy=healthy, now=now)
            raise
        return to_worker(item)

    def deregister(self, instance_id: str, *, now: float, reason: str = "deregistered"
                   ) -> Worker:
        """Out of the free set at once: free/leased/booting → draining.

        An unknown instance gets a draining item too: a register processed after this
        deregister (agent messages run on several threads) is then refused, and the reaper
        recycles the instance (it is going away) or drops the item as an orphan."""
        item = self.table.update(
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

    def track_booting(self, instance_id: str, *, now: float) -> bool:
        """Record an ASG instance that has not registered yet; False if already known."""
        return self.table.put_new({
            "instanceId": instance_id, "status": "booting", "healthy": False,
            "lastHeartbeat": now, "firstSeen": now, "leaseExpiry": 0, "userId": None,
            "publicIp": None, "privateIp": None})

    # --- the reaper's and the scaler's status changes ------------------------------------
    def mark_dead(self, worker: Worker, *, now: float) -> Worker:
        """free/leased/booting → dead, only if no heartbeat landed since the one seen. (A
        leased worker's user set is tidied by the caller: shared.store.leases.forget_user.)"""
        item = self.table.update(
            worker.instance_id, "SET #s = :dead, reason = :r, diedAt = :now",
            {":dead": "dead", ":r": f"was {worker.status}", ":now": now,
             ":st": worker.status, ":hb": worker.last_heartbeat},
            condition="#s = :st AND lastHeartbeat = :hb",
            what="mark_dead: heartbeat or status changed meanwhile",
        )
        return to_worker(item)

    def retire(self, worker: Worker, *, now: float, reason: str) -> Worker:
        """free/leased → draining for ``reason`` (it left the group, it stayed unhealthy),
        only in the status and with the heartbeat seen (a change meanwhile wins)."""
        item = self.table.update(
            worker.instance_id, "SET #s = :draining, reason = :r, drainedAt = :now",
            {":draining": "draining", ":r": reason, ":now": now, ":st": worker.status,
             ":hb": worker.last_heartbeat},
            condition="#s = :st AND lastHeartbeat = :hb",
            what="retire: status or heartbeat changed meanwhile",
        )
        return to_worker(item)

    def drain_free(self, worker: Worker, *, now: float, reason: str) -> Worker:
        """free → draining (surplus scale-in), only if still free."""
        item = self.table.update(
            worker.instance_id, "SET #s = :draining, reason = :r, drainedAt = :now",
            {":draining": "draining", ":r": reason, ":now": now, ":free": "free"},
            condition="#s = :free",
            what="drain_free: no longer free",
        )
        return to_worker(item)

    def confirm_recyclable(self, instance_id: str, *, now: float) -> Worker:
        """The last write before a terminate: fails unless the worker is draining, dead or
        booting-too-long (never free or leased), so nothing live is ever terminated."""
        item = self.table.update(
            instance_id, "SET recycleStartedAt = :now",
            {":now": now, ":draining": "draining", ":dead": "dead", ":booting": "booting"},
            condition="#s IN (:draining, :dead, :booting)",
            what="recycle: worker is live again",
        )
        return to_worker(item)

    def tombstone(self, instance_id: str, *, now: float) -> None:
        """Remember that this instance was recycled: it may never register again."""
        self.table.put({"instanceId": tombstone_key(instance_id), "recycledAt": now,
                        TTL_ATTRIBUTE: int(now + TOMBSTONE_SECONDS)})

    def remove(self, instance_id: str, *, only_if_status: tuple[str, ...] | None = None
               ) -> bool:
        """Delete a worker item (optionally only in these statuses); False if it was gone."""
        return self.table.delete(instance_id, only_if_status=only_if_status)

    def lease_clock(self, instance_id: str) -> LeaseClock | None:
        """A worker with the clocks of its lease (read consistently); None if no worker."""
        item = self.table.get(instance_id)
        return to_lease_clock(item) if item and "status" in item else None
