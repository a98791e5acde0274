"""A TCP forwarder that tests can cut: every live connection dropped, new ones refused for a
while, or, with ``hang``, accepted and never answered (a blackholed endpoint: what makes
timeouts matter). It makes broker and AWS outage tests honest without touching the shared
RabbitMQ or the moto server. TCP_NODELAY on both sides: without it, Nagle meeting delayed
ACKs adds ~40 ms to every HTTP request through the proxy (FACTS.md)."""

from __future__ import annotations

import socket
import threading
import time


class CuttableProxy:
    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5672) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._refuse_until = 0.0
        self._hang_until = 0.0
        self._held: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, vhost: str = "%2F", user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/{vhost}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                client.close()
                continue
            if time.monotonic() < self._hang_until:
                self._held.append(client)  # accepted, never answered
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)
            with self._lock:
                # a cut() that came while we were connecting upstream covers this one too
                # (it sets _refuse_until before it takes the lock to drop the live ones)
                if time.monotonic() < self._refuse_until:
                    client.close()
                    upstream.close()
                    continue
                self._socks.update({client, upstream})
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:  # shutdown first: a close alone, while the other pipe's thread blocks in
                    # recv() on the same socket, sends no FIN until that recv returns (the
                    # client learns of the cut at its next heartbeat, 15 s later)
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self, refuse_for: float = 0.0) -> None:
        """Drop every live connection; refuse new ones for ``refuse_for`` seconds."""
        self._refuse_until = time.monotonic() + refuse_for
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def hang(self, seconds: float) -> None:
        """Drop every live connection; for ``seconds``, accept new ones and say nothing."""
        self._hang_until = time.monotonic() + seconds
        self.cut()

    def heal(self) -> None:
        """Answer again at once (refused or held connections: gone)."""
        self._refuse_until = self._hang_until = 0.0
        held, self._held = self._held, []
        for s in held:
            s.close()

    @property
    def endpoint(self) -> str:
        """As an HTTP endpoint (AWS_ENDPOINT_URL through the proxy)."""
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()
