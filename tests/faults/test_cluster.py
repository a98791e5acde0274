"""A broker node dies in the middle of a burst (issue 14, item 12: "Outgrowing one broker").

A 3-node RabbitMQ cluster on this machine (``scripts/cluster``: wp1-wp3 on AMQP 5681-5683,
every quorum queue with a member on each node), moto, and two real dispatchers whose
AMQP_URL lists all three nodes, one of them consuming through the node that leads
``workerpool.claims``. 40 workers are free; 60 users claim one each (wait_seconds 10).
After the 30th claim that node is killed (SIGKILL: a crash, not a clean stop): the
dispatcher on it reconnects to a survivor (the URL list), the queue elects a new leader.

The client side, honestly: a reply over direct reply-to goes to the channel that sent the
request, so a client connected to the dead node loses its pending replies with it.

* Client A is connected to a node that is not killed and keeps its connection.
* Client B is connected to the node that is killed. When it loses its connection it
  reconnects with the whole list and resends every claim that has no reply yet, with the
  same request_id (and correlation_id): PROTOCOL §3, a repeated request gets the same
  outcome and never a second worker.

Both publish with confirms and resend on a nack (``Client`` says why). Both count every
reply they get, per correlation id and message id, and listen on after the last. Then:
every claim answered exactly once (one message id: a reply whose publish a dispatcher
retried after its node died, confirm unseen, may come twice with the same id), 40 assigned to 40 different workers and the table agreeing (each
leased worker is its claimant's), none lost (no lease without its reply), the other 20
answered ``unavailable``. Afterwards the node is started again and rejoins the queue.

``-s`` prints the figures docs/deploy.md quotes (time to the first assignment after the
kill, reconnects, resends). About 50-60 s on a 2-core machine, ~20 s of it starting the
cluster; the module fixture leaves the cluster down (``scripts/cluster down``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared import topology
from shared.bootstrap import bootstrap
from shared.broker import RpcClient, purge
from shared.config import parse_settings
from shared.errors import BrokerUnavailable
from shared.store import Store
from tests.helpers import ROOT, Proc, wait_for
from tests.integration.test_dispatcher_support import (
    launch,
    register_workers,
    start_dispatchers,
    stop_all,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.serial]

CLUSTER = ROOT / "scripts" / "cluster"
STATE = ROOT / ".cache" / "cluster"
NODES = ("wp1@localhost", "wp2@localhost", "wp3@localhost")
WORKERS, CLAIMS, KILL_AFTER, WAIT = 40, 60, 30, 10


@dataclass
class Cluster:
    """The three nodes of ``scripts/cluster``; ``amqp_url`` lists them all."""

    amqp_url: str
    urls: list[str]

    def run(self, *args: str, timeout: float = 60) -> str:
        return subprocess.run([str(CLUSTER), *args], check=True, capture_output=True,
                              text=True, timeout=timeout).stdout

    def url_of(self, node: str) -> str:
        return self.urls[NODES.index(node)]

    def quorum_status(self, queue: str, *, ask: str) -> list[dict[str, Any]]:
        out = self.run("queues", str(NODES.index(ask) + 1), "quorum_status", queue,
                       "--formatter", "json")
        return json.loads(out)  # type: ignore[no-any-return]

    def leader(self, queue: str, *, ask: str) -> str | None:
        rows = self.quorum_status(queue, ask=ask)
        return next((r["Node Name"] for r in rows if r["Raft State"] == "leader"), None)

    def consumers(self, procs: list[Proc], *, ask: str) -> list[tuple[str, str]]:
        """(node, connection pid) of the consumer connection of each of ``procs``: the one
        with two channels (it consumes on one, publishes on the other). A process's
        connections carry its connection_name, ``<process>@<host>:<pid>``. (The text
        output, not JSON: close_connection wants the pid as the text output writes it.)"""
        out = self.run("ctl", str(NODES.index(ask) + 1), "list_connections", "-q",
                       "--no-table-headers", "pid", "port", "channels", "client_properties")
        ports = [int(u.rsplit(":", 1)[1].split("/")[0]) for u in self.urls]
        names = [f'"connection_name","dispatcher@{socket.gethostname()}:{p.popen.pid}"'
                 for p in procs]
        found = []
        for line in out.splitlines():
            pid, port, channels, props = line.split("\t", 3)
            if channels == "2" and any(n in props for n in names):
                found.append((NODES[ports.index(int(port))], pid))
        return found

    def close_connection(self, pid: str, *, ask: str) -> None:
        self.run("ctl", str(NODES.index(ask) + 1), "close_connection", pid,
                 "moved by the test")

    def kill(self, node: str) -> None:
        """SIGKILL the node's Erlang VM (its pid file is under .cache/cluster)."""
        pid = int((STATE / node.split("@")[0] / "pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if shutil.which("rabbitmq-server") is None:
        pytest.skip("rabbitmq-server is not installed: this test runs a 3-node RabbitMQ "
                    "cluster on this machine (scripts/cluster; apt-get install rabbitmq-server)")
    began = time.monotonic()
    subprocess.run([str(CLUSTER), "up"], check=True, timeout=240)
    print(f"\n[cluster] up in {time.monotonic() - began:.1f} s")
    listed = subprocess.run([str(CLUSTER), "urls"], check=True, capture_output=True,
                            text=True, timeout=10).stdout.strip()
    try:
        yield Cluster(listed, listed.split(","))
    finally:
        subprocess.run([str(CLUSTER), "down"], check=False, timeout=120)


@dataclass
class Replies:
    """Every reply a client got, over all its connections: (correlation id, reply, when),
    and each one's message id."""

    all: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    ids: list[tuple[str, str]] = field(default_factory=list)

    def per_request(self) -> Counter[str]:
        """Distinct replies per request. A dispatcher whose publisher connection dies with
        its node before the confirm publishes the reply again on a new one, with the same
        message id (at-least-once, as AMQP publishers do): a client that got both has one
        answer, twice; a second answer would have a message id of its own."""
        return Counter(cid for cid, _ in set(self.ids))

    def by_request(self) -> dict[str, dict[str, Any]]:
        return {cid: reply for cid, reply, _ in self.all}


class ConfirmingRpc(RpcClient):
    """An RpcClient whose requests are published with confirms, recording every reply."""

    def __init__(self, url: str, name: str, replies: Replies) -> None:
        self.record = replies
        super().__init__(url, name)
        self._channel.confirm_delivery()

    @property
    def connected(self) -> bool:
        return bool(self._conn.is_open)

    def _on_reply(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        super()._on_reply(channel, method, props, body)
        self.record.all.append((props.correlation_id or "", json.loads(body), time.monotonic()))
        self.record.ids.append((props.correlation_id or "", props.message_id or ""))


class Client:
    """Sends claims and listens, as a client that survives a node must.

    Its requests go with publisher confirms. On RabbitMQ 3.10 a channel that publishes to a
    quorum queue without them loses every message once the queue's leader has died (here:
    0 of 236 requests over 12 s arrived, from channels on both surviving nodes), and a
    channel whose publish is nacked while the queue elects its leader keeps nacking. So on
    a nack the client takes a new channel, and on a lost connection a new connection (to
    ``reconnect_url``, the whole list); either way it resends every claim that has no reply
    yet, as it was (same request_id and correlation_id). Direct reply-to belongs to the
    channel, so the replies still due on the old one are gone with it."""

    def __init__(self, name: str, url: str, reconnect_url: str | None = None) -> None:
        self.name, self.url = name, url
        self.reconnect_url = reconnect_url or url
        self.replies = Replies()
        self.rpc = ConfirmingRpc(url, f"cli@{name}", self.replies)
        self.sent: dict[str, bytes] = {}
        self.sent_at: dict[str, float] = {}  # first sent
        self.lost_at: list[float] = []  # connection lost
        self.nacked: list[float] = []  # request nacked
        self.back_at: list[float] = []  # connected again
        self.resent = 0

    def claim(self, request_id: str, user: str) -> None:
        self.sent[request_id] = json.dumps({"request_id": request_id, "user_id": user,
                                            "wait_seconds": WAIT}).encode()
        self.sent_at[request_id] = time.monotonic()
        self._send(request_id)

    def _send(self, request_id: str) -> None:
        try:
            self.rpc.send(topology.CLAIMS, self.sent[request_id], correlation_id=request_id)
        except BrokerUnavailable:
            self._recover()  # resends this one too

    def listen(self, seconds: float) -> None:
        try:
            self.rpc.wait(["none"], seconds)
        except BrokerUnavailable:
            self._recover()

    def unanswered(self) -> list[str]:
        got = self.replies.per_request()
        return [rid for rid in self.sent if rid not in got]

    def _recover(self) -> None:
        while True:
            (self.nacked if self.rpc.connected else self.lost_at).append(time.monotonic())
            if len(self.nacked) + len(self.lost_at) > 50:
                raise AssertionError(f"client {self.name}: 50 recoveries, still failing")
            self.rpc.close()
            time.sleep(0.2)  # a nack: the queue is electing its leader; give it a moment
            url = self.reconnect_url if self.lost_at else self.url
            self.rpc = wait_for(lambda: self._connect(url), timeout=15, interval=0.2,
                                what=f"client {self.name} reconnected")
            self.back_at.append(time.monotonic())
            try:
                for rid in self.unanswered():
                    self.rpc.send(topology.CLAIMS, self.sent[rid], correlation_id=rid)
                    self.resent += 1
                return
            except BrokerUnavailable:
                continue  # again, on yet another channel

    def _connect(self, url: str) -> ConfirmingRpc | None:
        try:
            return ConfirmingRpc(url, f"cli@{self.name}", self.replies)
        except BrokerUnavailable:
            return None

    def close(self) -> None:
        self.rpc.close()


def troubles(procs: list[Proc]) -> tuple[int, int]:
    """(consumer reconnects, publish retries) so far, from the processes' logs."""
    msgs = [str(line.get("msg", "")) for p in procs for line in p.lines]
    return (sum(m.startswith("broker connection lost") for m in msgs),
            sum(m.startswith("Retrying") for m in msgs))


def consume_through(cluster: Cluster, procs: list[Proc], node: str) -> None:
    """Make one of ``procs`` consume through ``node``. Each connection picks its node at
    random from the list, so the test closes (broker-side) a consumer connection elsewhere
    until its reconnect lands there; otherwise the node's loss would often cost no
    dispatcher its consumer (four runs in nine with two dispatchers)."""
    ask = next(n for n in NODES if n != node)

    def every_consumer() -> list[tuple[str, str]] | None:
        found = cluster.consumers(procs, ask=ask)
        return found if len(found) == len(procs) else None

    seen: list[str] = []
    for _ in range(20):
        found = wait_for(every_consumer, timeout=15, interval=0.2, what="every consumer")
        seen.append(" ".join(n for n, _ in found))
        if any(n == node for n, _ in found):
            return
        try:
            cluster.close_connection(found[0][1], ask=ask)
        except subprocess.CalledProcessError as exc:  # gone meanwhile: the next listing tells
            seen.append(f"(close failed: {exc.stdout.strip()[-120:]})")
        time.sleep(0.3)
    raise AssertionError(f"no dispatcher consumer reached {node} in 20 reconnects: {seen}")


def report(leader: str, new_leader: str | None, before: Counter[str], killed_at: float,
           clients: list[Client], dispatchers: list[Proc], earlier: tuple[int, int]) -> None:
    """The figures docs/deploy.md quotes (``-s`` shows them); ``earlier``: the dispatchers'
    reconnects and publish retries before the kill, not counted."""
    def since(t: float) -> str:
        return f"+{t - killed_at:.2f} s"

    replies = [(r, t) for c in clients for _, r, t in c.replies.all]
    # the assignments to claims sent after the kill: when they came, how long each took
    after = sorted((t, t - c.sent_at[cid]) for c in clients for cid, r, t in c.replies.all
                   if c.sent_at[cid] > killed_at and r["status"] == "assigned")
    print(f"[burst] {CLAIMS} claims on {WORKERS} free workers: "
          f"{dict(Counter(r['status'] for r, _ in replies))} (replies, duplicates included); "
          f"killed {leader}, leader of {topology.CLAIMS}, after claim {KILL_AFTER}; "
          f"new leader {new_leader}; dispatcher consumers before, by node: {dict(before)}")
    lost, retried = troubles(dispatchers)
    print(f"[failover] dispatchers: {lost - earlier[0]} consumer reconnects, "
          f"{retried - earlier[1]} publish retries; " + "; ".join(
              f"client {c.name}: {len(c.nacked)} nacks, {len(c.lost_at)} connections lost"
              + (f" (first noticed {since(c.lost_at[0])}, back {since(c.back_at[-1])})"
                 if c.lost_at else "") + f", {c.resent} resent" for c in clients))
    if after:
        print(f"[failover] {len(after)} claims sent after the kill assigned: the first at "
              f"{since(after[0][0])}, the last at {since(after[-1][0])}; each took "
              f"{min(d for _, d in after):.2f}-{max(d for _, d in after):.2f} s")


def test_a_burst_survives_the_crash_of_the_node_that_leads_the_claims_queue(
        cluster: Cluster, aws: str) -> None:
    settings = parse_settings(amqp_url=cluster.amqp_url, aws_endpoint_url=aws, health_port=0)
    bootstrap(settings, broker=False)
    purge(settings.amqp_url, "faults", [q.name for q in topology.QUEUES])
    leader = cluster.leader(topology.CLAIMS, ask=NODES[1])
    assert leader is not None
    survivor = next(n for n in NODES if n != leader)
    dispatchers = start_dispatchers(settings, 2)
    clients: list[Client] = []
    try:
        consume_through(cluster, dispatchers, leader)
        ids = launch(settings, WORKERS)
        register_workers(settings, ids)
        before = Counter(n for n, _ in cluster.consumers(dispatchers, ask=survivor))
        a = Client("a", cluster.url_of(survivor))
        b = Client("b", cluster.url_of(leader), reconnect_url=cluster.amqp_url)
        clients = [a, b]

        killed_at, earlier = 0.0, (0, 0)
        for k in range(CLAIMS):  # at once, as a burst comes: most are in flight at the kill
            (a if k % 2 == 0 else b).claim(f"r-{k}", f"user{k}")
            if k + 1 == KILL_AFTER:
                earlier = troubles(dispatchers)
                cluster.kill(leader)
                killed_at = time.monotonic()
        sent_all = time.monotonic()
        deadline = sent_all + WAIT + 25
        while any(c.unanswered() for c in clients) and time.monotonic() < deadline:
            for c in clients:
                c.listen(0.1)
        for _ in range(10):  # listen on: a second reply to anyone would come now
            for c in clients:
                c.listen(0.1)

        new_leader = cluster.leader(topology.CLAIMS, ask=survivor)
        report(leader, new_leader, before, killed_at, clients, dispatchers, earlier)
        assert a.lost_at == [], "client a lost its connection, though its node lives"
        assert b.lost_at, "client b, on the killed node, never noticed"
        # every claim answered, exactly once
        for c in clients:
            assert c.unanswered() == [], f"client {c.name}: claims without a reply"
            twice = {rid: n for rid, n in c.replies.per_request().items() if n != 1}
            assert twice == {}, f"client {c.name}: claims answered more than once"
        replies = {**a.replies.by_request(), **b.replies.by_request()}
        assert sorted(replies) == sorted(f"r-{k}" for k in range(CLAIMS))
        statuses = Counter(r["status"] for r in replies.values())
        assert statuses == {"assigned": WORKERS, "unavailable": CLAIMS - WORKERS}, statuses
        # no worker twice, and the table agrees: each leased worker is its claimant's
        given = {rid: r["worker"]["instance_id"] for rid, r in replies.items()
                 if r["status"] == "assigned"}
        assert sorted(given.values()) == ids
        store = Store.from_settings(settings)
        for rid, iid in given.items():
            w = store.workers.get(iid)
            assert w is not None and (w.status, w.user_id, w.request_id) == (
                "leased", f"user{rid.removeprefix('r-')}", rid)
        assert store.workers.count("free") == 0
        for r in replies.values():
            if r["status"] == "unavailable":
                assert f"no worker became free within {WAIT} s" in r["reason"], r

        assert new_leader is not None and new_leader != leader
    finally:
        for c in clients:
            c.close()
        stop_all(dispatchers)

    # the node comes back (scripts/cluster up starts it again) and rejoins every queue
    began = time.monotonic()
    cluster.run("up", timeout=120)

    def rejoined() -> bool:
        rows = cluster.quorum_status(topology.CLAIMS, ask=leader)
        return sorted(r["Raft State"] for r in rows) == ["follower", "follower", "leader"]

    wait_for(rejoined, timeout=30, interval=0.5, what=f"{leader} back as a member of "
             f"{topology.CLAIMS}")
    print(f"[restart] {leader} back and a member again in {time.monotonic() - began:.1f} s")
