"""The reaper's pass in-process against moto: the real Store and Asg, conditional writes,
races run in threads, and crashes injected between writes."""

from __future__ import annotations

import time
from typing import Any

import pytest

from reaper.actions import DONE, LOST
from reaper.loop import Reaper
from reaper.rules import Expire, Recycle
from shared.asg import Asg
from shared.config import Settings
from shared.errors import ConditionFailed
from shared.store import Store


def adapters(s: Settings) -> tuple[Store, Asg]:
    """The reaper's adapters (also used by test_reaper_process)."""
    return Store.from_settings(s), Asg.from_settings(s)


def launch(asg: Asg, n: int) -> list[str]:
    asg.set_desired(n)
    return sorted(i.instance_id for i in asg.describe().instances)


def register(store: Store, iid: str, now: float) -> None:
    store.workers.register(iid, now=now, private_ip="10.0.0.1", public_ip=None)


def lease(store: Store, iid: str, user: str, *, now: float, seconds: int) -> None:
    w = store.workers.get(iid)
    assert w is not None
    store.leases.grant(w, user_id=user, request_id=f"r-{iid}", lease_seconds=seconds,
                       now=now, max_leases=100, remember_seconds=86400)


def worker_items(store: Store) -> dict[str, str]:
    return {w.instance_id: w.status for w in store.workers.all()}


class Before:
    """Delegates to the real Store, but runs ``fn`` just before the first call of ``method``
    (a dotted path, e.g. ``leases.expire``): another process's write landing at that exact
    point of the pass."""

    def __init__(self, target: Any, method: str, fn: Any) -> None:
        self._target, self._method = target, method
        self._pending = fn if isinstance(fn, list) else [fn]  # shared by nested proxies

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        head, _, rest = self._method.partition(".")
        if name != head or not self._pending:
            return attr
        if rest:
            return Before(attr, rest, self._pending)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._pending:
                self._pending.pop()()
            return attr(*args, **kwargs)

        return call


# moto's conditional writes are not atomic under truly concurrent requests (two threads
# can both pass the same condition; measured: 61 of 400 trials with a forced 1 µs GIL
# switch interval), while DynamoDB's are. So the race is replayed at each point where the
# dispatcher's renew can land relative to the reaper's reads and writes, deterministically.
RENEW_LANDS = [
    ("before_the_pass_reads", "leases.expired", True),
    ("between_the_read_and_the_expire", "leases.expire", True),
    ("between_the_expire_and_the_recycle", "workers.confirm_recyclable", False),
    ("between_the_terminate_and_the_remove", "workers.remove", False),
    ("after_the_pass", None, False),
]


@pytest.mark.parametrize(("point", "method", "renew_wins"), RENEW_LANDS,
                         ids=[r[0] for r in RENEW_LANDS])
def test_a_renew_racing_the_expiry_never_leaves_both_or_neither_winning(
        aws_pool: Settings, point: str, method: str | None, renew_wins: bool) -> None:
    store, asg = adapters(aws_pool)
    iid, other = launch(asg, 2)
    t0 = float(int(time.time())) - 100
    for i in (iid, other):
        register(store, i, t0)
    lease(store, iid, "alice", now=t0, seconds=10)
    expiry = t0 + 10
    store.workers.heartbeat(iid, healthy=True, now=expiry)  # alive: only the lease rule is in play
    store.workers.heartbeat(other, healthy=True, now=expiry)
    renewed: list[bool] = []

    def renew() -> None:  # the dispatcher's clock still sees the lease alive
        try:
            store.leases.renew(iid, user_id="alice", lease_seconds=3600, now=expiry - 0.01)
            renewed.append(True)
        except ConditionFailed:
            renewed.append(False)

    reaper = Reaper(store=Before(store, method, renew) if method else store,  # type: ignore[arg-type]
                    asg=asg, settings=aws_pool)
    outcomes = reaper.run_pass(now=expiry)
    if method is None:
        renew()
    expired = [o for a, o in outcomes if isinstance(a, Expire)]
    item, live = store.workers.get(iid), {i.instance_id for i in asg.describe().instances}
    assert renewed == [renew_wins]
    if renew_wins:  # the lease stands and nothing was reclaimed
        assert expired in ([], [LOST])
        assert item is not None and item.status == "leased" and item.lease_expiry > expiry
        assert live == {iid, other} and asg.describe().desired == 2
        assert [w.instance_id for w in store.leases.held_by("alice")] == [iid]
    else:  # the user holds nothing and the instance is gone, decremented once
        assert expired == [DONE]
        assert item is None and live == {other} and asg.describe().desired == 1
        assert store.leases.held_by("alice") == []


def test_a_free_or_leased_worker_is_never_terminated_even_when_asked(aws_pool: Settings) -> None:
    store, asg = adapters(aws_pool)
    a, b = launch(asg, 2)
    now = time.time()
    register(store, a, now)
    register(store, b, now)
    lease(store, b, "bob", now=now, seconds=600)
    reaper = Reaper(store=store, asg=asg, settings=aws_pool)
    for iid, user in ((a, None), (b, "bob")):
        assert reaper.actions.apply(Recycle(iid, user, "stale plan"), now) == LOST
    assert {i.instance_id for i in asg.describe().instances} == {a, b}
    assert worker_items(store) == {a: "free", b: "leased"}
    assert asg.describe().desired == 2


def test_unknown_instances_are_tracked_and_a_leased_orphan_is_tombstoned_not_freed(
        aws_pool: Settings) -> None:
    """A leased instance that left the group (Standby, detached) is retired and recycled
    with a tombstone: back in service, its agent can never register it as a free worker
    with the last user's disk (issue 14)."""
    store, asg = adapters(aws_pool)
    a, b = launch(asg, 2)
    now = time.time()
    register(store, a, now)
    gone = "i-00000000000gone"
    register(store, gone, now)  # its instance is not in the ASG
    lease(store, gone, "carol", now=now, seconds=600)
    reaper = Reaper(store=store, asg=asg, settings=aws_pool)
    reaper.run_pass(now=now + 1)
    assert worker_items(store) == {a: "free", b: "booting"}
    assert store.leases.held_by("carol") == []
    sample = reaper.metrics.registry.get_sample_value
    assert sample("workerpool_recycled_total") == 1
    assert sample("workerpool_leased_workers_lost_total") == 1
    assert reaper.run_pass(now=now + 2) == []  # nothing left to do: a second pass is a no-op
    with pytest.raises(ConditionFailed, match="recycled"):  # back in service: refused
        register(store, gone, now + 3)


class Crash(BaseException):
    """A process dying between two writes (BaseException: nothing in the pass catches it)."""


class CrashAfter:
    """Delegates to a real adapter, but dies before its k-th write (a fault injector)."""

    WRITES = {"expire", "mark_dead", "confirm_recyclable", "remove", "track_booting",
              "set_protection", "terminate"}
    PARTS = {"workers", "leases"}  # the store's kinds of item, wrapped in turn

    def __init__(self, target: Any, counter: list[int], k: int) -> None:
        self._target, self._counter, self._k = target, counter, k

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name in self.PARTS:
            return CrashAfter(attr, self._counter, self._k)
        if name not in self.WRITES:
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            self._counter[0] += 1
            if self._counter[0] == self._k:
                raise Crash(name)
            return attr(*args, **kwargs)

        return write


def seed_mixed_pool(store: Store, asg: Asg) -> dict[str, str]:
    ids = launch(asg, 4)
    now = time.time()
    roles = dict(zip(("expired", "dead", "never_booted", "healthy"), ids, strict=True))
    register(store, roles["expired"], now)
    lease(store, roles["expired"], "alice", now=now - 100, seconds=10)
    register(store, roles["dead"], now - 1000)
    lease(store, roles["dead"], "bob", now=now - 1000, seconds=3600)
    store.workers.track_booting(roles["never_booted"], now=now - 1000)
    register(store, roles["healthy"], now)
    return roles


#: A pass makes 15 writes: expire, confirm, protection, terminate, remove (the expired
#: lease); the same five for the dead worker; mark_dead, confirm, protection, terminate,
#: remove for the never-booted one. Dying before each of the first chain's writes and the
#: third chain's (6-10 repeat 1-5), and never (16), must all end the same way.
CRASH_POINTS = (1, 2, 3, 4, 5, 11, 12, 14, 15, 16)


@pytest.mark.parametrize("k", CRASH_POINTS)
def test_a_pass_that_crashes_before_any_write_then_runs_again_reaches_the_same_end_state(
        aws_pool: Settings, k: int) -> None:
    store, asg = adapters(aws_pool)
    roles = seed_mixed_pool(store, asg)
    counter = [0]
    crashing = Reaper(store=CrashAfter(store, counter, k), asg=CrashAfter(asg, counter, k),
                      settings=aws_pool)  # type: ignore[arg-type]
    try:
        crashing.run_pass()
        crashed = False
    except Crash:
        crashed = True
    assert crashed == (k <= 15)
    restarted = Reaper(store=store, asg=asg, settings=aws_pool)
    restarted.run_pass()
    restarted.run_pass()  # the replacement launched by the first pass is tracked by now
    state = asg.describe()
    instances = {i.instance_id for i in state.instances}
    assert state.desired == 2  # expired + dead decremented once each; never-booted replaced
    assert roles["healthy"] in instances and len(instances) == 2
    assert not instances & {roles["expired"], roles["dead"], roles["never_booted"]}
    (replacement,) = instances - {roles["healthy"]}
    assert worker_items(store) == {roles["healthy"]: "free", replacement: "booting"}
    assert store.leases.held_by("alice") == [] and store.leases.held_by("bob") == []
