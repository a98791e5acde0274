"""TLS certificate fingerprints (SHA-256), as browsers and ``openssl x509 -fingerprint
-sha256`` show them, and the one a server presents. A worker's code-server serves a
self-signed certificate; its fingerprint, registered by the worker's attested agent, is
what makes it trustworthy (``workerpool open``)."""

from __future__ import annotations

import hashlib
import socket
import ssl
from urllib.parse import urlsplit


def fingerprint(der: bytes) -> str:
    """Uppercase hex pairs joined by colons."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def same(a: str, b: str) -> bool:
    """Two fingerprints, whatever their case and colons."""
    return a.replace(":", "").lower() == b.replace(":", "").lower()


def presented(url: str, timeout: float = 5.0) -> str:
    """The fingerprint of the certificate the server at ``url`` presents (not verified:
    comparing it is the verification)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError("the server presented no certificate")
    return fingerprint(der)
