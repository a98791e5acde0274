"""PROTOCOL §4: what agents send (``workerpool.agents``), and the per-lease password
command a dispatcher sends one agent and its confirmation."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field

from shared.messages.base import InstanceId, Ip, Message, ShortText
from shared.messages.events import UserEvent

# --- §4 agent messages -------------------------------------------------------------------
#: base64 of a raw 32-byte Ed25519 public key.
AGENT_KEY = r"^[A-Za-z0-9+/]{43}=$"
#: SHA-256 of a certificate, hex (colons allowed, as openssl prints it).
FINGERPRINT = r"^([0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$"


class Register(Message):
    type: Literal["register"]
    instance_id: InstanceId
    private_ip: Ip | None = None
    public_ip: Ip | None = None
    instance_type: ShortText | None = None
    availability_zone: ShortText | None = None
    agent_version: ShortText | None = None
    sent_at: datetime | None = None
    # v2 (§4): attestation and the agent's key
    identity_document: Annotated[str, Field(max_length=8192)] | None = None
    identity_signature: Annotated[str, Field(max_length=4096)] | None = None
    agent_key: Annotated[str, Field(pattern=AGENT_KEY)] | None = None
    # v2: the SHA-256 fingerprint of code-server's TLS certificate on the VM
    tls_fingerprint: Annotated[str, Field(pattern=FINGERPRINT)] | None = None


class Heartbeat(Message):
    type: Literal["heartbeat"]
    instance_id: InstanceId
    healthy: bool
    sent_at: datetime | None = None
    #: v2: the user's last activity in code-server (its /healthz ``lastHeartbeat``); null
    #: when code-server has seen none or does not say (a v1 agent omits it)
    last_activity: datetime | None = None


class Deregister(Message):
    type: Literal["deregister"]
    instance_id: InstanceId
    reason: ShortText | None = None
    sent_at: datetime | None = None


AgentMessage = Annotated[Register | Heartbeat | Deregister, Field(discriminator="type")]


# --- internal: dispatcher <-> one agent (per-lease code-server passwords) ---------------
#: code-server's ``hashed-password``: an argon2 PHC string or the 64-hex SHA-256 of the
#: password (code-server's src/node/util.ts getPasswordMethod). Strict, because the agent
#: writes it into a YAML file: no spaces, quotes or newlines can get through.
HASHED_PASSWORD = r"^([0-9a-f]{64}|\$argon2(id|i|d)\$[A-Za-z0-9+/=$,.-]{20,300})$"
#: Where a confirmation goes: a dispatcher's own queue (also its amq.topic routing key).
CONFIRM_QUEUE = r"^workerpool\.confirm\.[A-Za-z0-9_-]{1,200}$"
#: Command ids are random and single-use (they are what makes a confirmation credible).
COMMAND_ID = r"^[A-Za-z0-9_-]{16,64}$"


#: A command's id. Agents also accept it as ``request_id`` (its name before 2026-12), so
#: they may be upgraded before the dispatchers.
CommandId = Annotated[str, Field(pattern=COMMAND_ID,
                                 validation_alias=AliasChoices("command_id", "request_id"))]


class SetPassword(Message):
    """Dispatcher → ``workerpool.agent.<instance-id>``: set code-server's hashed-password,
    restart it, then confirm to ``confirm_to``. Carries a hash only, never the password."""

    type: Literal["set_password"]
    command_id: CommandId
    hashed_password: Annotated[str, Field(pattern=HASHED_PASSWORD)]
    confirm_to: Annotated[str, Field(pattern=CONFIRM_QUEUE)]
    sent_at: datetime

    def __repr_args__(self) -> Any:  # never show the hash in a repr or a traceback
        return [(k, "***" if k == "hashed_password" else v) for k, v in super().__repr_args__()]


class PasswordSet(Message):
    """Agent → the dispatcher's confirm queue: the command ``command_id`` is applied and
    code-server answers ``/healthz`` again."""

    type: Literal["password_set"]
    instance_id: InstanceId
    command_id: CommandId
    sent_at: datetime


class Notice(Message):
    """Reaper → ``workerpool.agent.<instance-id>``: tell the VM's user about their lease
    (a line to their terminals with ``wall`` and the notice file). No confirmation."""

    type: Literal["notice"]
    command_id: CommandId
    event: UserEvent
    sent_at: datetime


#: What an agent's command queue carries.
AgentCommand = Annotated[SetPassword | Notice, Field(discriminator="type")]
