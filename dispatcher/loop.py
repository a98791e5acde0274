"""The dispatcher's story: one consumer thread takes messages, a pool of workers does them.

* ``workerpool.claims``: a claim is assigned a free worker (a conditional lease), answered
  ``unavailable`` (``wait_seconds: 0``), or moved to ``workerpool.claims.waiting``.
* ``workerpool.claims.waiting`` (single active consumer): the waiting room, served every
  WAIT_POLL_INTERVAL seconds in arrival order (``waiting.py``).
* ``workerpool.leases``: release and renew (``leases.py``).
* ``workerpool.agents``: register, heartbeat, deregister (``agents.py``).
* ``workerpool.capacity`` (fanout from the scaler): the machines free and coming, and whether
  launches work (which waiting claims the pool can still serve).
* every second: tell the scaler about a shortage (free < TARGET_AVAILABLE, or waiting).
* ``workerpool.confirm.<this dispatcher>`` (LEASE_PASSWORDS only, exclusive): agents confirm
  the per-lease passwords here (``passwords.py``).

The consumer thread only decodes and hands out; anything that touches DynamoDB runs on a
``ThreadPoolExecutor``. Acks go back through ``Delivery.ack`` (thread-safe), always after
the reply is published and the outcome stored. On stop, jobs not yet started are dropped
unacked (the broker redelivers them), running ones finish, and the waiting claims we hold
return to their queue when the connection closes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from dispatcher import assign
from dispatcher.agents import AgentService
from dispatcher.claims import ClaimService
from dispatcher.leases import LeaseService
from dispatcher.membership import AsgMembers
from dispatcher.metrics import Metrics
from dispatcher.passwords import Passwords
from dispatcher.waiting import WaitingRoom
from shared import topology
from shared.asg import Asg
from shared.broker import BrokerLike, ConsumerLike, Delivery
from shared.clock import Clock, SystemClock
from shared.config import Settings
from shared.errors import InvalidMessage
from shared.messages import (
    AgentMessage,
    CapacityStatus,
    ClaimReply,
    ClaimRequest,
    Deregister,
    Heartbeat,
    LeaseReply,
    LeaseRequest,
    Register,
    ShortageEvent,
    decode,
    now_sent_at,
)
from shared.store import Store
from shared.ticker import Ticker

log = logging.getLogger(__name__)

SHORTAGE_INTERVAL = 1.0
AWS_CHECK_SECONDS = 5.0


class Dispatcher:
    def __init__(self, *, settings: Settings, store: Store, asg: Asg, broker: BrokerLike,
                 consumer: ConsumerLike, metrics: Metrics, clock: Clock | None = None,
                 passwords: Passwords | None = None, ticker: Ticker | None = None) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.consumer = consumer
        self.metrics = metrics
        self.clock = clock or SystemClock()
        self.pool = ThreadPoolExecutor(settings.dispatcher_threads,
                                       thread_name_prefix="dispatcher")
        self.members = AsgMembers(asg)
        self.free_count: int | None = None
        self.claims = ClaimService(settings=settings, store=store, broker=broker,
                                   clock=self.clock, metrics=metrics, pool_view=self.pool_view,
                                   passwords=passwords)
        self.leases = LeaseService(settings=settings, store=store, broker=broker,
                                   clock=self.clock, metrics=metrics)
        self.agents = AgentService(store=store, members=self.members, asg_name=asg.name,
                                   clock=self.clock, metrics=metrics,
                                   dead_after=settings.dead_after)
        self.waiting = WaitingRoom(settings=settings, claims=self.claims, clock=self.clock)
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._singletons: set[str] = set()  # periodic jobs running now (never two at once)
        self._last_shortage: assign.ShortageSent | None = None
        self._aws_checked: tuple[float, bool, str] = (0.0, False, "not checked yet")
        # periodic jobs on a thread of their own: they go on while the consumer reconnects
        self.ticker = ticker or Ticker("dispatcher-ticker")

    # --- wiring --------------------------------------------------------------------------
    def attach(self) -> None:
        c = self.consumer
        c.subscribe(topology.CLAIMS, self.on_claim)
        c.subscribe(topology.LEASES, self.on_lease)
        c.subscribe(topology.AGENTS, self.on_agent)
        c.subscribe(topology.WAITING, self.on_waiting)
        c.subscribe_fanout(topology.CAPACITY_EXCHANGE, self.on_capacity)
        t = self.ticker
        t.every(self.settings.wait_poll_interval,
                lambda: self._singleton("serve", self.waiting.serve))
        t.every(SHORTAGE_INTERVAL, lambda: self._singleton("shortage", self.check_shortage))
        c.on_connect(self.waiting.reset)
        c.on_disconnect(self.waiting.reset)  # the ticker must not serve claims of a dead channel

    def run(self) -> None:
        """Consume until stopped; then let running jobs finish and drop the queued ones."""
        self.ticker.start()
        try:
            self.consumer.run(idle=self.idle)
        finally:
            self.ticker.stop()
            self.pool.shutdown(wait=True, cancel_futures=True)

    def idle(self) -> bool:
        return self._pending == 0

    def pool_view(self) -> assign.PoolView:
        return assign.PoolView(free=self.free_count, target=self.settings.target_available,
                               asg=self.members.recent_state())

    # --- jobs ----------------------------------------------------------------------------
    def _submit(self, fn: Callable[[], None], d: Delivery | None = None,
                on_error: Callable[[], None] | None = None) -> None:
        with self._pending_lock:
            self._pending += 1

        def job() -> None:
            try:
                if self.consumer.stopping and d is not None:
                    return  # unacked: redelivered to a dispatcher that stays
                fn()
            except Exception as exc:
                log.exception("job failed; message requeued", extra={"error": repr(exc)})
                if on_error is not None:
                    on_error()
                elif d is not None:
                    time.sleep(0.2)  # a failing AWS must not become a hot requeue loop
                    d.nack(requeue=True)
            finally:
                with self._pending_lock:
                    self._pending -= 1

        self.pool.submit(job)

    def _singleton(self, name: str, fn: Callable[[], None]) -> None:
        if name in self._singletons or self.consumer.stopping:
            return
        self._singletons.add(name)

        def run() -> None:
            try:
                fn()
            finally:
                self._singletons.discard(name)

        self._submit(run, on_error=lambda: None)

    # --- handlers (consumer thread) ------------------------------------------------------
    def on_claim(self, d: Delivery) -> None:
        received = self.clock.now()
        try:
            req = decode(ClaimRequest, d.body)
        except InvalidMessage as exc:
            self._reject(d, ClaimReply(request_id=exc.request_id, status="rejected",
                                       reason=exc.reason))
            self.metrics.claims.labels(outcome="rejected").inc()
            return
        if not d.reply_to:
            d.dead_letter("reply_to: required (nobody could receive the answer)")
            return
        self._submit(lambda: self.claims.handle(d, req, received), d)

    def on_waiting(self, d: Delivery) -> None:
        req = decode(ClaimRequest, d.body)  # InvalidMessage: the consumer dead-letters it
        self.waiting.add(d, req)
        self.metrics.waiting.set(len(self.waiting))

    def on_lease(self, d: Delivery) -> None:
        try:
            req = decode(LeaseRequest, d.body)
        except InvalidMessage as exc:
            self._reject(d, LeaseReply(request_id=exc.request_id, status="rejected",
                                       reason=exc.reason))
            return
        self._submit(lambda: self.leases.handle(d, req), d)

    def on_agent(self, d: Delivery) -> None:
        msg = decode(AgentMessage, d.body)  # InvalidMessage: the consumer dead-letters it
        if isinstance(msg, Heartbeat):
            if self.agents.queue_heartbeat(d, msg):
                self._submit(lambda: self.agents.write_heartbeats(msg.instance_id),
                             on_error=lambda: None)
        elif isinstance(msg, Register):
            seen = time.monotonic()
            self._submit(lambda: self.agents.register(d, msg, seen), d)
        elif isinstance(msg, Deregister):
            self._submit(lambda: self.agents.deregister(d, msg), d)

    def on_capacity(self, d: Delivery) -> None:
        self.waiting.outlook = assign.outlook(decode(CapacityStatus, d.body))
        d.ack()

    def _reject(self, d: Delivery, reply: ClaimReply | LeaseReply) -> None:
        """A request that cannot be parsed: a dead-letter entry, then a ``rejected`` reply."""
        log.warning("request rejected", extra={"request_id": reply.request_id,
                                               "reason": reply.reason, "queue": d.queue})
        d.dead_letter(reply.reason or "invalid request", reply=reply.to_json())

    # --- shortage --------------------------------------------------------------------------
    def check_shortage(self) -> None:
        free = self.store.workers.count("free", healthy_only=True)
        waiting = len(self.waiting)
        self.free_count = free
        self.metrics.free.set(free)
        self.metrics.waiting.set(waiting)
        now = self.clock.now()
        if not assign.shortage_due(free, waiting, self._last_shortage, now,
                                   self.settings.target_available):
            return
        self.broker.publish(topology.SCALING, ShortageEvent(
            type="shortage", free=free, waiting=waiting, sent_at=now_sent_at()).to_json())
        self._last_shortage = assign.ShortageSent(free, waiting, now)
        log.info("shortage reported", extra={"free": free, "waiting": waiting})

    # --- health ----------------------------------------------------------------------------
    def broker_check(self) -> tuple[bool, str]:
        ok = self.consumer.connected.is_set()
        return ok, "connected" if ok else "not connected to the broker"

    def aws_check(self) -> tuple[bool, str]:
        at, ok, detail = self._aws_checked
        if time.monotonic() - at < AWS_CHECK_SECONDS:
            return ok, detail
        try:
            self.store.ping()
            result = (time.monotonic(), True, f"table {self.store.table.name} reachable")
        except Exception as exc:
            result = (time.monotonic(), False, f"DynamoDB: {exc}")
        self._aws_checked = result
        return result[1], result[2]
