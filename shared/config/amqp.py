"""AMQP_URL and the broker connection: split a list of broker URLs, redact passwords for
logs and errors, and name a process's connection for the management UI."""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit, urlunsplit

#: Between two URLs of an AMQP_URL that lists several brokers (a cluster's nodes): a comma
#: where the next URL begins, so that a password may hold a comma.
_URL_LIST = re.compile(r"\s*,\s*(?=amqps?://)")


def split_urls(value: str) -> list[str]:
    """The URLs of an AMQP_URL, in the order written (one for one broker)."""
    return [u for u in _URL_LIST.split(value.strip()) if u] or [value]


def redact_url(url: str) -> str:
    """``amqp://user:secret@host/vh`` → ``amqp://user:***@host/vh`` (for logs and errors);
    each URL of a comma-separated list likewise."""
    if len(urls := split_urls(url)) > 1:
        return ",".join(redact_url(u) for u in urls)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable>"
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def connection_name(process: str) -> str:
    """``<process>@<host>:<pid>``, the client property operators see in the management UI."""
    import os

    return f"{process}@{socket.gethostname()}:{os.getpid()}"
