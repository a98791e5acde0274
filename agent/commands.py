"""The agent's command queue ``workerpool.agent.<instance-id>``: per-lease passwords, and
lease notices from the reaper (``notice``: agent/notice.py).

A dispatcher that leased this worker sends ``set_password`` with code-server's
``hashed-password`` (never the password). The agent writes it into CODE_SERVER_CONFIG
(``auth: password`` too; other keys kept, a stale ``password:`` removed), runs
CODE_SERVER_RESTART_COMMAND if set, waits until ``/healthz`` answers again, and only then
publishes ``password_set`` to the command's ``confirm_to``. Anything that fails means no
confirmation: the dispatcher then gives the claim another worker and this one is recycled.

The hash is a credential too (code-server accepts it as its session cookie), so it is never
logged; the command queue is exclusive to this agent's connection.
"""

from __future__ import annotations

import logging
import os
import shlex
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from agent.health import probe_code_server
from agent.keys import AgentKey
from agent.notice import Notices
from shared import topology
from shared.broker import Consumer, Delivery, Handler, from_senders
from shared.broker.delivery import PublishFn
from shared.config import Settings
from shared.errors import InvalidMessage, TransientError, Unroutable
from shared.messages import (
    AgentCommand,
    Notice,
    PasswordSet,
    SetPassword,
    decode,
    now_sent_at,
)
from shared.queues import command_queue

log = logging.getLogger(__name__)

#: Top-level keys of code-server's config.yaml that the agent owns.
OWNED_KEYS = ("auth", "hashed-password", "password")
HEALTH_POLL = 0.2


def updated_config(text: str, hashed_password: str) -> str:
    """code-server's config with ``auth: password`` and this ``hashed-password``; every
    other line kept as it was, any plain ``password:`` dropped (it would be stale).

    Line-based on purpose: code-server's config is flat ``key: value`` YAML, and the
    agent needs no YAML library for it. The hash is validated (hex or an argon2 string:
    no quotes, spaces or newlines), so the quoted value cannot break the file.
    """
    kept = [line for line in text.splitlines()
            if _top_level_key(line) not in OWNED_KEYS]
    return "\n".join([*kept, "auth: password", f'hashed-password: "{hashed_password}"']) + "\n"


def _top_level_key(line: str) -> str | None:
    if not line or line[0] in " \t#-" or ":" not in line:
        return None
    return line.split(":", 1)[0].strip().strip("'\"")


def write_config(path: Path, hashed_password: str) -> None:
    """Replace the file atomically (a crash leaves the old or the new file, never half),
    keeping its mode (0600 for a new one: it holds a credential)."""
    try:
        text, mode = path.read_text(), path.stat().st_mode & 0o777
    except FileNotFoundError:
        text, mode = "", 0o600
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(updated_config(text, hashed_password))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class PasswordCommands:
    """Handles the command queue's messages on the command consumer's thread."""

    def __init__(self, *, instance_id: str, config_path: str, restart_command: str | None,
                 code_server_url: str, timeout: float, exchange: str,
                 publish: PublishFn, key: AgentKey | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.instance_id = instance_id
        self.config_path = Path(config_path)
        self.restart_command = restart_command
        self.code_server_url = code_server_url
        self.timeout = timeout
        self.exchange = exchange  # "" or amq.topic (AGENT_EXCHANGE), as for agent messages
        self._publish = publish  # the consumer's publish_here: its own confirmed channel
        self._key = key  # confirmations are agent messages: signed (PROTOCOL §4 v2)
        self._tls = tls  # pins code-server's certificate when it serves https

    def handle(self, d: Delivery) -> None:
        try:
            cmd: SetPassword = decode(SetPassword, d.body)
        except InvalidMessage as exc:
            _rejected(d, self.instance_id, exc)
            return
        self.run(d, cmd)

    def run(self, d: Delivery, cmd: SetPassword) -> None:
        ids = {"instance_id": self.instance_id, "command_id": cmd.command_id}
        error = self.apply(cmd.hashed_password)
        if error is not None:
            log.warning("password not applied: %s", error,
                        extra={**ids, "event": "password_failed"})
            d.ack()  # no confirmation: the dispatcher gives up on this worker
            return
        confirm = PasswordSet(type="password_set", instance_id=self.instance_id,
                              command_id=cmd.command_id, sent_at=now_sent_at())
        body = confirm.to_json()
        signed = {topology.SIGNATURE_HEADER: self._key.sign(body)} if self._key else None
        try:
            self._publish(cmd.confirm_to, body, exchange=self.exchange, headers=signed)
        except (Unroutable, TransientError) as exc:
            log.warning("password applied but not confirmed (the dispatcher is gone?)",
                        extra={**ids, "event": "confirm_failed", "error": str(exc)[:300]})
        else:
            log.info("password applied and confirmed", extra={**ids, "event": "password_set"})
        d.ack()

    def apply(self, hashed_password: str) -> str | None:
        """Config written, code-server restarted and healthy: None; else why not."""
        deadline = time.monotonic() + self.timeout
        try:
            write_config(self.config_path, hashed_password)
        except OSError as exc:
            return f"cannot write {self.config_path}: {exc.strerror or exc!r}"
        if self.restart_command:
            try:
                done = subprocess.run(shlex.split(self.restart_command), capture_output=True,
                                      text=True, stdin=subprocess.DEVNULL,
                                      timeout=max(0.1, deadline - time.monotonic()))
            except (OSError, ValueError) as exc:
                return f"restart command failed to start: {exc!r:.300}"
            except subprocess.TimeoutExpired:
                return f"restart command still running after {self.timeout:g}s"
            if done.returncode != 0:
                return (f"restart command exited {done.returncode}: "
                        f"{(done.stderr or done.stdout).strip()[-300:]}")
        while True:
            healthy, reason = probe_code_server(self.code_server_url,
                                                min(2.0, self.timeout), tls=self._tls)
            if healthy:
                return None
            if time.monotonic() + HEALTH_POLL > deadline:
                return f"code-server not healthy after the change: {reason}"
            time.sleep(HEALTH_POLL)


def _rejected(d: Delivery, instance_id: str, exc: InvalidMessage) -> None:
    log.warning("command rejected", extra={"instance_id": instance_id,
                                           "event": "command_rejected", "reason": exc.reason})
    d.dead_letter(exc.reason)


def command_handler(passwords: PasswordCommands, notices: Notices) -> Handler:
    """The command queue's handler: each command to the part of the agent it is for."""

    def handle(d: Delivery) -> None:
        try:
            cmd: SetPassword | Notice = decode(AgentCommand, d.body)
        except InvalidMessage as exc:
            _rejected(d, passwords.instance_id, exc)
            return
        if isinstance(cmd, Notice):
            notices.handle(d, cmd)
        else:
            passwords.run(d, cmd)

    return handle


def listen(*, settings: Settings, connection_name: str, instance_id: str,
           code_server_url: str, key: AgentKey | None = None,
           tls: ssl.SSLContext | None = None) -> Consumer:
    """Start consuming this instance's command queue on a daemon thread of its own (pika:
    one connection per thread). ``own_ready`` is set once the queue exists."""
    # declare=False: agents may configure nothing but their own queue; prefetch 1: one
    # command at a time, in order
    consumer = Consumer(settings.amqp_url, connection_name, declare=False, prefetch=1,
                        dead_letter_exchange=settings.agent_exchange)
    commands = PasswordCommands(
        instance_id=instance_id, config_path=settings.code_server_config,
        restart_command=settings.code_server_restart_command,
        code_server_url=code_server_url, timeout=settings.password_confirm_seconds,
        exchange=settings.agent_exchange, publish=consumer.publish_here, key=key, tls=tls)
    notices = Notices(instance_id=instance_id, wall_command=settings.agent_wall_command,
                      notice_file=settings.agent_notice_file)
    # a command acts only from a service (PROTOCOL §2 v2): the VM's user knows the agents'
    # broker credentials, and must not set another VM's password or write to its terminals
    consumer.subscribe_own(command_queue(instance_id), from_senders(
        settings.service_user_names, command_handler(commands, notices)))
    threading.Thread(target=consumer.run, name="commands", daemon=True).start()
    return consumer
