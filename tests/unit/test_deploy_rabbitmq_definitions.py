"""deploy/rabbitmq/definitions.json: the topology of shared.topology, per-role users, no guest,
and password hashes of the documented example passwords (to be replaced)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

from shared import topology

DEFS = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq"
                   / "definitions.json").read_text(encoding="utf-8"))
#: the example passwords docs/deploy.md documents; the hashes in the file are of these
EXAMPLE_PASSWORDS = {
    "workerpool-admin": "example-admin-password-REPLACE-ME",
    "workerpool-service": "example-service-password-REPLACE-ME",
    "workerpool-agent": "example-agent-password-REPLACE-ME",
    "workerpool-client": "example-client-password-REPLACE-ME",
}
#: the one binding the topology does not declare: agents publish through amq.topic, where a
#: topic permission can limit their routing key (docs/deploy.md "Broker permissions")
def test_queues_exchanges_and_policies_are_exactly_those_of_the_topology() -> None:
    expected = topology.definitions("/")
    key = lambda d: d["name"]  # noqa: E731
    assert sorted(DEFS["queues"], key=key) == sorted(expected["queues"], key=key)
    assert sorted(DEFS["exchanges"], key=key) == sorted(expected["exchanges"], key=key)
    assert DEFS["bindings"] == expected["bindings"]
    assert DEFS["policies"] == expected["policies"]


def test_there_is_one_user_per_role_and_no_guest() -> None:
    assert {u["name"] for u in DEFS["users"]} == set(EXAMPLE_PASSWORDS)
    assert {p["user"] for p in DEFS["permissions"]} == set(EXAMPLE_PASSWORDS)
    assert [u["name"] for u in DEFS["users"] if u["tags"]] == ["workerpool-admin"]


def test_each_password_hash_is_the_salted_sha256_of_the_documented_example_password() -> None:
    for user in DEFS["users"]:
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        raw = base64.b64decode(user["password_hash"])
        salt, digest = raw[:4], raw[4:]
        password = EXAMPLE_PASSWORDS[user["name"]]
        assert digest == hashlib.sha256(salt + password.encode()).digest(), user["name"]
        assert "REPLACE-ME" in password  # marked, in the file's _comment and in the docs
    assert "REPLACE" in DEFS["_comment"]


def _perm(user: str) -> dict[str, str]:
    return next(p for p in DEFS["permissions"] if p["user"] == user)


def test_agents_may_write_only_to_amq_topic_with_the_agents_routing_key() -> None:
    agent = _perm("workerpool-agent")
    assert re.fullmatch(agent["write"], "amq.topic")
    assert not re.search(agent["write"], "amq.default")
    topic = next(t for t in DEFS["topic_permissions"] if t["user"] == "workerpool-agent")
    assert re.search(topic["write"], topology.AGENTS)
    assert not re.search(topic["write"], topology.CLAIMS)
    assert re.fullmatch(topic["write"], "workerpool.confirm.dispatcher-host-42")  # passwords
    for queue in (topology.CLAIMS, topology.LEASES, topology.AGENTS, topology.DEAD_LETTER):
        assert not re.search(agent["read"], queue) and not re.search(agent["configure"], queue)
    assert re.search(agent["read"], "workerpool.agent.i-0123456789abcdef0")


def test_clients_configure_only_server_named_queues_and_read_only_their_replies() -> None:
    client = _perm("workerpool-client")
    # `workerpool watch` declares an exclusive, server-named queue on workerpool.events
    assert re.fullmatch(client["configure"], "amq.gen-AbC123")
    for name in (topology.CLAIMS, topology.DEAD_LETTER, "workerpool.agent.i-0abc", "x"):
        assert not re.search(client["configure"], name), name
        assert not re.search(client["read"], name), name
    assert re.search(client["read"], "amq.rabbitmq.reply-to")


def test_a_client_reads_only_its_own_users_events() -> None:
    (topic,) = [t for t in DEFS["topic_permissions"] if t["user"] == "workerpool-client"]
    assert topic["exchange"] == topology.EVENTS_EXCHANGE and topic["write"] == "^$"
    assert topic["read"] == "^user\\.{username}$"  # RabbitMQ expands {username}


# --- dead-letter hygiene (issue 16, item 8) --------------------------------------------
def _policies_of(queue: str) -> list[str]:
    return [p["name"] for p in DEFS["policies"] if re.search(p["pattern"], queue)]


def test_the_dead_letter_queue_is_bounded_by_a_policy_that_keeps_the_newest() -> None:
    assert _policies_of(topology.DEAD_LETTER) == ["workerpool-dead-letter"]
    (policy,) = [p for p in DEFS["policies"] if p["name"] == "workerpool-dead-letter"]
    assert policy["apply-to"] == "queues"
    assert policy["definition"] == {"max-length-bytes": topology.DEAD_LETTER_MAX_BYTES,
                                    "overflow": "drop-head"}
    # a policy, not an argument: the queue stays declarable with its type alone
    (queue,) = [q for q in DEFS["queues"] if q["name"] == topology.DEAD_LETTER]
    assert queue["arguments"] == {"x-queue-type": "quorum"}


def test_no_queue_is_matched_by_two_policies() -> None:
    for queue in DEFS["queues"]:
        assert len(_policies_of(queue["name"])) <= 1, queue["name"]


def test_scaling_overflow_is_dropped_not_dead_lettered() -> None:
    (queue,) = [q for q in DEFS["queues"] if q["name"] == topology.SCALING]
    args = queue["arguments"]
    assert (args["x-max-length"], args["x-overflow"]) == (topology.SCALING_MAX_LENGTH, "drop-head")
    assert not {"x-dead-letter-exchange", "x-dead-letter-routing-key"} & set(args)
    assert not _policies_of(topology.SCALING)  # nor does a policy give it one


def test_the_broker_refuses_messages_larger_than_the_code_assumes() -> None:
    root = Path(__file__).resolve().parents[2]
    conf = dict(line.split(" = ", 1) for line in (root / "deploy" / "rabbitmq" / "rabbitmq.conf")
                .read_text().splitlines() if line and not line.startswith("#"))
    assert int(conf["max_message_size"]) == topology.MAX_MESSAGE_BYTES
    assert topology.MAX_BODY_BYTES < topology.MAX_MESSAGE_BYTES <= 512 * 1024 * 1024
    # the stack's broker on the orchestrator host gets the same, and the Prometheus plugin
    template = (root / "deploy" / "cloudformation" / "workerpool.yaml").read_text()
    assert f"echo 'max_message_size = {topology.MAX_MESSAGE_BYTES}' >/etc/rabbitmq/rabbitmq.conf" \
        in template
    assert "echo '[rabbitmq_prometheus].' >/etc/rabbitmq/enabled_plugins" in template
