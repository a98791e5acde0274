"""The broker objects of PROTOCOL §2 and our internal ones, declared from this one place.

``deploy/rabbitmq/definitions.json`` is generated from these tables (``workerpool
definitions``) and a test checks the two agree, since a queue redeclared with other
arguments is refused by the broker (406 PRECONDITION_FAILED).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CLAIMS = "workerpool.claims"
LEASES = "workerpool.leases"
AGENTS = "workerpool.agents"
DEAD_LETTER = "workerpool.dead-letter"
#: Claims that found no free worker wait here, in arrival order, held by ONE dispatcher.
WAITING = "workerpool.claims.waiting"
#: Dispatcher → scaler: shortage and leased events (bounded: old events are worthless).
SCALING = "workerpool.scaling"
#: Scaler → every dispatcher: whether the pool can grow (fanout; each binds its own queue).
CAPACITY_EXCHANGE = "workerpool.capacity"
#: v2: events for users (lease ending, extended, ended), routing key ``user.<user_id>``
#: (``events_key``); ``workerpool watch`` binds an exclusive queue of its own to it.
EVENTS_EXCHANGE = "workerpool.events"


def events_key(user_id: str) -> str:
    """The routing key of ``user_id``'s events on EVENTS_EXCHANGE."""
    return f"user.{user_id}"


#: Agents may publish through this exchange (routing key = AGENTS) instead of the default
#: exchange: RabbitMQ checks a default-exchange publish only as write on "amq.default", so
#: only a topic permission on amq.topic can confine agents to workerpool.agents
#: (deploy/rabbitmq/definitions.json). AGENT_EXCHANGE selects it; both routes reach the queue.
AGENTS_TOPIC_EXCHANGE = "amq.topic"

#: Header that says why a message was dead-lettered by a service.
REASON_HEADER = "x-workerpool-reason"
#: Header that names the queue a dead-lettered message came from.
SOURCE_HEADER = "x-workerpool-source-queue"
#: Header that names the broker user who sent a dead-lettered message (its user_id).
SENDER_HEADER = "x-workerpool-sender"
#: Header with an agent's Ed25519 signature of the exact body (PROTOCOL §4 v2), base64.
SIGNATURE_HEADER = "x-workerpool-signature"
#: The reason a message from a broker user outside SERVICE_USERS is dead-lettered with.
UNTRUSTED_SENDER = "untrusted sender"
#: Header on a message sent back to wait out a transient failure: how many times so far.
ATTEMPT_HEADER = "x-workerpool-attempt"

#: Delay queues for transient failures (AWS unreachable): a message goes to the tier's
#: fanout exchange with its own queue as routing key, waits the tier's TTL in a queue nobody
#: consumes, and is dead-lettered back to the default exchange with that routing key, so to
#: its own queue. Unlike a requeue it does not spend the queue's delivery limit (kept for
#: poison: a message that crashes its consumer). (seconds, name), by attempt (retry_tier).
RETRY_TIERS: tuple[tuple[int, str], ...] = (
    (1, "workerpool.retry.1s"), (5, "workerpool.retry.5s"), (30, "workerpool.retry.30s"))


def retry_tier(attempt: int) -> str | None:
    """The delay exchange for a message's ``attempt``-th retry (1-based): 3 × 1 s, 3 × 5 s,
    then 30 s up to 26 attempts (about ten minutes in all); None: give up."""
    if attempt <= 3:
        return RETRY_TIERS[0][1]
    if attempt <= 6:
        return RETRY_TIERS[1][1]
    if attempt <= 26:
        return RETRY_TIERS[2][1]
    return None
#: Header set on waiting claims: epoch microseconds when the claim first arrived.
ARRIVED_HEADER = "x-workerpool-arrived-at"

DELIVERY_LIMIT = 20
#: The dead-letter queue keeps at most this many bytes of message bodies; beyond it the
#: oldest go first (policy ``workerpool-dead-letter``, below). With bodies of at most
#: ``MAX_MESSAGE_BYTES`` that is still a hundred of the largest, tens of thousands of typical ones.
DEAD_LETTER_MAX_BYTES = 100 * 1024 * 1024
#: The broker refuses larger messages (``max_message_size``, deploy/rabbitmq/rabbitmq.conf:
#: keep the two equal); the dispatcher refuses bodies over MAX_BODY_BYTES before decoding.
MAX_MESSAGE_BYTES = 1024 * 1024
#: The largest request or agent message the dispatcher decodes (the largest real one, a
#: register with its identity document and signatures, is a few kilobytes).
MAX_BODY_BYTES = 64 * 1024
#: Events kept for the scaler; older ones are dropped (a newer shortage says more).
SCALING_MAX_LENGTH = 1000


@dataclass(frozen=True)
class QueueSpec:
    name: str
    purpose: str
    arguments: dict[str, Any] = field(default_factory=dict)


def _quorum(**extra: Any) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": DEAD_LETTER,
        "x-delivery-limit": DELIVERY_LIMIT,
        **extra,
    }


#: The public queues are declared with nothing but their type: clients and operators may
#: declare them too (PROTOCOL §2 names only "quorum"), and a declare with other optional
#: arguments would be refused. Dead-lettering and the delivery limit of these queues come
#: from the broker policy below (in the definitions file), which can change without
#: redeclaring anything. Invalid messages never depend on it: services copy them to the
#: dead-letter queue themselves, with x-workerpool-reason.
PUBLIC = {"x-queue-type": "quorum"}

QUEUES: tuple[QueueSpec, ...] = (
    QueueSpec(DEAD_LETTER, "messages no service could use, with x-workerpool-reason", PUBLIC),
    QueueSpec(CLAIMS, "claim requests from clients; dispatchers compete", PUBLIC),
    QueueSpec(LEASES, "release and renew requests from clients; dispatchers compete", PUBLIC),
    QueueSpec(AGENTS, "register / heartbeat / deregister from worker agents", PUBLIC),
    QueueSpec(WAITING, "claims waiting for a free worker, served in arrival order by one "
              "dispatcher", _quorum(**{"x-single-active-consumer": True})),
    # No dead-letter exchange: an event dropped by overflow (or, after DELIVERY_LIMIT
    # crashes, as poison) is worthless, and must not fill the dead-letter queue operators
    # watch. A queue declared before this change keeps its arguments (docs/monitoring.md).
    QueueSpec(SCALING, "shortage and leased events for the active scaler; overflow is dropped",
              {"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT,
               "x-max-length": SCALING_MAX_LENGTH, "x-overflow": "drop-head"}),
    *(QueueSpec(name, f"messages waiting {seconds} s to be tried again (a transient failure)",
                {"x-queue-type": "quorum", "x-message-ttl": seconds * 1000,
                 "x-dead-letter-exchange": ""})
      for seconds, name in RETRY_TIERS),
)

#: Broker policies (deploy/rabbitmq/definitions.json, and the orchestrator's boot in
#: deploy/cloudformation/): what public queues get beyond their type, changeable without
#: redeclaring anything. Services cannot set policies (their broker user has no policymaker
#: tag), so the deploy applies them; the patterns never overlap, since RabbitMQ applies one
#: policy per queue.
POLICIES: tuple[dict[str, Any], ...] = (
    {"name": "workerpool-requests", "pattern": r"^workerpool\.(claims|leases|agents)$",
     "apply-to": "queues", "priority": 0,
     "definition": {"dead-letter-exchange": "", "dead-letter-routing-key": DEAD_LETTER,
                    "delivery-limit": DELIVERY_LIMIT}},
    # bounded, newest kept: a flood of refusals cannot fill the broker's disk
    {"name": "workerpool-dead-letter", "pattern": r"^workerpool\.dead-letter$",
     "apply-to": "queues", "priority": 0,
     "definition": {"max-length-bytes": DEAD_LETTER_MAX_BYTES, "overflow": "drop-head"}},
)

EXCHANGES: tuple[tuple[str, str], ...] = (
    (CAPACITY_EXCHANGE, "fanout"), *((name, "fanout") for _, name in RETRY_TIERS),
    (EVENTS_EXCHANGE, "topic"))

#: (exchange, queue, routing key) bindings declared with the queues.
BINDINGS: tuple[tuple[str, str, str], ...] = (
    (AGENTS_TOPIC_EXCHANGE, AGENTS, AGENTS),
    # an agent confined to amq.topic dead-letters a refused command through it
    (AGENTS_TOPIC_EXCHANGE, DEAD_LETTER, DEAD_LETTER),
    *((name, name, "") for _, name in RETRY_TIERS),
)


def definitions(vhost: str = "/") -> dict[str, Any]:
    """A RabbitMQ definitions document for the queues and exchanges above."""
    return {
        "queues": [
            {"name": q.name, "vhost": vhost, "durable": True, "auto_delete": False,
             "arguments": q.arguments}
            for q in QUEUES
        ],
        "exchanges": [
            {"name": name, "vhost": vhost, "type": kind, "durable": True, "auto_delete": False,
             "internal": False, "arguments": {}}
            for name, kind in EXCHANGES
        ],
        "policies": [{**p, "vhost": vhost} for p in POLICIES],
        "bindings": [
            {"source": src, "vhost": vhost, "destination": queue, "destination_type": "queue",
             "routing_key": key, "arguments": {}}
            for src, queue, key in BINDINGS
        ],
    }
