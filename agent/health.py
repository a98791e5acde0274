"""code-server's health, as the agent sees it: GET {CODE_SERVER_URL}/healthz, 2xx in time.

Its body also says when the user was last active: ``{"status": "alive" | "expired",
"lastHeartbeat": <epoch ms>}`` (code-server's heart: ``lastHeartbeat`` is 0 until someone
uses it, and /healthz itself never counts as use). The agent forwards it as
``last_activity`` (PROTOCOL §4 v2).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


@dataclass(frozen=True)
class Probe:
    healthy: bool
    reason: str
    #: the user's last activity (epoch seconds); None: none yet, or code-server did not say
    last_activity: float | None = None


def last_activity(body: bytes) -> float | None:
    """``lastHeartbeat`` (epoch ms) of a /healthz body → epoch seconds; None when absent,
    zero (never used) or not a number."""
    try:
        value = json.loads(body).get("lastHeartbeat")
    except (ValueError, AttributeError):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value) / 1000.0


def probe(base_url: str, timeout: float, *, tls: ssl.SSLContext | None = None) -> Probe:
    """Healthy when /healthz answers 2xx within ``timeout`` seconds (over https with
    ``tls``, the context that pins code-server's own certificate)."""
    url = base_url.rstrip("/") + "/healthz"
    opener = _OPENER if tls is None else urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls))
    try:
        with opener.open(url, timeout=timeout) as resp:
            body = resp.read(4096)
            return Probe(True, f"{url} answered {resp.status}", last_activity(body))
    except urllib.error.HTTPError as exc:
        return Probe(False, f"{url} answered {exc.code}")
    except (OSError, HTTPException) as exc:
        return Probe(False, f"{url} does not answer: {exc!r:.160}")


def probe_code_server(base_url: str, timeout: float, *,
                      tls: ssl.SSLContext | None = None) -> tuple[bool, str]:
    """(healthy, reason) of ``probe``."""
    got = probe(base_url, timeout, tls=tls)
    return got.healthy, got.reason
