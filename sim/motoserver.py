"""An in-process moto server (the local AWS) that answers one request at a time.

moto's DynamoDB is not atomic under concurrent requests; one request at a time makes each
call atomic, as DynamoDB's are, so ``workerpool dev`` and the tests exercise our conditional
writes, not moto's races (docs/emulators.md). Local pools and tests only: the ``[local]``
extra brings moto.
"""

from __future__ import annotations

import logging
import threading
from typing import Any


class SerializedMotoServer:
    """moto on ``host:port`` (0: any free port). The port is bound here, with SO_REUSEADDR,
    so a quick restart keeps it while the last run's connections sit in TIME-WAIT; a port
    another process listens on raises ``sim.ports.PortTaken`` naming it (werkzeug's own
    bind would print a line and exit the process)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        from sim.ports import listen

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
        inner = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        def serialized(environ: Any, start_response: Any) -> list[bytes]:
            with lock:
                return list(inner(environ, start_response))

        sock = listen(host, port)
        try:  # werkzeug serves a duplicate of this socket
            self._server = make_server(host, port, serialized, threaded=True,
                                       request_handler=MotoRequestHandler, fd=sock.fileno())
        finally:
            sock.close()
        self.port = int(self._server.server_address[1])
        self.endpoint = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="moto")

    def start(self) -> SerializedMotoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
