"""``GET /health`` and ``GET /metrics`` on HEALTH_PORT, for every process (PROTOCOL §1).

A process registers named checks (callables returning (ok, detail)); /health is 200 when
all pass, else 503, with a JSON body naming each. /metrics is the process's one registry
(``process_registry``): prometheus-client's process and platform collectors (``process_*``,
``python_*``), ``workerpool_build_info`` and the process's own metrics (docs/monitoring.md).
"""

from __future__ import annotations

import json
import logging
import platform
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, Any]]

#: Seconds a probe's answer is reused: /health may be polled often, and each probe costs a
#: broker connection or an AWS call.
PROBE_CACHE_SECONDS = 3.0


def package_version() -> str:
    """The installed workerpool's version ("unknown" when run from a bare checkout)."""
    try:
        return metadata.version("workerpool")
    except metadata.PackageNotFoundError:
        return "unknown"


def process_registry(process: str) -> CollectorRegistry:
    """The one registry of a process: prometheus-client's process, platform and GC
    collectors (new instances: its global ones belong to its global registry, which we do
    not serve) and ``workerpool_build_info{version, python, process} 1``."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Info("workerpool_build", "The running build: workerpool's version, Python's, the process",
         registry=registry).info({"version": package_version(),
                                  "python": platform.python_version(), "process": process})
    return registry


class CachedCheck:
    """A check that runs ``probe`` at most every ``ttl`` seconds. The probe returns a detail
    (or None) when fine and raises when not; any exception is "unreachable" to an operator."""

    def __init__(self, probe: Callable[[], Any], ttl: float = PROBE_CACHE_SECONDS) -> None:
        self.probe, self.ttl = probe, ttl
        self._lock = threading.Lock()
        self._at = -1e18
        self._result: tuple[bool, Any] = (False, "not checked yet")

    def __call__(self) -> tuple[bool, Any]:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                try:
                    detail = self.probe()
                    self._result = (True, detail or "ok")
                except Exception as exc:
                    self._result = (False, str(exc) or repr(exc))
                self._at = time.monotonic()
            return self._result


class HealthServer:
    def __init__(self, *, process: str, port: int, registry: CollectorRegistry | None = None,
                 host: str = "0.0.0.0") -> None:
        self.process = process
        self.registry = registry or process_registry(process)
        self.checks: dict[str, Check] = {}
        self.info: dict[str, Any] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.split("?")[0] == "/health":
                    code, body = server.health()
                    self._send(code, "application/json", json.dumps(body).encode())
                elif self.path.split("?")[0] == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
                else:
                    self._send(404, "application/json", b'{"error": "not found"}')

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="health")

    def add_check(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def health(self) -> tuple[int, dict[str, Any]]:
        results: dict[str, Any] = {}
        ok = True
        for name, check in self.checks.items():
            try:
                passed, detail = check()
            except Exception as exc:  # a failing check is a failed check, not a crash
                passed, detail = False, repr(exc)
            results[name] = {"ok": passed, "detail": detail}
            ok = ok and passed
        body = {"status": "ok" if ok else "unhealthy", "process": self.process,
                "checks": results, **self.info}
        return (200 if ok else 503), body

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
