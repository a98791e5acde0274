"""The broker permission per-lease passwords need (docs/deploy.md, "Per-lease code-server
passwords"), enforced by the real broker: the agents' user of definitions.json, with its
topic permission widened to PROPOSED_TOPIC_WRITE, may confirm to a dispatcher's confirm
queue through amq.topic, and still may not publish a claim.

The definitions file and the orchestrator's ``broker-users.json`` in the template carry the
same value (tests/unit/test_deploy_template.py compares the two): this test proves it is
the one to put in both.
"""

from __future__ import annotations

import json
import os
import re
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
from shared.queues import command_queue, confirm_queue
from tests import iam
from tests.unit.test_deploy_rabbitmq_definitions import EXAMPLE_PASSWORDS

PROPOSED_TOPIC_WRITE = r"^workerpool\.(agents|dead-letter|confirm\.[A-Za-z0-9_-]+)$"
DEFS = json.loads((iam.ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())
ROLE = "workerpool-agent"


def ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def agent_url(amqp_url: str) -> Iterator[str]:
    parts = urlsplit(amqp_url)
    vhost = unquote(parts.path.lstrip("/")) or "/"
    name = f"{ROLE}-pw{os.getpid()}"
    doc = {
        "users": [dict(u, name=name) for u in DEFS["users"] if u["name"] == ROLE],
        "permissions": [dict(p, user=name, vhost=vhost)
                        for p in DEFS["permissions"] if p["user"] == ROLE],
        "topic_permissions": [dict(t, user=name, vhost=vhost, write=PROPOSED_TOPIC_WRITE)
                              for t in DEFS["topic_permissions"] if t["user"] == ROLE],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(doc, fh)
    os.chmod(fh.name, 0o644)  # rabbitmqctl reads it as the rabbitmq user
    ctl("import_definitions", fh.name)
    url = (f"amqp://{quote(name)}:{quote(EXAMPLE_PASSWORDS[ROLE])}@{parts.hostname}:"
           f"{parts.port or 5672}/{quote(vhost, safe='')}")
    deadline = time.monotonic() + 15  # the import is asynchronous
    while True:
        try:
            pika.BlockingConnection(pika.URLParameters(url)).close()
            break
        except pe.AMQPConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield url
    finally:
        Path(fh.name).unlink()
        ctl("eval", f'rabbit_auth_backend_internal:delete_user(<<"{name}">>, <<"tests">>).')


def test_the_agents_topic_permission_is_the_documented_and_deployed_one() -> None:
    doc = (iam.ROOT / "docs" / "deploy.md").read_text()
    assert PROPOSED_TOPIC_WRITE in doc
    defs = json.loads((iam.ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())
    assert defs["topic_permissions"][0]["write"] == PROPOSED_TOPIC_WRITE
    assert re.search(PROPOSED_TOPIC_WRITE, confirm_queue("dispatcher@ip-10-0-1-5.ec2:42"))
    assert not re.search(PROPOSED_TOPIC_WRITE, topology.CLAIMS)


def test_an_agent_declares_its_command_queue_and_confirms_through_amq_topic_only(
        agent_url: str, clean_queues: str) -> None:
    confirm = confirm_queue(f"dispatcher@test:{os.getpid()}")
    service = pika.BlockingConnection(pika.URLParameters(clean_queues))
    sch = service.channel()
    sch.queue_declare(confirm, exclusive=True, auto_delete=True)
    sch.queue_bind(confirm, "amq.topic", routing_key=confirm)

    conn = pika.BlockingConnection(pika.URLParameters(agent_url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(command_queue("i-0123456789abcdef0"), exclusive=True, auto_delete=True)
    ch.basic_publish("amq.topic", confirm, b'{"type": "password_set"}', mandatory=True)
    with pytest.raises(pe.ChannelClosedByBroker) as refused:  # a claim: still refused
        ch.basic_publish("amq.topic", topology.CLAIMS, b"{}")
    assert refused.value.reply_code == 403
    conn.close()

    method, _, body = sch.basic_get(confirm, auto_ack=True)
    service.close()
    assert method is not None and body == b'{"type": "password_set"}'
