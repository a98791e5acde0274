"""A fake IMDSv2 and a fake code-server: real HTTP servers on free local ports.

Used by the tests and by the simulated fleet (sim/fleet.py). ``FakeImds`` answers like the
real IMDS with IMDSv2 required: a GET without a valid token gets 401, a PUT without a TTL
header gets 400 (the emulator's own metadata endpoint cannot: docs/emulators.md).

    imds = FakeImds(instance_id="i-0abc", private_ip="10.0.1.5").start()
    imds.url          # -> AWS_EC2_METADATA_SERVICE_ENDPOINT
    imds.down = True  # connections dropped without an answer (IMDS unreachable)
    imds.stop()
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sim.identity import IdentityAuthority, document

TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    token: str | None  # the token header as sent (None: an IMDSv1-style request)


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> with start/stop."""

    scheme = "http"

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.fake = self  # type: ignore[attr-defined]
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> Any:
        # a short poll interval: stop() (and so every test teardown) waits for one poll
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True, name=type(self).__name__)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def fake(self) -> Any:
        return self.server.fake  # type: ignore[attr-defined]

    def _send(self, code: int, body: str, ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class _ImdsHandler(_Handler):
    def _gate(self) -> bool:
        """Record the request; False (connection dropped) while IMDS is "down"."""
        fake: FakeImds = self.fake
        fake.seen.append(SeenRequest(self.command, self.path, self.headers.get(TOKEN_HEADER)))
        if fake.down:
            self.close_connection = True
            return False
        return True

    def do_PUT(self) -> None:  # noqa: N802
        if not self._gate():
            return
        if self.path != "/latest/api/token":
            self._send(403, "Forbidden")
            return
        try:
            ttl = int(self.headers.get(TTL_HEADER, ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= 21600:
            self._send(400, "Bad Request")
            return
        self._send(200, self.fake._issue(ttl))

    def do_GET(self) -> None:  # noqa: N802
        if not self._gate():
            return
        fake: FakeImds = self.fake
        if not fake._valid(self.headers.get(TOKEN_HEADER)):
            self._send(401, "Unauthorized")  # what IMDS says when IMDSv2 is required
            return
        value = None
        for prefix, values in (("/latest/meta-data/", fake.metadata),
                               ("/latest/dynamic/", fake.dynamic)):
            if self.path.startswith(prefix):
                value = values().get(self.path[len(prefix):])
        if value is None:
            self._send(404, "Not Found")
        else:
            self._send(200, value)


class FakeImds(_Server):
    """IMDSv2 for one instance. ``public_ip=None`` makes public-ipv4 a 404 (private subnet).

    ``down``: connections are dropped unanswered. ``garbage``: instance-id answers HTML.
    ``seen``: every request, so a test can assert no request came without a token.
    """

    def __init__(self, *, instance_id: str, private_ip: str | None = "10.0.1.5",
                 public_ip: str | None = "203.0.113.10", instance_type: str = "t3.medium",
                 availability_zone: str = "us-east-1a",
                 authority: IdentityAuthority | None = None) -> None:
        super().__init__(_ImdsHandler)
        self.authority = authority  # set: serves a signed identity document
        self._document: str | None = None
        self.instance_id = instance_id
        self.private_ip = private_ip
        self.public_ip = public_ip
        self.instance_type = instance_type
        self.availability_zone = availability_zone
        self.down = False
        self.garbage = False
        self.seen: list[SeenRequest] = []
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()

    def metadata(self) -> dict[str, str | None]:
        return {
            "instance-id": "<html>oops</html>" if self.garbage else self.instance_id,
            "local-ipv4": self.private_ip,
            "public-ipv4": self.public_ip,
            "instance-type": self.instance_type,
            "placement/availability-zone": self.availability_zone,
        }

    def dynamic(self) -> dict[str, str | None]:
        """``/latest/dynamic/``: the identity document and its signature (with an
        authority; a 404 without, as an IMDS that does not sign)."""
        if self.authority is None:
            return {}
        if self._document is None:  # one document per instance, as IMDS serves
            self._document = document(instance_id=self.instance_id,
                                      private_ip=self.private_ip,
                                      instance_type=self.instance_type,
                                      availability_zone=self.availability_zone)
        doc = self._document
        return {"instance-identity/document": doc,
                "instance-identity/signature": self.authority.sign(doc)}

    def tokenless_requests(self) -> list[SeenRequest]:
        """Requests that an IMDSv2-only instance would refuse (GETs without a token)."""
        return [r for r in self.seen if r.method == "GET" and not r.token]

    def revoke_tokens(self) -> None:
        """As after an IMDS restart: every token issued so far is refused from now on."""
        with self._lock:
            self._tokens.clear()

    def _issue(self, ttl: int) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.monotonic() + ttl
        return token

    def _valid(self, token: str | None) -> bool:
        with self._lock:
            expiry = self._tokens.get(token or "")
        return expiry is not None and time.monotonic() < expiry


class _CodeServerHandler(_Handler):
    def do_GET(self) -> None:  # noqa: N802
        fake: FakeCodeServer = self.fake
        path = self.path.split("?")[0]
        if path == "/config":  # the fake's own: what a real code-server would have read
            self._send(200, json.dumps(fake.config()), "application/json")
            return
        fake.probes += 1
        if path != "/healthz":
            self._send(404, "Not Found")
        elif fake.healthy:
            self._send(200, json.dumps(fake.healthz()), "application/json")
        else:
            self._send(503, '{"status":"expired"}', "application/json")


class FakeCodeServer(_Server):
    """code-server's ``/healthz``: 200 while ``healthy``, else 503. Its body is code-server's:
    ``{"status": "alive" | "expired", "lastHeartbeat": <epoch ms>}``, the user's last
    activity: 0 until ``touch()`` (or ``last_activity = <epoch s>``); with ``active`` a user
    is at work, and it follows the clock.

    ``config_path``: its config.yaml (the agent's CODE_SERVER_CONFIG); ``config()`` and
    ``GET /config`` report its ``auth`` and ``hashed-password``, and ``accepts(password)``
    checks a password against that hash the way code-server does (SHA-256 hex form).
    """

    def __init__(self, config_path: str | Path | None = None,
                 tls_dir: str | Path | None = None) -> None:
        super().__init__(_CodeServerHandler)
        if tls_dir is not None:  # serve https with the certificate the agent made there
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(Path(tls_dir) / "code-server.crt",
                                Path(tls_dir) / "code-server.key")
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self.tls_dir = Path(tls_dir) if tls_dir is not None else None
        self.healthy = True
        self.probes = 0
        self.config_path = Path(config_path) if config_path else None
        self.last_activity: float | None = None  # epoch seconds; None: nobody used it yet
        self.active = False

    def touch(self, at: float | None = None) -> None:
        """The user did something (at ``at``, epoch seconds; default now)."""
        self.last_activity = time.time() if at is None else at

    def healthz(self) -> dict[str, Any]:
        """What /healthz answers while healthy (code-server's heart: "alive" within a
        minute of the last activity, "expired" after; lastHeartbeat 0 = never used)."""
        last = time.time() if self.active else self.last_activity
        alive = last is not None and time.time() - last <= 60
        return {"status": "alive" if alive else "expired",
                "lastHeartbeat": int(last * 1000) if last else 0}

    def config(self) -> dict[str, str | None]:
        """``auth`` and ``hashed_password`` as the config file holds them (None: absent)."""
        found: dict[str, str | None] = {"auth": None, "hashed_password": None}
        try:
            text = self.config_path.read_text() if self.config_path else ""
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in ("auth", "hashed-password"):
                found[key.replace("-", "_")] = value.strip().strip('"')
        return found

    def accepts(self, password: str) -> bool:
        hashed = self.config()["hashed_password"]
        return bool(hashed) and hmac.compare_digest(
            hashlib.sha256(password.encode()).hexdigest(), hashed or "")
