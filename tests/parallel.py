"""Running the suite on several pytest-xdist workers: each worker gets a vhost of its own on
the broker at AMQP_URL (tests purge the workerpool queues and count messages; two workers on
one vhost would see each other's). Made with ``rabbitmqctl`` where the broker is local;
elsewhere, give each worker's vhost yourself or run without ``-n``."""

from __future__ import annotations

import shutil
import subprocess
from urllib.parse import quote, unquote, urlsplit, urlunsplit


def worker_url(url: str, worker: str) -> str:
    """AMQP_URL with the vhost ``<vhost>-<worker>`` (``/`` becomes ``wp-<worker>``)."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) or "/"
    mine = f"wp-{worker}" if vhost == "/" else f"{vhost}-{worker}"
    return urlunsplit(parts._replace(path="/" + quote(mine, safe="")))


def ensure_vhost(url: str) -> None:
    """The URL's vhost exists and its user may use it (``rabbitmqctl``, local brokers)."""
    parts = urlsplit(url)
    if parts.hostname not in ("localhost", "127.0.0.1") or not shutil.which("rabbitmqctl"):
        return  # not ours to make: it must exist already
    vhost = unquote(parts.path[1:])
    user = unquote(parts.username or "guest")
    for cmd in (["add_vhost", vhost], ["set_permissions", "-p", vhost, user, ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", "-q", *cmd], capture_output=True, timeout=60,
                       check=False)
