"""The client's broker permissions with ``workerpool watch`` (issue 17): besides its claims
and replies, a client may declare only server-named queues (``amq.gen-…``), bind them to
``workerpool.events`` and read them, and a topic permission limits the binding key to its own
``user.<broker user>``. The same in the stack's broker-users.json (test_deploy_template)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from shared import topology

ROOT = Path(__file__).resolve().parents[2]
DEFS = json.loads((ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())


def _perm(user: str) -> dict[str, str]:
    return next(p for p in DEFS["permissions"] if p["user"] == user)


def test_clients_configure_only_server_named_queues_and_read_only_theirs_and_events() -> None:
    client = _perm("workerpool-client")
    assert re.fullmatch(client["configure"], "amq.gen-JzTY20BRgKO-HjmUJj0wLg")
    for queue in [q.name for q in topology.QUEUES] + ["workerpool.mine", "amq.default"]:
        assert not re.search(client["configure"], queue), queue
        assert not re.search(client["read"], queue), queue
    assert re.fullmatch(client["read"], topology.EVENTS_EXCHANGE)
    assert re.fullmatch(client["read"], "amq.rabbitmq.reply-to")
    assert re.fullmatch(client["write"], "amq.default")
    assert not re.search(client["write"], topology.EVENTS_EXCHANGE)  # clients never publish


def test_a_client_binds_its_own_routing_key_only() -> None:
    (topic,) = [t for t in DEFS["topic_permissions"] if t["user"] == "workerpool-client"]
    assert topic["exchange"] == topology.EVENTS_EXCHANGE and topic["write"] == "^$"
    # RabbitMQ expands {username} to the connection's broker user before matching
    own = topic["read"].replace("{username}", "alice")
    assert re.fullmatch(own, topology.events_key("alice"))
    for key in ("user.bob", "user.#", "user.*", "#", "user.alice.#", "user.alicex"):
        assert not re.fullmatch(own, key), key


def test_the_events_exchange_is_a_durable_topic_exchange_of_the_topology() -> None:
    (ex,) = [e for e in DEFS["exchanges"] if e["name"] == topology.EVENTS_EXCHANGE]
    assert (ex["type"], ex["durable"], ex["auto_delete"]) == ("topic", True, False)
    assert topology.events_key("a.b@c") == "user.a.b@c"
