"""An in-memory broker with shared.broker's interface (as dramatiq's StubBroker), so that a
loop's wiring is unit-testable without RabbitMQ.

``StubBroker`` stands in for ``Broker`` (and ``RpcClient``: send/wait/call), and
``stub.consumer(...)`` for ``Consumer`` (same constructor, so ``monkeypatch.setattr(module,
"Consumer", stub.consumer)`` swaps it in). Handlers get the real ``Delivery``, settled by the
real rules (``shared.broker.delivery``: InvalidMessage → dead-letter copy, then the rejected
reply, then ack; other exceptions → requeue). Routing: the default exchange by queue name;
``amq.rabbitmq.reply-to`` replies kept per correlation_id in ``replies``; fanout exchanges;
other exchanges by exact routing key (no topic wildcards). A mandatory publish no queue takes
raises ``Unroutable``; an unknown exchange ``BrokerUnavailable``. Single-active-consumer and
``x-max-length`` (drop-head) are honoured; ``x-delivery-limit`` and the broker's own
dead-lettering are not: a rejected message lands in ``rejected``.

Two ways to deliver: ``drain()``/``join()`` deliver on the calling thread to connected
consumers that are not running; a consumer whose ``run()`` is on a thread of its own
delivers there (as the real one), and ``join()`` waits for it. ``reconnect()`` simulates a
cut: unacked messages come back redelivered, old deliveries' acks are dropped, and the
on_disconnect and on_connect hooks run.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from shared import topology
from shared.broker import DIRECT_REPLY_TO, Delivery, Handler
from shared.broker.connection import LOST
from shared.broker.delivery import Outcome, run_handler, settle_in_order
from shared.errors import BrokerUnavailable, Unroutable


@dataclass(frozen=True)
class Message:
    body: bytes
    exchange: str = ""
    routing_key: str = ""
    reply_to: str | None = None
    correlation_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    persistent: bool = True
    redelivered: bool = False
    user_id: str | None = None


@dataclass
class _Queue:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    ready: deque[Message] = field(default_factory=deque)
    owner: StubConsumer | None = None  # exclusive to this consumer's "connection"
    consumers: list[StubConsumer] = field(default_factory=list)


class StubBroker:
    def __init__(self, *, declare: bool = True, user: str = "guest") -> None:
        self.user = user  # the broker user of this "connection": every message's user_id
        self._cond = threading.Condition(threading.RLock())
        self.queues: dict[str, _Queue] = {}
        self.exchanges: dict[str, str] = {"amq.topic": "topic", "amq.fanout": "fanout"}
        self.bindings: set[tuple[str, str, str]] = set()
        self.replies: dict[str, list[bytes]] = {}
        self.rejected: list[tuple[str, Message]] = []
        self.journal: list[tuple[str, str]] = []  # ("publish", key) / ("ack"|"requeue"|...)
        self.consumers: list[StubConsumer] = []
        self._names = itertools.count(1)
        if declare:
            self.declare()

    # --- the Broker interface ------------------------------------------------------------
    def declare(self) -> None:
        """shared.topology's exchanges, queues and bindings (idempotent)."""
        with self._cond:
            self.exchanges.update(dict(topology.EXCHANGES))
            for q in topology.QUEUES:
                self.declare_queue(q.name, arguments=q.arguments)
            self.bindings.update(topology.BINDINGS)

    def declare_queue(self, name: str, *, arguments: dict[str, Any] | None = None) -> None:
        with self._cond:
            self.queues.setdefault(name, _Queue(name, dict(arguments or {})))

    def publish(self, routing_key: str, body: bytes, *, exchange: str = "",
                reply_to: str | None = None, correlation_id: str | None = None,
                headers: dict[str, Any] | None = None, mandatory: bool = True,
                persistent: bool = True, user_id: str | None = None) -> None:
        msg = Message(body, exchange, routing_key, reply_to, correlation_id,
                      dict(headers or {}), persistent, user_id=user_id or self.user)
        with self._cond:
            if not exchange and routing_key.startswith(DIRECT_REPLY_TO):
                self.replies.setdefault(correlation_id or "", []).append(body)
            else:
                for q in self._route(exchange, routing_key, mandatory):
                    q.ready.append(msg)
                    limit = q.arguments.get("x-max-length")
                    if limit is not None and len(q.ready) > limit:
                        q.ready.popleft()  # drop-head, as topology's SCALING queue
            self.journal.append(("publish", routing_key or exchange))
            self._cond.notify_all()

    def _route(self, exchange: str, key: str, mandatory: bool) -> list[_Queue]:
        if not exchange:
            names = [key] if key in self.queues else []
        elif exchange not in self.exchanges:
            raise BrokerUnavailable(f"404 NOT_FOUND: no exchange {exchange!r}")
        else:
            fanout = self.exchanges[exchange] == "fanout"
            names = sorted(q for e, q, k in self.bindings
                           if e == exchange and (fanout or k == key) and q in self.queues)
        if not names and mandatory:
            raise Unroutable(f"no queue took the message for {key!r}")
        return [self.queues[n] for n in names]

    def publisher(self) -> StubBroker:
        return self

    def as_user(self, user: str) -> _As:
        """A publisher on this broker that authenticates as ``user`` (another broker user,
        e.g. a client or an attacker with their own credentials)."""
        return _As(self, user)

    def close(self) -> None:
        pass

    close_thread_publisher = close

    # --- the RpcClient interface (replies over direct reply-to) ---------------------------
    def send(self, queue: str, body: bytes, correlation_id: str | None = None) -> str:
        cid = correlation_id or uuid.uuid4().hex
        self.publish(queue, body, reply_to=DIRECT_REPLY_TO, correlation_id=cid,
                     mandatory=False)
        return cid

    def wait(self, correlation_ids: Iterable[str], timeout: float = 5.0) -> dict[str, bytes]:
        wanted, deadline = set(correlation_ids), time.monotonic() + timeout
        while wanted - self.replies.keys() and time.monotonic() < deadline:
            if not self.drain():
                with self._cond:
                    self._cond.wait(0.01)
        return {c: self.replies[c].pop(0) for c in wanted if self.replies.get(c)}

    def call(self, queue: str, body: bytes, timeout: float = 5.0) -> bytes:
        cid = self.send(queue, body)
        got = self.wait([cid], timeout)
        if cid not in got:
            raise TimeoutError(f"no reply on {queue} within {timeout:g}s")
        return got[cid]

    # --- looking in -------------------------------------------------------------------------
    def messages(self, queue: str) -> list[Message]:
        """The ready (not delivered) messages of ``queue``, oldest first."""
        with self._cond:
            return list(self.queues[queue].ready)

    def get_one(self, queue: str) -> tuple[bytes, dict[str, Any]] | None:
        """Like shared.broker.get_one: take one ready message, with its headers."""
        with self._cond:
            ready = self.queues[queue].ready
            if not ready:
                return None
            msg = ready.popleft()
            return msg.body, msg.headers

    # --- driving -----------------------------------------------------------------------------
    def consumer(self, url: str = "", name: str = "stub", *, prefetch: int = 50,
                 declare: bool = True, tick: float = 0.2) -> StubConsumer:
        """A Consumer for this broker (``url`` is ignored)."""
        return StubConsumer(self, name, prefetch=prefetch, declare=declare, tick=tick)

    def drain(self, max_deliveries: int = 10_000) -> int:
        """Deliver to the connected consumers not running a thread of their own, on this
        thread, until none can take more (queues empty or prefetch full). Returns how many."""
        count = 0
        while True:
            progressed = False
            for c in [c for c in self.consumers if not c.running]:
                with self._cond:
                    item = c._take()
                if item is not None:
                    c._dispatch(*item)
                    count, progressed = count + 1, True
            if not progressed:
                return count
            if count > max_deliveries:
                raise RuntimeError(f"{count} deliveries and still going: a handler that "
                                   "requeues forever?")

    def join(self, *queues: str, timeout: float = 5.0) -> None:
        """Deliver until ``queues`` (default: every consumed queue) have nothing ready and
        nothing unacked; ``TimeoutError`` naming what is left."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            with self._cond:
                left = self._pending(queues)
                if not left:
                    return
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"not idle after {timeout:g}s: {left}")
                self._cond.wait(0.01)

    def _pending(self, queues: tuple[str, ...]) -> dict[str, int]:
        names = set(queues) or {q.name for q in self.queues.values() if q.consumers}
        left = {n: len(self.queues[n].ready) for n in names if n in self.queues}
        for c in self.consumers:
            for qname, _ in c._unacked.values():
                if qname in names:
                    left[qname] = left.get(qname, 0) + 1
        return {n: k for n, k in left.items() if k}

    def reconnect(self) -> None:
        """A cut of every consumer's connection, and their reconnect."""
        for c in list(self.consumers):
            c.reconnect()


class StubConsumer:
    """``shared.broker.Consumer``'s interface on a StubBroker (see the module docstring)."""

    def __init__(self, broker: StubBroker, name: str, *, prefetch: int = 50,
                 declare: bool = True, tick: float = 0.2) -> None:
        self.broker, self.name = broker, name
        self._prefetch, self._declare, self._tick = prefetch, declare, tick
        self._subs: list[tuple[str, Handler]] = []
        self._fanouts: list[tuple[str, Handler]] = []
        self._own: list[tuple[str, Handler, str | None]] = []
        self._on_connect: list[Callable[[], None]] = []
        self._on_disconnect: list[Callable[[], None]] = []
        self._consuming: list[tuple[str, Handler]] = []  # this "connection's" queues
        self._unacked: dict[int, tuple[str, Message]] = {}
        self._tags = itertools.count(1)
        self._turn = 0  # round-robin over our queues
        self._generation = 0
        self._stop = threading.Event()
        self.running = False
        self.connected = threading.Event()
        self.own_ready = threading.Event()

    def subscribe(self, queue: str, handler: Handler, **consume_args: Any) -> None:
        self._subs.append((queue, handler))

    def subscribe_fanout(self, exchange: str, handler: Handler) -> None:
        self._fanouts.append((exchange, handler))

    def subscribe_own(self, queue: str, handler: Handler, *,
                      bind_exchange: str | None = None) -> None:
        self._own.append((queue, handler, bind_exchange))

    def on_connect(self, fn: Callable[[], None]) -> None:
        self._on_connect.append(fn)

    def on_disconnect(self, fn: Callable[[], None]) -> None:
        self._on_disconnect.append(fn)

    def publish_here(self, routing_key: str, body: bytes, **kwargs: Any) -> None:
        self.broker.publish(routing_key, body, **kwargs)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        with self.broker._cond:
            self.broker._cond.notify_all()

    # --- the "connection" --------------------------------------------------------------------
    def connect(self) -> None:
        """Declare and consume as the real one does on connecting; then the hooks."""
        b = self.broker
        if self.connected.is_set():
            return
        with b._cond:
            if self._declare:
                b.declare()
            missing = [q for q, _ in self._subs if q not in b.queues]
            locked = [q for q, _, _ in self._own if q in b.queues]  # another's: 405
            if missing or locked:
                raise BrokerUnavailable(f"404 NOT_FOUND {missing} / 405 RESOURCE_LOCKED {locked}")
            self._consuming = list(self._subs)
            for exchange, handler in self._fanouts:
                name = f"amq.gen-{next(b._names)}"
                self._own_queue(name, handler, exchange, "")
            for queue, handler, bind in self._own:
                self._own_queue(queue, handler, bind, queue)
            for q, _ in self._consuming:
                b.queues[q].consumers.append(self)
            self._generation += 1
            b.consumers.append(self)
            self.connected.set()
            self.own_ready.set()
        for fn in self._on_connect:
            fn()

    def _own_queue(self, name: str, handler: Handler, bind: str | None, key: str) -> None:
        self.broker.queues[name] = _Queue(name, owner=self)
        if bind:
            self.broker.bindings.add((bind, name, key))
        self._consuming.append((name, handler))

    def disconnect(self) -> None:
        """The connection is gone: unacked messages go back (redelivered) in their order,
        our exclusive queues are deleted, and acks of old deliveries will be dropped."""
        b = self.broker
        with b._cond:
            for tag in sorted(self._unacked, reverse=True):
                qname, msg = self._unacked.pop(tag)
                if qname in b.queues and b.queues[qname].owner is not self:
                    b.queues[qname].ready.appendleft(replace(msg, redelivered=True))
            for name in [n for n, q in b.queues.items() if q.owner is self]:
                del b.queues[name]
                b.bindings = {x for x in b.bindings if x[1] != name}
            for q in b.queues.values():
                q.consumers = [c for c in q.consumers if c is not self]
            if self in b.consumers:
                b.consumers.remove(self)
            self._consuming, was = [], self.connected.is_set()
            self._generation += 1
            self.connected.clear()
            self.own_ready.clear()
            b._cond.notify_all()
        for fn in self._on_disconnect if was else []:
            fn()

    def reconnect(self) -> None:
        self.disconnect()
        self.connect()

    def run(self, idle: Callable[[], bool] | None = None) -> None:
        """Deliver on this thread until ``stop()`` (then wait ≤ 5 s for ``idle()``)."""
        self.running = True
        try:
            self.connect()
            while not self._stop.is_set():
                with self.broker._cond:
                    item = self._take()
                    if item is None:
                        self.broker._cond.wait(self._tick)
                        continue
                self._dispatch(*item)
            deadline = time.monotonic() + 5
            while idle is not None and not idle() and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            self.disconnect()
            self.running = False

    # --- delivering and settling (the broker's lock is an RLock: handlers may publish) -----
    def _take(self) -> tuple[str, Handler, Message, int] | None:
        if not self.connected.is_set() or len(self._unacked) >= self._prefetch:
            return None
        for k in range(len(self._consuming)):
            qname, handler = self._consuming[(self._turn + k) % len(self._consuming)]
            q = self.broker.queues.get(qname)
            if q is None or not q.ready:
                continue
            if q.arguments.get("x-single-active-consumer") and q.consumers[0] is not self:
                continue
            self._turn += k + 1
            tag = next(self._tags)
            msg = q.ready.popleft()
            self._unacked[tag] = (qname, msg)
            return qname, handler, msg, tag
        return None

    def _dispatch(self, qname: str, handler: Handler, msg: Message, tag: int) -> None:
        d = Delivery(queue=qname, body=msg.body, delivery_tag=tag,
                     redelivered=msg.redelivered, reply_to=msg.reply_to,
                     correlation_id=msg.correlation_id, headers=dict(msg.headers),
                     _settle=self._settle, _generation=self._generation,
                     user_id=msg.user_id)
        try:
            run_handler(handler, d)
        except LOST:  # as the real consumer: the connection is gone, reconnect
            self.reconnect()

    def _settle(self, d: Delivery, how: Outcome, reason: str | None) -> None:
        with self.broker._cond:
            if d._settled or d._generation != self._generation:
                d._settled = True  # an old channel's delivery: already redelivered
                return
            settle_in_order(d, how, reason, publish=self.publish_here,
                            ack=lambda tag: self._end(tag, "ack"),
                            nack=lambda tag, requeue: self._end(
                                tag, "requeue" if requeue else "reject"))

    def _end(self, tag: int, how: str) -> None:
        qname, msg = self._unacked.pop(tag)
        self.broker.journal.append((how, qname))
        if how == "requeue" and qname in self.broker.queues:
            self.broker.queues[qname].ready.appendleft(replace(msg, redelivered=True))
        elif how == "reject":
            self.broker.rejected.append((qname, msg))
        self.broker._cond.notify_all()


@dataclass(frozen=True)
class _As:
    """``StubBroker.as_user``: publish (and send requests) as another broker user."""

    broker: StubBroker
    user: str

    def publish(self, routing_key: str, body: bytes, **kwargs: Any) -> None:
        self.broker.publish(routing_key, body, user_id=self.user, **kwargs)

    def send(self, queue: str, body: bytes, correlation_id: str | None = None) -> str:
        cid = correlation_id or uuid.uuid4().hex
        self.publish(queue, body, reply_to=DIRECT_REPLY_TO, correlation_id=cid,
                     mandatory=False)
        return cid


class ManualTicker:
    """``shared.ticker.Ticker``'s interface, driven by the test: ``advance(seconds)`` runs
    the jobs that fall due on the ticker's own clock (it starts at 0; every job is due
    at once, as with the real one)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.jobs: list[list[Any]] = []  # [interval, fn, due]
        self.running = False

    def every(self, interval: float, fn: Callable[[], None]) -> None:
        self.jobs.append([interval, fn, self.now])

    def start(self) -> ManualTicker:
        self.running = True
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.running = False

    def advance(self, seconds: float = 0.0) -> int:
        """Move the clock on and run what is due (each job once). Returns how many ran."""
        self.now += seconds
        ran = 0
        for job in self.jobs:
            if job[2] <= self.now:
                job[2] = self.now + job[0]
                job[1]()
                ran += 1
        return ran


if TYPE_CHECKING:  # mypy: the stub implements the interfaces the processes depend on
    from shared.broker import BrokerLike, ConsumerLike

    _broker: BrokerLike = StubBroker()
    _consumer: ConsumerLike = StubBroker().consumer()
