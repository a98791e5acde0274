"""The definitions file's per-role permissions, enforced by the real broker (vhost of AMQP_URL).

The file's users, permissions, topic permissions and binding are imported once (renamed per
test run, moved to our vhost; ``rabbitmqctl`` costs ~3.5 s a call here, so one import and one
delete), with the documented example passwords, which also proves the hashes work.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pika
import pika.exceptions as pe
import pytest

from shared import topology
from shared.broker import declare_topology
from tests import iam
from tests.unit.test_deploy_rabbitmq_definitions import EXAMPLE_PASSWORDS

DEFS = json.loads((iam.ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())
ROLES = ("workerpool-service", "workerpool-agent", "workerpool-client")


def ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def role_urls(amqp_url: str) -> Iterator[dict[str, str]]:
    """AMQP URLs (our vhost) for each role of the definitions file, as a uniquely named user."""
    parts = urlsplit(amqp_url)
    vhost = unquote(parts.path.lstrip("/")) or "/"
    suffix = f"-t{os.getpid()}"
    names = {role: role + suffix for role in ROLES}
    doc = {
        "users": [dict(u, name=names[u["name"]]) for u in DEFS["users"] if u["name"] in names],
        "permissions": [dict(p, user=names[p["user"]], vhost=vhost)
                        for p in DEFS["permissions"] if p["user"] in names],
        "topic_permissions": [dict(t, user=names[t["user"]], vhost=vhost)
                              for t in DEFS["topic_permissions"]],
        "bindings": [dict(b, vhost=vhost) for b in DEFS["bindings"]],
    }
    setup = pika.BlockingConnection(pika.URLParameters(amqp_url))
    declare_topology(setup.channel())  # the binding needs its queue
    setup.close()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(doc, fh)
    os.chmod(fh.name, 0o644)  # rabbitmqctl reads it as the rabbitmq user
    ctl("import_definitions", fh.name)
    urls = {role: f"amqp://{quote(names[role])}:{quote(EXAMPLE_PASSWORDS[role])}@"
                  f"{parts.hostname}:{parts.port or 5672}/{quote(vhost, safe='')}"
            for role in ROLES}
    deadline = time.monotonic() + 15  # the import is asynchronous
    while True:
        try:
            pika.BlockingConnection(pika.URLParameters(urls["workerpool-client"])).close()
            break
        except pe.AMQPConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield urls
    finally:
        Path(fh.name).unlink()
        users = ", ".join(f'<<"{n}">>' for n in names.values())
        ctl("eval", f"[rabbit_auth_backend_internal:delete_user(U, <<\"tests\">>) "
                    f"|| U <- [{users}]].")


def channel(url: str) -> tuple[pika.BlockingConnection, object]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    return conn, ch


def refused(fn: object, code: int = 403) -> str:
    with pytest.raises(pe.ChannelClosedByBroker) as exc:
        fn()  # type: ignore[operator]
    assert exc.value.reply_code == code, exc.value
    return str(exc.value.reply_text)


def test_an_agent_publishes_its_messages_through_amq_topic_to_workerpool_agents(
        role_urls: dict[str, str], clean_queues: str) -> None:
    conn, ch = channel(role_urls["workerpool-agent"])
    ch.basic_publish("amq.topic", topology.AGENTS, b'{"type": "heartbeat"}',  # type: ignore[attr-defined]
                     mandatory=True)
    conn.close()
    check = pika.BlockingConnection(pika.URLParameters(clean_queues))
    method, _, body = check.channel().basic_get(topology.AGENTS, auto_ack=True)
    check.close()
    assert method is not None and body == b'{"type": "heartbeat"}'


def test_an_agent_cannot_publish_a_claim_through_the_default_exchange(
        role_urls: dict[str, str]) -> None:
    conn, ch = channel(role_urls["workerpool-agent"])
    text = refused(lambda: ch.basic_publish("", topology.CLAIMS, b"{}"))  # type: ignore[attr-defined]
    assert "amq.default" in text  # the default exchange's name for permission checks
    conn.close()


def test_an_agent_cannot_publish_a_claim_through_amq_topic_either(
        role_urls: dict[str, str]) -> None:
    conn, ch = channel(role_urls["workerpool-agent"])
    text = refused(lambda: ch.basic_publish("amq.topic", topology.CLAIMS, b"{}"))  # type: ignore[attr-defined]
    assert "topic" in text
    conn.close()


def test_an_agent_cannot_read_or_delete_the_services_queues(role_urls: dict[str, str]) -> None:
    for attempt in (lambda ch: ch.basic_get(topology.CLAIMS),
                    lambda ch: ch.basic_get(topology.AGENTS),
                    lambda ch: ch.queue_delete(topology.CLAIMS)):
        conn, ch = channel(role_urls["workerpool-agent"])
        refused(lambda: attempt(ch))
        conn.close()


def test_an_agent_cannot_read_another_agents_command_queue(role_urls: dict[str, str]) -> None:
    queue = "workerpool.agent.i-00000000000000aa1"
    own_conn, own = channel(role_urls["workerpool-agent"])
    own.queue_declare(queue, exclusive=True)  # type: ignore[attr-defined]
    own.basic_consume(queue, lambda *a: None)  # type: ignore[attr-defined]
    for attempt in (lambda ch: ch.basic_consume(queue, lambda *a: None),
                    lambda ch: ch.basic_get(queue),
                    lambda ch: ch.queue_delete(queue)):
        conn, other = channel(role_urls["workerpool-agent"])  # same credentials, another VM
        refused(lambda: attempt(other), code=405)  # RESOURCE_LOCKED: exclusive to its owner
        conn.close()
    own_conn.close()


def test_a_client_sends_a_claim_and_reads_its_reply_but_nothing_else(
        role_urls: dict[str, str], clean_queues: str) -> None:
    conn, ch = channel(role_urls["workerpool-client"])
    ch.basic_consume("amq.rabbitmq.reply-to", lambda *a: None, auto_ack=True)  # type: ignore[attr-defined]
    ch.basic_publish("", topology.CLAIMS, b"{}", pika.BasicProperties(  # type: ignore[attr-defined]
        reply_to="amq.rabbitmq.reply-to"))
    conn.close()
    for attempt in (lambda c: c.basic_get(topology.CLAIMS),
                    lambda c: c.queue_declare("workerpool.mine"),
                    lambda c: c.queue_purge(topology.CLAIMS)):
        conn, ch = channel(role_urls["workerpool-client"])
        refused(lambda: attempt(ch))
        conn.close()


def test_the_services_user_declares_the_topology_and_binds_its_capacity_queue(
        role_urls: dict[str, str]) -> None:
    conn, ch = channel(role_urls["workerpool-service"])
    ch = declare_topology(ch)  # type: ignore[arg-type]
    q = ch.queue_declare("", exclusive=True, auto_delete=True)  # type: ignore[attr-defined]
    ch.queue_bind(q.method.queue, topology.CAPACITY_EXCHANGE)  # type: ignore[attr-defined]
    ch.queue_bind(topology.AGENTS, "amq.topic", topology.AGENTS)  # type: ignore[attr-defined]
    ch.basic_publish("", topology.DEAD_LETTER, b"{}")  # type: ignore[attr-defined]
    assert ch.basic_get(topology.DEAD_LETTER, auto_ack=True)[0] is not None  # type: ignore[attr-defined]
    conn.close()
