"""code-server's health, as the agent sees it: GET {CODE_SERVER_URL}/healthz, 2xx in time."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from http.client import HTTPException

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def probe_code_server(base_url: str, timeout: float, *,
                      tls: ssl.SSLContext | None = None) -> tuple[bool, str]:
    """(healthy, reason): healthy when /healthz answers 2xx within ``timeout`` seconds
    (over https with ``tls``, the context that pins code-server's own certificate)."""
    url = base_url.rstrip("/") + "/healthz"
    opener = _OPENER if tls is None else urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls))
    try:
        with opener.open(url, timeout=timeout) as resp:
            resp.read(1024)
            return True, f"{url} answered {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code}"
    except (OSError, HTTPException) as exc:
        return False, f"{url} does not answer: {exc!r:.160}"
