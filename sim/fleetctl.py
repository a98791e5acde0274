"""The simulated fleet's control API (127.0.0.1:FLEET_CONTROL_PORT), for tests and demos.

    GET  /instances                  -> [{instance_id, state, pid, health_port, ...}]
    POST /instances/<id>/hang        -> SIGSTOP its agent: heartbeats stop, no deregister
    POST /instances/<id>/resume      -> SIGCONT a hung agent
    POST /instances/<id>/kill        -> SIGKILL its agent (a crash; restarted after 1 s)
    POST /instances/<id>/unhealthy   -> its code-server's /healthz answers 503
    POST /instances/<id>/healthy     -> ... and 200 again
    POST /instances/<id>/fail-boot   -> that instance (if still booting) never starts an agent
    POST /fail-boot?next=<n>         -> the next n new instances never start an agent
    POST /capacity-errors?type=<t>[&zone=<z>][&code=<c>]
                                     -> launches of type t (in zone z; any) fail with c
                                        (InsufficientInstanceCapacity, VcpuLimitExceeded)
    DELETE /capacity-errors          -> launches work again
    GET  /activities                 -> {"Activities": [...]}: DescribeScalingActivities as
                                        AWS would answer it (newest first); see FleetActivities
    POST /instances/<id>/activity    -> its code-server reports user activity now (or
                                        ?at=<epoch s>, ?ago=<s>) as /healthz lastHeartbeat
    POST /instances/<id>/active      -> a user at work: lastHeartbeat follows the clock
    POST /instances/<id>/idle        -> nobody at work: lastHeartbeat stays where it was
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from sim.fleetplan import parse_capacity_errors

if TYPE_CHECKING:
    from sim.fleet import Fleet

VERBS = {"hang", "resume", "kill", "unhealthy", "healthy", "fail-boot"}
#: The user's activity in a VM's code-server (answered here: sim.fleetctl.activity).
ACTIVITY_VERBS = {"activity", "active", "idle"}
_INSTANCE_VERB = re.compile(r"^/instances/(i-[A-Za-z0-9]{1,40})/([a-z-]+)$")


class ControlServer:
    def __init__(self, fleet: Fleet, *, port: int = 0, host: str = "127.0.0.1") -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if urlsplit(self.path).path == "/instances":
                    self._send(200, fleet.listing())
                elif urlsplit(self.path).path == "/activities":
                    with fleet.lock:
                        acts = list(reversed(fleet.activities))
                    self._send(200, {"Activities": acts})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                if url.path == "/capacity-errors":
                    self._send(*capacity_error(fleet, parse_qs(url.query)))
                    return
                if url.path == "/fail-boot":
                    try:
                        n = int(parse_qs(url.query).get("next", ["1"])[0])
                    except ValueError:
                        self._send(400, {"error": "next: must be an integer"})
                        return
                    self._send(200, fleet.fail_next_boots(n))
                    return
                m = _INSTANCE_VERB.match(url.path)
                if m is not None and m.group(2) in ACTIVITY_VERBS:
                    self._send(*activity(fleet, m.group(1), m.group(2), url.query))
                    return
                if m is None or m.group(2) not in VERBS:
                    self._send(404, {"error": f"unknown control {url.path}",
                                     "verbs": sorted(VERBS | ACTIVITY_VERBS)})
                    return
                self._send(*fleet.control(m.group(1), m.group(2)))

            def do_DELETE(self) -> None:  # noqa: N802
                if urlsplit(self.path).path == "/capacity-errors":
                    with fleet.lock:
                        fleet.capacity_errors = {}
                    self._send(200, {"capacity_errors": []})
                else:
                    self._send(404, {"error": "not found"})

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


def capacity_error(fleet: Fleet, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
    """POST /capacity-errors: one more (type, zone) whose launches fail."""
    spec = query.get("type", [""])[0]
    if query.get("zone"):
        spec += "@" + query["zone"][0]
    if query.get("code"):
        spec += "=" + query["code"][0]
    try:
        errors = parse_capacity_errors(spec) if query.get("type") else None
    except ValueError as exc:
        return 400, {"error": str(exc)}
    if not errors:
        return 400, {"error": "type: required"}
    with fleet.lock:
        fleet.capacity_errors = {**fleet.capacity_errors, **errors}
        return 200, {"capacity_errors": [{"instance_type": t, "zone": z, "code": c} for
                                         (t, z), c in sorted(fleet.capacity_errors.items())]}


class FleetActivities:
    """An autoscaling client whose DescribeScalingActivities is the fleet's (GET
    /activities), everything else the real client's: what a scaler in a test or a benchmark
    reads launch failures through, since moto's log is always empty (docs/emulators.md)."""

    def __init__(self, real: Any, control_url: str) -> None:
        self.real, self.url = real, control_url.rstrip("/")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def describe_scaling_activities(self, **kwargs: Any) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/activities", timeout=5) as resp:
            acts = json.loads(resp.read())["Activities"]
        limit = int(kwargs.get("MaxRecords") or 100)
        return {"Activities": [{**a, "StartTime": datetime.fromisoformat(a["StartTime"])}
                               for a in acts[:limit]]}


def activity(fleet: Fleet, iid: str, verb: str, query: str) -> tuple[int, dict[str, Any]]:
    """A user's activity in a VM's code-server: ``activity`` (now, ``at=<epoch s>`` or
    ``ago=<s>``), ``active`` (at work: it follows the clock) or ``idle`` (no longer)."""
    args = {k: v[0] for k, v in parse_qs(query).items()}
    try:
        at = (float(args["at"]) if "at" in args else
              time.time() - float(args["ago"]) if "ago" in args else None)
    except ValueError:
        return 400, {"error": "at, ago: must be numbers (epoch seconds, seconds)"}
    with fleet.lock:
        vm = fleet.vms.get(iid)
        cs = vm.code_server if vm is not None else None
        if vm is None or cs is None:
            return 404, {"error": f"no running instance {iid} in the fleet"}
        if verb == "activity":
            cs.touch(at)
        elif verb == "idle" and cs.active:
            cs.active = False
            cs.touch()  # at work until now
        else:
            cs.active = verb == "active"
        return 200, vm.describe()
