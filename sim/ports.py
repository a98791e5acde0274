"""Local listening ports for the local pool: bind one the way a server should, and when it
is taken, say by whom."""

from __future__ import annotations

import errno
import os
import socket
import time
import urllib.request
from pathlib import Path


class PortTaken(OSError):
    """Something keeps the port we want: a process listening on it, or an outgoing
    connection's TIME-WAIT (a server's own TIME-WAIT does not: SO_REUSEADDR takes it)."""


def listen(host: str, port: int, *, backlog: int = 128, settle: float = 1.0) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: any free port) with SO_REUSEADDR, so a
    quick restart gets its port back while the last run's connections sit in TIME-WAIT.
    Raises PortTaken, naming the holder if it can, when the port stays taken.

    A port is retried for up to ``settle`` seconds: right after a server closes its
    listening socket, Linux (6.x, measured) now and then still shows it listening for a few
    milliseconds, owned by no process, and refuses the bind even with SO_REUSEADDR."""
    deadline = time.monotonic() + settle
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(backlog)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            if time.monotonic() >= deadline:
                raise PortTaken(exc.errno, f"port {port} is taken by {holder(port)}") from exc
        time.sleep(0.05)


def holder(port: int) -> str:
    """Who holds ``port``, as well as we can tell: a pid and command line (our own user's
    processes), whether it is a moto server, an outgoing connection's TIME-WAIT, or just
    "another process"."""
    if not _local_sockets(port, LISTEN) and _local_sockets(port, TIME_WAIT):
        return ("a connection in TIME-WAIT that some client made from it (an ephemeral "
                "port); it is free again within a minute")
    pid = _listening_pid(port)
    who = "another process"
    if pid is not None:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = "?"
        who = f"pid {pid} ({' '.join(cmd.split())[:120]})"  # one line
    if _answers_as_moto(port):
        who += ", a moto server (another `workerpool dev`?)"
    return who


LISTEN, TIME_WAIT = "0A", "06"  # states in /proc/net/tcp


def _local_sockets(port: int, state: str) -> set[str]:
    """Sockets on local ``port`` in ``state`` (Linux /proc; empty where it cannot tell), as
    ``socket:[inode]`` link names (inode 0 for TIME-WAIT, which belongs to no process)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == state and int(cols[1].rsplit(":", 1)[1], 16) == port:
                found.add(f"socket:[{cols[9]}]")
    return found


def _listening_pid(port: int) -> int | None:
    """The pid whose open socket listens on ``port`` (None if not found or not ours)."""
    inodes = _local_sockets(port, LISTEN)
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # another user's process, or gone
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return int(entry.name)
            except OSError:  # closed meanwhile
                continue
    return None


def _answers_as_moto(port: int) -> bool:
    """Whether moto's dashboard answers there (cheap: data.json would dump every backend)."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy
    try:
        with direct.open(f"http://127.0.0.1:{port}/moto-api/", timeout=1) as resp:
            return b"moto" in resp.read(65536).lower()
    except (OSError, ValueError):
        return False
