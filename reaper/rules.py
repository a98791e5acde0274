"""The reaper's judgement: which workers to reclaim, as a pure function of a snapshot.

``plan(snapshot, now, settings)`` reads nothing and writes nothing; it returns actions that
``reaper.loop`` applies with conditional writes. Every rule compares times itself: the
index queries that fill the snapshot are only a pre-filter, and DynamoDB TTL is never a
deadline (items linger for days after it; emulators may never delete them).

Rules, in the order their actions are applied:

1. an expired lease (leased, ``0 < leaseExpiry <= now``): Expire, then Recycle; with
   IDLE_SECONDS, a lease idle that long (reaper/ending.py): ExpireIdle, then Recycle;
2. a silent worker (free or leased, no heartbeat for HEARTBEAT_TIMEOUT): MarkDead, then
   Recycle; an expired lease that is also silent is expired, not reported as lost. Silence
   is counted from our own recovery when AWS was unreachable (heartbeats could not be
   written meanwhile), and when most of the pool is silent at once nobody is marked dead:
   that is our outage, not theirs (as Kubernetes' node controller stops evicting when a
   zone looks unhealthy);
3. a draining or dead worker: Recycle (terminate with decrement, remove the item);
4. a booting item whose instance left the ASG: RemoveOrphan; one older than
   BOOT_TIMEOUT_SECONDS: ReplaceNeverBooted (terminate without decrement: the ASG
   launches a replacement);
5. on sweep passes (every ORPHAN_SWEEP_INTERVAL): a booting item whose instance is no
   longer a live member of the ASG: RemoveOrphan; a free or leased one (Standby, detached):
   Retire then Recycle, so its tombstone keeps it from ever coming back as a free worker
   with the last user's disk; a free worker unhealthy for UNHEALTHY_GRACE_SECONDS: Retire
   then Recycle without decrement (the ASG replaces it);
6. a live ASG instance that the table does not know: TrackBooting;
7. a lease nothing above acts on, WARN_BEFORE_SECONDS from its end or whose announced end
   moved: Notify (reaper/ending.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from reaper.ending import ExpireIdle, Notify, lease_actions
from shared.config import Settings
from shared.state import AsgState, LeaseClock, Worker

#: ``reason`` that store.mark_dead writes for a booting item: such a worker was never
#: handed out, so it is replaced (no decrement) rather than recycled (decrement).
NEVER_BOOTED_REASON = "was booting"
#: ``reason`` of a free worker taken out for being unhealthy: replaced, not decremented.
UNHEALTHY_REASON = "unhealthy"
LEFT_REASON = "left the group"
#: When at least this share of the live workers (and at least MASS_SILENCE_MIN) fall silent
#: at once, the silence is ours (dispatchers or AWS down), and nobody is marked dead.
MASS_SILENCE_SHARE = 0.5
MASS_SILENCE_MIN = 3


@dataclass(frozen=True)
class Snapshot:
    """What one pass read. The table is read before the ASG (see docs/reaper.md)."""

    asg: AsgState
    expired: tuple[Worker, ...] = ()
    stale: tuple[Worker, ...] = ()
    draining: tuple[Worker, ...] = ()
    dead: tuple[Worker, ...] = ()
    booting: tuple[Worker, ...] = ()
    #: Every worker item: only on sweep passes (a Scan), else None.
    everything: tuple[Worker, ...] | None = None
    #: Instance ids the loop knows have an item (from the last sweep and since), so that
    #: finding ASG instances unknown to the table needs no Scan on ordinary passes.
    known_ids: frozenset[str] = field(default_factory=frozenset)
    #: When AWS answered again after our last failed pass (epoch s), else None.
    recovered_at: float | None = None
    #: Free and leased workers at the last sweep (how big "most of the pool" is).
    live_workers: int = 0
    #: Leases with their clocks, for idle reclaim and notices (empty when both are off).
    leases: tuple[LeaseClock, ...] = ()


@dataclass(frozen=True)
class Expire:
    """leased → draining, only if leaseExpiry is still the one seen (a renew wins)."""

    worker: Worker


@dataclass(frozen=True)
class MarkDead:
    """free/leased → dead, only if lastHeartbeat is still the one seen."""

    worker: Worker


@dataclass(frozen=True)
class Recycle:
    """confirm_recyclable → clear protection → terminate → remove the item."""

    instance_id: str
    user_id: str | None
    reason: str
    #: Lower desired capacity with the terminate (False for a never-booted instance).
    decrement: bool = True
    #: The instance is a live ASG member (else only the item is left to remove).
    in_group: bool = True


@dataclass(frozen=True)
class Retire:
    """free/leased → draining (only in the status and heartbeat seen), for ``reason``."""

    worker: Worker
    reason: str


@dataclass(frozen=True)
class ReplaceNeverBooted:
    """booting → dead (fences a late registration) → confirm → terminate, no decrement."""

    worker: Worker


@dataclass(frozen=True)
class RemoveOrphan:
    """Delete an item whose instance is no longer in the ASG (only in the status seen)."""

    worker: Worker


@dataclass(frozen=True)
class TrackBooting:
    """Put a booting item for a live ASG instance the table does not know (conditional)."""

    instance_id: str


#: ``take(worker)``: True the first time an instance is claimed by a rule in this pass.
Take = Callable[[Worker], bool]

Action = (Expire | ExpireIdle | MarkDead | Retire | Recycle | ReplaceNeverBooted
          | RemoveOrphan | TrackBooting | Notify)


def lease_expired(w: Worker, now: float) -> bool:
    return w.status == "leased" and 0 < w.lease_expiry <= now


def silent(w: Worker, now: float, settings: Settings, recovered_at: float | None = None
           ) -> bool:
    """No heartbeat for HEARTBEAT_TIMEOUT, counted from our recovery if AWS was down."""
    heard = max(w.last_heartbeat, recovered_at or 0.0)
    return w.status in ("free", "leased") and now - heard >= settings.dead_after


def mass_silence(silent_count: int, live_workers: int) -> bool:
    """Most of the pool silent at once: our outage (dispatchers, broker, AWS), not theirs."""
    return silent_count >= max(MASS_SILENCE_MIN, MASS_SILENCE_SHARE * live_workers)


def live_workers(snapshot: Snapshot) -> int:
    """Free and leased workers: counted in this pass's sweep, else at the last one."""
    if snapshot.everything is None:
        return snapshot.live_workers
    return sum(1 for w in snapshot.everything if w.status in ("free", "leased"))


def unhealthy_too_long(w: Worker, now: float, settings: Settings) -> bool:
    return (w.status == "free" and not w.healthy and w.unhealthy_since is not None
            and now - w.unhealthy_since >= settings.unhealthy_grace_seconds)


def boot_timed_out(w: Worker, now: float, settings: Settings) -> bool:
    since = w.first_seen if w.first_seen is not None else w.last_heartbeat
    return w.status == "booting" and now - since >= settings.boot_timeout_seconds


def plan(snapshot: Snapshot, now: float, settings: Settings) -> list[Action]:
    """The actions one pass should take, at most one rule per instance."""
    live = snapshot.asg.live_ids
    actions: list[Action] = []
    handled: set[str] = set()

    def take(w: Worker) -> bool:
        if w.instance_id in handled:
            return False
        handled.add(w.instance_id)
        return True

    for w in snapshot.expired:
        if lease_expired(w, now) and take(w):
            actions += [Expire(w), Recycle(w.instance_id, w.user_id, "expired",
                                           in_group=w.instance_id in live)]
    idle, notices = _lease_clocks(snapshot, now, settings, take)
    actions += idle
    dying = [w for w in snapshot.stale if silent(w, now, settings, snapshot.recovered_at)
             and w.instance_id not in handled]
    if not mass_silence(len(dying), live_workers(snapshot)):
        for w in dying:
            if take(w):
                actions += [MarkDead(w), Recycle(w.instance_id, w.user_id, "dead",
                                                 in_group=w.instance_id in live)]
    for w in (*snapshot.draining, *snapshot.dead):
        if w.status in ("draining", "dead") and take(w):
            actions.append(Recycle(w.instance_id, w.user_id, w.reason or w.status,
                                   decrement=w.reason != NEVER_BOOTED_REASON,
                                   in_group=w.instance_id in live))
    for w in snapshot.booting:
        if w.status != "booting":
            continue
        if w.instance_id not in live and take(w):
            actions.append(RemoveOrphan(w))
        elif boot_timed_out(w, now, settings) and take(w):
            actions.append(ReplaceNeverBooted(w))
    actions += _swept(snapshot, now, settings, take)
    actions += untracked(snapshot)
    return actions + [n for n in notices if take(n.worker)]


def _lease_clocks(snapshot: Snapshot, now: float, settings: Settings, take: Take
                  ) -> tuple[list[Action], list[Notify]]:
    """Rule 1 for idleness (ExpireIdle, Recycle), and rule 7's candidates (reaper/ending.py)."""
    live = snapshot.asg.live_ids
    reclaim: list[Action] = []
    notices: list[Notify] = []
    for c in snapshot.leases:
        for a in lease_actions(c, now, settings):
            if isinstance(a, Notify):
                notices.append(a)
            elif take(a.worker):
                reclaim += [a, Recycle(a.worker.instance_id, a.worker.user_id, "idle",
                                       in_group=a.worker.instance_id in live)]
    return reclaim, notices


def _swept(snapshot: Snapshot, now: float, settings: Settings, take: Take) -> list[Action]:
    """Rule 5, on sweep passes: workers out of the group, free workers unhealthy too long."""
    live = snapshot.asg.live_ids
    actions: list[Action] = []
    for w in snapshot.everything or ():
        if w.instance_id in live or w.status not in ("booting", "free", "leased"):
            if unhealthy_too_long(w, now, settings) and take(w):
                actions += [Retire(w, UNHEALTHY_REASON),
                            Recycle(w.instance_id, None, UNHEALTHY_REASON, decrement=False)]
            continue
        if w.status == "booting" and take(w):
            actions.append(RemoveOrphan(w))
        elif take(w):  # free or leased, out of the group: never to come back as it is
            actions += [Retire(w, LEFT_REASON),
                        Recycle(w.instance_id, w.user_id, LEFT_REASON, in_group=False)]
    return actions


def untracked(snapshot: Snapshot) -> list[Action]:
    """Rule 6: a live ASG instance that the table does not know gets a booting item."""
    seen = {w.instance_id for w in (*snapshot.expired, *snapshot.stale, *snapshot.draining,
                                    *snapshot.dead, *snapshot.booting)}
    seen |= {c.worker.instance_id for c in snapshot.leases}
    if snapshot.everything is not None:
        known = {w.instance_id for w in snapshot.everything} | seen
    else:
        known = set(snapshot.known_ids) | seen
    return [TrackBooting(inst.instance_id) for inst in snapshot.asg.instances
            if not inst.leaving and inst.instance_id not in known]


def instance_of(action: Action) -> str:
    """The instance an action is about (the loop skips later actions after a lost race)."""
    if isinstance(action, (Recycle, TrackBooting)):
        return action.instance_id
    return action.worker.instance_id
