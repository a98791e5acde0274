"""The simulated fleet's control API (127.0.0.1:FLEET_CONTROL_PORT), for tests and demos.

    GET  /instances                  -> [{instance_id, state, pid, health_port, ...}]
    POST /instances/<id>/hang        -> SIGSTOP its agent: heartbeats stop, no deregister
    POST /instances/<id>/resume      -> SIGCONT a hung agent
    POST /instances/<id>/kill        -> SIGKILL its agent (a crash; restarted after 1 s)
    POST /instances/<id>/unhealthy   -> its code-server's /healthz answers 503
    POST /instances/<id>/healthy     -> ... and 200 again
    POST /instances/<id>/fail-boot   -> that instance (if still booting) never starts an agent
    POST /fail-boot?next=<n>         -> the next n new instances never start an agent
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from sim.fleet import Fleet

VERBS = {"hang", "resume", "kill", "unhealthy", "healthy", "fail-boot"}
_INSTANCE_VERB = re.compile(r"^/instances/(i-[A-Za-z0-9]{1,40})/([a-z-]+)$")


class ControlServer:
    def __init__(self, fleet: Fleet, *, port: int = 0, host: str = "127.0.0.1") -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if urlsplit(self.path).path == "/instances":
                    self._send(200, fleet.listing())
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                if url.path == "/fail-boot":
                    try:
                        n = int(parse_qs(url.query).get("next", ["1"])[0])
                    except ValueError:
                        self._send(400, {"error": "next: must be an integer"})
                        return
                    self._send(200, fleet.fail_next_boots(n))
                    return
                m = _INSTANCE_VERB.match(url.path)
                if m is None or m.group(2) not in VERBS:
                    self._send(404, {"error": f"unknown control {url.path}",
                                     "verbs": sorted(VERBS)})
                    return
                self._send(*fleet.control(m.group(1), m.group(2)))

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="fleet-control")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
