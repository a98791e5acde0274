"""Per-lease code-server passwords (LEASE_PASSWORDS, docs/dispatcher.md): make one, send its
hash to the worker's agent, wait for the agent to say code-server uses it.

``set_for`` runs on a claim thread right after the lease is written: it publishes a
``set_password`` command to ``workerpool.agent.<instance-id>`` (mandatory: no queue means no
agent listening) and waits up to PASSWORD_CONFIRM_SECONDS for the agent's ``password_set``
on this dispatcher's confirm queue. ``on_confirm`` runs on the consumer thread and wakes the
waiting claim thread. The plain password exists only in the claim thread's memory and in
the reply to the claimant: it is never stored, logged or sent anywhere else.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from dataclasses import dataclass, field

from dispatcher.attestation import AgentCheck
from shared.broker import BrokerLike, Delivery
from shared.errors import Unroutable
from shared.messages import PasswordSet, SetPassword, decode, now_sent_at
from shared.queues import command_queue

log = logging.getLogger(__name__)

#: 18 random bytes: a 24-character URL-safe password of 144 bits.
PASSWORD_BYTES = 18


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def code_server_hash(password: str) -> str:
    """code-server's ``hashed-password`` in its SHA-256 form (the hex digest; code-server
    treats any value without ``$argon`` as this, src/node/util.ts getPasswordMethod).

    A fast hash is enough here because the password is 144 random bits, not chosen by a
    person: no dictionary applies, and 2^144 guesses are out of reach whatever the hash
    costs. (argon2 exists to protect weak passwords; it would need argon2-cffi.)
    """
    return hashlib.sha256(password.encode()).hexdigest()


@dataclass
class _PendingCommand:
    instance_id: str
    done: threading.Event = field(default_factory=threading.Event)


class Passwords:
    """Thread-safe: ``set_for`` from claim threads, ``on_confirm`` from the consumer thread."""

    def __init__(self, *, broker: BrokerLike, confirm_queue: str, timeout: float,
                 check: AgentCheck | None = None) -> None:
        self.broker = broker
        self.check = check  # confirmations are agent messages: signed by the agent's key
        self.confirm_queue = confirm_queue
        self.timeout = timeout
        self._waiting: dict[str, _PendingCommand] = {}
        self._lock = threading.Lock()

    def set_for(self, instance_id: str, ids: dict[str, str | None]) -> str | None:
        """A new password, once the worker's agent confirmed code-server uses it; None when
        the agent is not listening or does not confirm in time (the worker's code-server
        is then in an unknown state: the caller takes it out)."""
        password = new_password()
        # the command id is random and single-use: only the agent that read the command
        # can confirm it (agents share broker credentials, so the sender proves nothing)
        command = SetPassword(type="set_password", command_id=secrets.token_urlsafe(16),
                              hashed_password=code_server_hash(password),
                              confirm_to=self.confirm_queue, sent_at=now_sent_at())
        pending = _PendingCommand(instance_id)
        with self._lock:
            self._waiting[command.command_id] = pending
        extra = {**ids, "command_id": command.command_id}
        try:
            try:
                # transient: nothing to keep once the agent is gone (and the hash is a
                # credential to code-server: it should not rest on the broker's disk)
                self.broker.publish(command_queue(instance_id), command.to_json(),
                                    persistent=False)
            except Unroutable:
                log.warning("password not set: the worker's agent is not listening",
                            extra=extra)
                return None
            if not pending.done.wait(self.timeout):
                log.warning("password not set: the agent did not confirm within %gs",
                            self.timeout, extra=extra)
                return None
        finally:
            with self._lock:
                self._waiting.pop(command.command_id, None)
        log.info("password set on the worker", extra=extra)
        return password

    def on_confirm(self, d: Delivery) -> None:
        """A ``password_set`` from an agent (consumer thread). Unknown or late ones are
        dropped; an invalid one is dead-lettered by the consumer (InvalidMessage)."""
        msg: PasswordSet = decode(PasswordSet, d.body)
        if self.check is not None and not self.check.verified(d, msg.instance_id):
            return
        with self._lock:
            pending = self._waiting.get(msg.command_id)
        if pending is not None and pending.instance_id == msg.instance_id:
            pending.done.set()
        else:
            log.info("confirmation for no waiting command (late or foreign); ignored",
                     extra={"instance_id": msg.instance_id, "command_id": msg.command_id})
        d.ack()
