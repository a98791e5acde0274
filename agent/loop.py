"""The agent's loop: identity from IMDS, then register and heartbeat until asked to stop.

Thin on purpose: ``agent.heartbeat`` decides what to do next; this module publishes, probes
code-server, sleeps, and logs what an operator reading ``journalctl -u workerpool-agent``
needs (what it waits for, every publish failure and recovery, every health flip).
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent import AGENT_VERSION
from agent.health import probe
from agent.heartbeat import (
    BeatState,
    Timing,
    after_failure,
    after_heartbeat,
    after_register,
    heartbeat_verdict,
    next_step,
)
from agent.imds import Attestation, Identity, Imds, ImdsBadAnswer, ImdsUnavailable
from agent.keys import AgentKey
from agent.shutdown import StopDecision
from shared import topology
from shared.broker import Publisher
from shared.errors import TransientError, Unroutable
from shared.messages import Deregister, Heartbeat, Message, Register, now_sent_at

log = logging.getLogger(__name__)
#: Runtime's logger for lifecycle lines, which LOG_LEVEL never hides.
lifecycle = logging.getLogger("workerpool.lifecycle")

IMDS_MAX_WAIT = 10.0  # longest pause between two IMDS attempts while waiting for identity


class Agent:
    """One agent: ``wait_for_identity()``, ``run()``, then ``stop(decision)``.

    ``wait(seconds)`` sleeps and returns True when the process is asked to stop (it is
    ``Runtime.wait``), so every pause of the loop is also where SIGTERM is noticed.
    """

    def __init__(
        self,
        *,
        imds: Imds,
        publisher: Publisher,
        key: AgentKey,
        code_server_url: str,
        timing: Timing,
        wait: Callable[[float], bool],
        declare: Callable[[], None] | None = None,
        exchange: str = "",
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._imds = imds
        self._pub = publisher
        self._key = key
        self.tls_fingerprint: str | None = None  # code-server's certificate, when it has one
        self.tls: ssl.SSLContext | None = None  # pins that certificate for the probe
        self._exchange = exchange  # "" or amq.topic (AGENT_EXCHANGE): both reach the queue
        self._code_server_url = code_server_url
        self.timing = timing
        self._wait = wait
        self._declare = declare
        self._clock = clock
        self._rand = rand
        self.identity: Identity | None = None
        self.attestation: Attestation | None = None
        self.state: BeatState | None = None
        self.waiting_for: str | None = "waiting for identity from IMDS"
        self.code_server: tuple[bool, str] = (False, "not probed yet")
        #: the user's last activity in code-server (epoch s), from its /healthz (v2)
        self.last_activity: float | None = None

    # --- /health checks (called from the health server's threads; read-only) ----------
    def heartbeat_check(self) -> tuple[bool, str]:
        return heartbeat_verdict(self.state, self._clock(), self.timing, self.waiting_for)

    def code_server_check(self) -> tuple[bool, str]:
        return self.code_server

    # --- identity -----------------------------------------------------------------------
    def wait_for_identity(self) -> Identity | None:
        """Ask IMDS until it answers well (never gives up); None if asked to stop first."""
        delay = 0.5
        while True:
            try:
                self.identity = self._imds.identity()
                self.attestation = self._imds.attestation()
            except (ImdsUnavailable, ImdsBadAnswer) as exc:
                self.waiting_for = f"waiting for identity from IMDS: {exc}"
            except Exception as exc:  # a bug must not kill the agent on a VM nobody watches
                log.exception("reading IMDS failed unexpectedly")
                self.waiting_for = f"waiting for identity from IMDS: {exc!r}"
            else:
                self.waiting_for = "waiting for the broker to confirm the registration"
                log.info("identity from IMDS", extra={
                    "event": "identity", **vars(self.identity),
                    "attested": self.attestation is not None})
                return self.identity
            log.warning("waiting for IMDS", extra={"event": "waiting", "reason": self.waiting_for,
                                                   "endpoint": self._imds.endpoint,
                                                   "retry_in": delay})
            if self._wait(delay):
                return None
            delay = min(delay * 2, IMDS_MAX_WAIT)

    # --- register / heartbeat -----------------------------------------------------------
    def run(self, on_first_registration: Callable[[], None] | None = None) -> None:
        """Register and heartbeat until asked to stop. Never raises for broker trouble."""
        assert self.identity is not None, "wait_for_identity() first"
        state = self.state = BeatState()
        while True:
            now = self._clock()
            step = next_step(state, now)
            if step.action == "wait":
                if self._wait(max(0.0, step.until - now)):
                    return
                continue
            if step.action == "register":
                error = self._publish(self._register(), "register", state)
                if error is None:
                    state = after_register(state, self._clock())
                    self._log_registered(state)
                    if state.registrations == 1 and on_first_registration is not None:
                        on_first_registration()
            else:
                healthy = self._probe()
                error = self._publish(self._heartbeat(healthy), "heartbeat", state)
                if error is None:
                    state = after_heartbeat(state, self._clock(), self.timing)
                    log.debug("heartbeat confirmed", extra=self._ids(healthy=healthy))
            if error is not None:
                state = after_failure(state, self._clock(), self.timing, self._rand())
                log.warning("%s not confirmed; will retry", step.action, extra=self._ids(
                    event="publish_failed", error=error, failures=state.failures,
                    retry_in=round(state.retry_at - self._clock(), 2)))
            self.state = state

    def stop(self, decision: StopDecision) -> bool:
        """After ``run()``: log what this stop means (agent.shutdown decided) and deregister
        only when told to; True if a deregister was confirmed."""
        lifecycle.info("stopping: %s", "deregistering" if decision.deregister
                       else "keeping the registration", extra=self._ids(
                           event="stopping", deregister=decision.deregister,
                           reason=decision.reason))
        return self.deregister() if decision.deregister else False

    def deregister(self) -> bool:
        """Tell the dispatchers we are going (reason "shutdown"); True if confirmed."""
        if self.identity is None:
            return False
        msg = Deregister(type="deregister", instance_id=self.identity.instance_id,
                         reason="shutdown", sent_at=now_sent_at())
        error = self._publish(msg, "deregister", self.state or BeatState())
        if error is not None:
            # the connection may have died unnoticed while idle: one more try, on a fresh
            # connection (the publisher reconnects), still well inside the 10 s stop budget
            error = self._publish(msg, "deregister", self.state or BeatState())
        if error is None:
            log.info("deregistered", extra=self._ids(event="deregistered"))
        else:
            log.warning("deregister not confirmed", extra=self._ids(
                event="deregister_failed", error=error))
        return error is None

    # --- helpers ------------------------------------------------------------------------
    def _register(self) -> Register:
        ident = self.identity
        assert ident is not None
        proof = self.attestation
        return Register(type="register", instance_id=ident.instance_id,
                        private_ip=ident.private_ip, public_ip=ident.public_ip,
                        instance_type=ident.instance_type,
                        availability_zone=ident.availability_zone,
                        agent_version=AGENT_VERSION, sent_at=now_sent_at(),
                        identity_document=proof.document if proof else None,
                        identity_signature=proof.signature if proof else None,
                        agent_key=self._key.public, tls_fingerprint=self.tls_fingerprint)

    def _heartbeat(self, healthy: bool) -> Heartbeat:
        assert self.identity is not None
        active = self.last_activity
        return Heartbeat(type="heartbeat", instance_id=self.identity.instance_id,
                         healthy=healthy, sent_at=now_sent_at(),
                         last_activity=datetime.fromtimestamp(active, UTC) if active else None)

    def _probe(self) -> bool:
        got = probe(self._code_server_url, self.timing.probe_timeout, tls=self.tls)
        healthy, reason = got.healthy, got.reason
        self.last_activity = got.last_activity
        if healthy != self.code_server[0]:
            level = logging.INFO if healthy else logging.WARNING
            log.log(level, "code-server %s", "healthy" if healthy else "unhealthy",
                    extra=self._ids(event="code_server", healthy=healthy, reason=reason))
        self.code_server = (healthy, reason)
        return healthy

    def _publish(self, msg: Message, what: str, state: BeatState) -> str | None:
        """Publish with confirm; None when confirmed, else why not (in words)."""
        body = msg.to_json()
        try:
            self._pub.publish(topology.AGENTS, body, exchange=self._exchange,
                              headers={topology.SIGNATURE_HEADER: self._key.sign(body)})
        except Unroutable:
            # the queue is missing (a fresh broker): declare it, then the retry can land
            self._try_declare()
            return f"{topology.AGENTS} does not exist (declared it for the next try)"
        except TransientError as exc:
            return f"broker unreachable: {str(exc)[:300]}"
        except Exception as exc:  # never crash on a VM: log it, back off, try again
            log.exception("publish failed unexpectedly", extra=self._ids(kind=what))
            return f"unexpected error: {exc!r:.300}"
        if state.failures:
            log.info("broker reachable again", extra=self._ids(
                event="broker_back", kind=what, after_failures=state.failures))
        return None

    def _try_declare(self) -> None:
        if self._declare is None:
            return
        try:
            self._declare()
        except Exception as exc:  # e.g. no configure permission: the services will declare
            log.warning("could not declare the topology", extra=self._ids(error=repr(exc)))

    def _log_registered(self, state: BeatState) -> None:
        periodic = state.registrations > 1 and self.state is not None and self.state.registered
        level = logging.DEBUG if periodic else logging.INFO
        log.log(level, "registered", extra=self._ids(
            event="registered", registrations=state.registrations, **{
                k: v for k, v in vars(self.identity).items() if k != "instance_id"}))
        if state.registrations == 1:
            self.waiting_for = None

    def _ids(self, **fields: Any) -> dict[str, Any]:
        return {"instance_id": self.identity.instance_id if self.identity else None, **fields}
