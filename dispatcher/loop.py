"""The dispatcher's story: one consumer thread takes messages, a pool of workers does them.

* ``workerpool.claims``: assigned a free worker (one lease transaction), answered
  ``unavailable`` (``wait_seconds: 0``), or moved to the waiting room (``waiting.py``: a
  single-active-consumer queue served every WAIT_POLL_INTERVAL in arrival order).
* ``workerpool.leases``: release, renew (``leases.py``); v2 cancel and status (``cancel.py``,
  ``status.py``). ``workerpool.agents``: ``agents.py``, ``heartbeats.py``.
* ``workerpool.capacity`` (the scaler's fanout): machines free and coming, launches working.
* every second, a shortage (free < TARGET_AVAILABLE, or claims waiting) told to the scaler;
  with LEASE_PASSWORDS, agents' confirmations on our own queue (``passwords.py``).

The consumer thread only decodes and hands out; what touches DynamoDB runs on a
``ThreadPoolExecutor``. Acks go back (``Delivery.ack``, thread-safe) after the reply is
published and the outcome stored. On stop, jobs not yet started are dropped unacked (the
broker redelivers them), running ones finish, and the waiting claims we hold go back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from dispatcher import assign, cancel
from dispatcher.admission import Admission
from dispatcher.agents import AgentService
from dispatcher.attestation import AgentCheck, AgentKeys
from dispatcher.claims import ClaimService
from dispatcher.health import HealthChecks
from dispatcher.heartbeats import FLUSH_SECONDS, HeartbeatService
from dispatcher.leases import LeaseService
from dispatcher.membership import AsgMembers
from dispatcher.metrics import Metrics
from dispatcher.passwords import Passwords
from dispatcher.status import CAPACITY_MAX_AGE, Sources, StatusService
from dispatcher.waiting import WaitingRoom
from shared import topology
from shared.asg import Asg
from shared.broker import BrokerLike, ConsumerLike, Delivery, Handler, from_senders
from shared.clock import Clock, SystemClock
from shared.config import Settings, connection_name
from shared.errors import TransientError
from shared.messages import (
    AgentMessage,
    CancelRequest,
    CapacityStatus,
    ClaimReply,
    ClaimRequest,
    Deregister,
    Heartbeat,
    LeaseReply,
    LeaseRequest,
    Register,
    ShortageEvent,
    now_sent_at,
)
from shared.store import Store
from shared.ticker import Ticker

log = logging.getLogger(__name__)

SHORTAGE_INTERVAL = 1.0
#: How often the warm set of free workers is topped up when low (one Query).
REFILL_INTERVAL = 0.5
#: How often the leases made since are told to the scaler (one event for all of them).
LEASED_INTERVAL = 0.2


class Dispatcher:
    def __init__(self, *, settings: Settings, store: Store, asg: Asg, broker: BrokerLike,
                 consumer: ConsumerLike, metrics: Metrics, clock: Clock | None = None,
                 passwords: Passwords | None = None, ticker: Ticker | None = None,
                 check: AgentCheck | None = None) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.consumer = consumer
        self.metrics = metrics
        self.clock = clock or SystemClock()
        self.pool = ThreadPoolExecutor(settings.dispatcher_threads, thread_name_prefix="dispatcher")
        #: answering claims at their deadline: a thread of its own, which no job stuck on
        #: a hanging AWS can hold up (a deadline is a promise)
        self.deadlines = ThreadPoolExecutor(1, thread_name_prefix="dispatcher-deadlines")
        self.members = AsgMembers(asg)
        self.free_count: int | None = None
        self.claims = ClaimService(settings=settings, store=store, broker=broker,
                                   clock=self.clock, metrics=metrics, pool_view=self.pool_view,
                                   passwords=passwords)
        self.capacity: tuple[CapacityStatus | None, float] = (None, 0.0)  # and when (mono)
        self.leases = LeaseService(
            settings=settings, store=store, broker=broker, clock=self.clock, metrics=metrics,
            status=StatusService(store=store, port=settings.code_server_port,
                                 sources=self.status_sources))
        check = check or AgentCheck(keys=AgentKeys(store.workers.agent_key), certificates=None,
                                    on_refused=lambda d, k: metrics.count_refused(d.queue, k))
        self.agents = AgentService(store=store, members=self.members, asg_name=asg.name,
                                   clock=self.clock, metrics=metrics, check=check,
                                   on_seen=self.claims.free.offer)
        self.heartbeats = HeartbeatService(store=store, clock=self.clock, metrics=metrics,
                                           check=check, free=self.claims.free,
                                           dead_after=settings.dead_after)
        self.waiting = WaitingRoom(settings=settings, claims=self.claims, clock=self.clock)
        self.admission = Admission(settings=settings, metrics=metrics)
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._singletons: set[str] = set()  # periodic jobs running now (never two at once)
        self._last_shortage: assign.ShortageSent | None = None
        self.ticker = ticker or Ticker("dispatcher-ticker")  # goes on while reconnecting
        self.health = HealthChecks(self.consumer, store)  # /health: broker, aws
        self._resubscriptions = 0
        self.name = connection_name("dispatcher")  # in our reports (the scaler sums them)

    # --- wiring --------------------------------------------------------------------------
    def attach(self) -> None:
        c = self.consumer
        c.subscribe(topology.CLAIMS, self.on_claim)
        c.subscribe(topology.LEASES, self.on_lease)
        c.subscribe(topology.AGENTS, self.on_agent)
        # internal queues: only our own services' messages act (PROTOCOL §2 v2)
        c.subscribe(topology.WAITING, self._trusted(self.on_waiting))
        c.subscribe_fanout(topology.CAPACITY_EXCHANGE, self._trusted(self.on_capacity))
        t = self.ticker
        t.every(self.settings.wait_poll_interval,
                lambda: self._singleton("serve", self.waiting.serve))
        t.every(self.settings.wait_poll_interval,
                lambda: self._singleton("expire", self.waiting.expire, self.deadlines))
        t.every(SHORTAGE_INTERVAL, lambda: self._singleton("shortage", self.check_shortage))
        t.every(REFILL_INTERVAL, lambda: self._singleton("refill", self.claims.refill_if_low))
        t.every(LEASED_INTERVAL, lambda: self._singleton("leased", self.claims.tell_scaler))
        t.every(FLUSH_SECONDS, self._flush_heartbeats)
        c.on_connect(self.waiting.reset)
        c.on_connect(self._count_resubscriptions)
        c.on_disconnect(self.waiting.reset)  # the ticker must not serve claims of a dead channel

    def _flush_heartbeats(self) -> None:
        if self.heartbeats.flush():
            self._submit(self.heartbeats.write, on_error=lambda: None)

    def _count_resubscriptions(self) -> None:
        seen = getattr(self.consumer, "resubscriptions", 0)
        if seen > self._resubscriptions:
            self.metrics.resubscriptions.inc(seen - self._resubscriptions)
            self._resubscriptions = seen

    def run(self) -> None:
        """Consume until stopped; then let running jobs finish and drop the queued ones."""
        self.ticker.start()
        try:
            self.consumer.run(idle=self.idle)
        finally:
            self.ticker.stop()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.claims.tell_scaler()  # the last leases' event
            self.deadlines.shutdown(wait=True, cancel_futures=True)

    def idle(self) -> bool:
        return self._pending == 0

    def status_sources(self) -> Sources:
        """For ``status`` answers: the scaler's count, or (none recent) the ASG's sizes."""
        status, at = self.capacity
        age = time.monotonic() - at
        recent = status is not None and age <= CAPACITY_MAX_AGE
        return Sources(capacity=status, capacity_age=age, waiting_here=len(self.waiting),
                       asg=self.members.state if recent else self.members.recent_state())

    def pool_view(self) -> assign.PoolView:
        """For the wording of reasons; no AWS call while DynamoDB does not answer."""
        seen = self.store.reachability
        if seen.down:
            return assign.PoolView(free=None, target=self.settings.target_available,
                                   asg=self.members.state, aws_error=seen.reason)
        return assign.PoolView(free=self.free_count, target=self.settings.target_available,
                               asg=self.members.recent_state())

    # --- jobs ----------------------------------------------------------------------------
    def _submit(self, fn: Callable[[], None], d: Delivery | None = None,
                on_error: Callable[[], None] | None = None,
                executor: ThreadPoolExecutor | None = None) -> None:
        with self._pending_lock:
            self._pending += 1

        def job() -> None:
            try:
                if self.consumer.stopping and d is not None:
                    return  # unacked: redelivered to a dispatcher that stays
                fn()
            except TransientError as exc:  # AWS or the broker: wait it out, unspent
                log.warning("job failed for now; to be tried again",
                            extra={"error": str(exc)[:300]})
                if on_error is not None:
                    on_error()
                elif d is not None:
                    d.retry_later(str(exc)[:300])
            except Exception as exc:  # a bug: requeued (the delivery limit catches poison)
                log.exception("job failed; message requeued", extra={"error": repr(exc)})
                if on_error is not None:
                    on_error()
                elif d is not None:
                    d.nack(requeue=True)
            finally:
                with self._pending_lock:
                    self._pending -= 1

        (executor or self.pool).submit(job)

    def _singleton(self, name: str, fn: Callable[[], None],
                   executor: ThreadPoolExecutor | None = None) -> None:
        if name in self._singletons or self.consumer.stopping:
            return
        self._singletons.add(name)

        def run() -> None:
            try:
                fn()
            finally:
                self._singletons.discard(name)

        self._submit(run, on_error=lambda: None, executor=executor)

    def _trusted(self, handler: Handler) -> Handler:
        def count(d: Delivery) -> None:
            self.metrics.count_refused(d.queue, "untrusted sender")

        return from_senders(self.settings.service_user_names, handler, on_refused=count)

    # --- handlers (consumer thread) ------------------------------------------------------
    def on_claim(self, d: Delivery) -> None:
        received = self.clock.now()
        req = self.admission.admit(d, ClaimRequest, ClaimReply)
        if req is None:
            self.metrics.claims.labels(outcome="rejected").inc()
            return
        if not d.reply_to:
            d.dead_letter("reply_to: required (nobody could receive the answer)")
            return
        self._submit(lambda: self.claims.handle(d, req, received), d)

    def on_waiting(self, d: Delivery) -> None:
        if cancel.is_forwarded_cancel(d.headers):  # a cancel for a claim we may hold
            cancelled = self.admission.decode(d, CancelRequest)
            self._submit(lambda: self.leases.finish_cancel(d, cancelled, self.waiting.withdraw),
                         d)
            return
        req = self.admission.decode(d, ClaimRequest)
        self.waiting.add(d, req)
        self.metrics.waiting.set(len(self.waiting))

    def on_lease(self, d: Delivery) -> None:
        req = self.admission.admit(d, LeaseRequest, LeaseReply)
        if req is not None:
            self._submit(lambda: self.leases.handle(d, req), d)

    def on_agent(self, d: Delivery) -> None:
        msg = self.admission.decode(d, AgentMessage)
        self.admission.count_unknown(msg, msg.type)
        if isinstance(msg, Heartbeat):
            if self.heartbeats.queue(d, msg):
                self._submit(self.heartbeats.write, on_error=lambda: None)
        elif isinstance(msg, Register):
            seen = time.monotonic()
            self._submit(lambda: self.agents.register(d, msg, seen), d)
        elif isinstance(msg, Deregister):
            self._submit(lambda: self.agents.deregister(d, msg), d)

    def on_capacity(self, d: Delivery) -> None:
        status = self.admission.decode(d, CapacityStatus)
        self.capacity = (status, time.monotonic())
        self.waiting.outlook = assign.outlook(status)
        d.ack()

    # --- shortage --------------------------------------------------------------------------
    def free_estimate(self) -> int:
        """Free workers, without a read: the scaler's last count (it counts on every
        reconcile), else what our warm set holds."""
        status, at = self.capacity
        if status is not None and status.free is not None and \
                time.monotonic() - at <= CAPACITY_MAX_AGE:
            return status.free
        return len(self.claims.free)

    def check_shortage(self) -> None:
        """Tell the scaler how many claims wait here (no pool count: the scaler counts, and
        the leased events we send bring its next count forward when free runs low)."""
        free = self.free_estimate()
        waiting = len(self.waiting)
        self.free_count = free
        self.metrics.free.set(free)
        self.metrics.waiting.set(waiting)
        now = self.clock.now()
        if not assign.shortage_due(free, waiting, self._last_shortage, now,
                                   self.settings.target_available):
            return
        self.broker.publish(topology.SCALING, ShortageEvent(
            type="shortage", free=free, waiting=waiting, sent_at=now_sent_at(),
            reporter=self.name).to_json())
        self._last_shortage = assign.ShortageSent(free, waiting, now)
        log.info("shortage reported", extra={"free": free, "waiting": waiting})
