"""A counting HTTP proxy in front of DynamoDB: what a process asks of DynamoDB, black box.

Point a process at it with ``AWS_ENDPOINT_URL_DYNAMODB=<proxy.url>``; every request is
forwarded unchanged to the upstream endpoint (DynamoDB Local), except that it asks for
``ReturnConsumedCapacity: TOTAL`` where the operation takes it (the process's code never
sees the difference: botocore parses ConsumedCapacity and ignores it). For each request it
counts, by operation (the ``X-Amz-Target`` header):

* calls;
* items read: a Query's or Scan's ``ScannedCount`` (what DynamoDB reads and bills, whatever
  the filter keeps; a ``Select: COUNT`` query included), 1 per GetItem, the keys of a
  BatchGetItem or TransactGetItems;
* items written: 1 per Put/Update/DeleteItem, the items of a TransactWriteItems or
  BatchWriteItem;
* capacity units, from the responses' ``ConsumedCapacity``.

Both sockets have TCP_NODELAY and each response goes out in one write: a Python proxy that
writes headers and body apart without it adds ~40 ms a request on loopback (Nagle meets
delayed ACK; /work/shared/FACTS.md).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

#: operations that accept ReturnConsumedCapacity
CAPACITY_OPS = {"GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan",
                "BatchGetItem", "BatchWriteItem", "TransactGetItems", "TransactWriteItems"}
WRITE_OPS = {"PutItem", "UpdateItem", "DeleteItem"}


@dataclass
class Counts:
    """What went through the proxy, by operation."""

    calls: Counter[str] = field(default_factory=Counter)
    reads: Counter[str] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)
    capacity: float = 0.0

    def add(self, op: str, read: int, written: int, capacity: float) -> None:
        self.calls[op] += 1
        self.reads[op] += read
        self.writes[op] += written
        self.capacity += capacity

    def plus(self, other: Counts) -> None:
        """Add ``other`` into this one."""
        self.calls.update(other.calls)
        self.reads.update(other.reads)
        self.writes.update(other.writes)
        self.capacity += other.capacity

    def minus(self, before: Counts) -> Counts:
        return Counts(self.calls - before.calls, self.reads - before.reads,
                      self.writes - before.writes, self.capacity - before.capacity)

    def copy(self) -> Counts:
        return Counts(Counter(self.calls), Counter(self.reads), Counter(self.writes),
                      self.capacity)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def total_reads(self) -> int:
        return sum(self.reads.values())

    @property
    def total_writes(self) -> int:
        return sum(self.writes.values())


def operation(target: str | None) -> str:
    """``DynamoDB_20120810.UpdateItem`` → ``UpdateItem``."""
    return (target or "?").rpartition(".")[2]


def items_read(op: str, request: dict[str, Any], response: dict[str, Any]) -> int:
    if op in ("Query", "Scan"):
        return int(response.get("ScannedCount", response.get("Count", 0)))
    if op == "GetItem":
        return 1
    if op == "BatchGetItem":
        return sum(len(r.get("Keys", [])) for r in request.get("RequestItems", {}).values())
    if op == "TransactGetItems":
        return len(request.get("TransactItems", []))
    return 0


def items_written(op: str, request: dict[str, Any]) -> int:
    if op in WRITE_OPS:
        return 1
    if op == "TransactWriteItems":
        return len(request.get("TransactItems", []))
    if op == "BatchWriteItem":
        return sum(len(r) for r in request.get("RequestItems", {}).values())
    return 0


def capacity_units(response: dict[str, Any]) -> float:
    """Total CapacityUnits of a response (a list for batch and transactions)."""
    got = response.get("ConsumedCapacity")
    entries = got if isinstance(got, list) else [got] if got else []
    return float(sum(e.get("CapacityUnits", 0) for e in entries))


def with_capacity(op: str, body: bytes) -> tuple[dict[str, Any], bytes]:
    """The request as JSON, and the body to forward (asking for ConsumedCapacity)."""
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return {}, body
    if op in CAPACITY_OPS and "ReturnConsumedCapacity" not in request:
        request["ReturnConsumedCapacity"] = "TOTAL"
        return request, json.dumps(request).encode()
    return request, body


class CountingProxy:
    """``with CountingProxy(upstream) as proxy: ... proxy.counts()``; thread-safe."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._counts = Counts()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="counting-proxy")

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def counts(self) -> Counts:
        with self._lock:
            return self._counts.copy()

    def record(self, op: str, request: dict[str, Any], status: int, payload: bytes) -> None:
        response: dict[str, Any] = {}
        if status == 200:
            try:
                response = json.loads(payload or b"{}")
            except ValueError:
                response = {}
        with self._lock:
            self._counts.add(op, items_read(op, request, response),
                             items_written(op, request) if status == 200 else 0,
                             capacity_units(response))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self
        local = threading.local()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:  # one line per request: no
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                op = operation(self.headers.get("X-Amz-Target"))
                request, body = with_capacity(op, body)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("content-length", "host", "connection")}
                status, reason, out_headers, payload = proxy.forward(local, body, headers)
                proxy.record(op, request, status, payload)
                head = [f"HTTP/1.1 {status} {reason}"]
                head += [f"{k}: {v}" for k, v in out_headers
                         if k.lower() not in ("content-length", "connection",
                                              "transfer-encoding")]
                head += [f"Content-Length: {len(payload)}", "Connection: keep-alive", "", ""]
                try:
                    self.wfile.write("\r\n".join(head).encode("latin-1") + payload)  # one send
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (its read timeout)

        return Handler

    def forward(self, local: threading.local, body: bytes, headers: dict[str, str]
                ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """POST upstream on this thread's kept-alive connection (one reconnect if stale)."""
        for attempt in (1, 2):
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(*self._upstream, timeout=60)
                conn.connect()
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                local.conn = conn
            try:
                conn.request("POST", "/", body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.reason, resp.getheaders(), resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")
