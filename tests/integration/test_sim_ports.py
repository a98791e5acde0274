"""moto's port in ``workerpool dev`` and the tests: a quick restart gets it back although
the last run's connections sit in TIME-WAIT on it, and a port another process really holds
is refused in words that name the holder."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from sim.motoserver import SerializedMotoServer
from sim.ports import PortTaken, listen

HOLD = """
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(60)
"""


def server_closes_first(port: int) -> None:
    """A request the server answers and then hangs up on: its side of the connection, on
    ``port``, goes to TIME-WAIT for a minute."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"GET /moto-api/ HTTP/1.1\r\nHost: moto\r\nConnection: close\r\n\r\n")
        while c.recv(65536):
            pass  # until the server closes


def plain_bind_fails(port: int) -> bool:
    """What the old probe did (bind without SO_REUSEADDR): refused while TIME-WAIT lasts."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def test_moto_gets_its_port_back_while_the_last_runs_connections_are_in_time_wait() -> None:
    first = SerializedMotoServer().start()
    port = first.port
    for _ in range(3):
        server_closes_first(port)
    first.stop()
    assert plain_bind_fails(port), "no TIME-WAIT on the port: this test proves nothing"
    again = SerializedMotoServer(port=port).start()
    try:
        assert again.endpoint == f"http://127.0.0.1:{port}"
        server_closes_first(port)  # and it answers
    finally:
        again.stop()


def test_a_port_another_process_listens_on_is_refused_naming_it() -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        port = int(holder.stdout.readline())
        started = time.monotonic()
        with pytest.raises(PortTaken) as caught:
            SerializedMotoServer(port=port)
        assert time.monotonic() - started < 5
        assert f"port {port} is taken by pid {holder.pid}" in str(caught.value)
    finally:
        holder.kill()
        holder.wait()


def test_another_moto_on_the_port_is_named_as_such() -> None:
    first = SerializedMotoServer().start()
    try:
        with pytest.raises(PortTaken, match="a moto server"):
            listen("127.0.0.1", first.port)
    finally:
        first.stop()


def test_a_port_an_outgoing_connection_left_in_time_wait_is_named_as_such() -> None:
    """A client's TIME-WAIT (an ephemeral port it closed first) blocks even SO_REUSEADDR
    for a minute: what to say is "wait", not "stop that process"."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.socket()
        client.bind(("127.0.0.1", 0))
        port = client.getsockname()[1]
        client.connect(server.getsockname())
        accepted, _ = server.accept()
        client.close()  # the client closes first: its side, on ``port``, goes to TIME-WAIT
        accepted.recv(1)
        accepted.close()
    with pytest.raises(PortTaken, match="TIME-WAIT that some client made"):
        listen("127.0.0.1", port)
