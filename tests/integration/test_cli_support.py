"""Helpers for the CLI tests (no tests here): ``.venv/bin/workerpool`` run as a user runs it,
in a clean environment (the broker's URL and nothing of AWS unless asked), with its own
state directory, from a directory without a ``.env``."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shared.config import Settings
from tests.helpers import wait_for

#: The console script next to the interpreter running the tests (.venv/bin/workerpool).
WORKERPOOL = str(Path(sys.executable).with_name("workerpool"))


def cli_env(settings: Settings, home: Path, *, aws: bool = False, **extra: str) -> dict[str, str]:
    """What a user's shell would have: PATH, HOME, the broker URL; AWS_* only if ``aws``."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "XDG_STATE_HOME": str(home / "state"), "AMQP_URL": settings.amqp_url,
           "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    if aws:
        env.update({"AWS_ENDPOINT_URL": settings.aws_endpoint_url or "",
                    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_REGION": settings.aws_region, "TABLE_NAME": settings.table_name,
                    "ASG_NAME": settings.asg_name})
    env.update(extra)
    return env


def run(env: dict[str, str], *args: str, timeout: float = 60, shell: bool = False
        ) -> subprocess.CompletedProcess[str]:
    """``workerpool ARGS`` (or, with ``shell``, the one string ``args[0]`` in sh, where
    ``$WP`` is the console script), to the end."""
    cmd: Any = ["sh", "-c", args[0]] if shell else [WORKERPOOL, *args]
    return subprocess.run(cmd, env={**env, "WP": WORKERPOOL}, cwd=env["HOME"], text=True,
                          capture_output=True, timeout=timeout)


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([WORKERPOOL, *args], env=env, cwd=env["HOME"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr


class Tty:
    """``workerpool ARGS`` on a pseudo-terminal (as in a terminal window), output collected."""

    def __init__(self, env: dict[str, str], *args: str, columns: int = 120) -> None:
        master, slave = pty.openpty()
        self.master = master
        env = {**env, "COLUMNS": str(columns), "LINES": "40", "TERM": "xterm-256color"}
        self.proc = subprocess.Popen([WORKERPOOL, *args], env=env, cwd=env["HOME"],
                                     stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.output = b""

    def read(self, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                break
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            self.output += chunk
        return self.text

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def wait_for(self, needle: str, timeout: float = 20) -> None:
        wait_for(lambda: needle in self.read(0.2), timeout, interval=0,
                 what=f"{needle!r} on the terminal; got:\n{self.text[-2000:]}")

    def interrupt(self, timeout: float = 15) -> int:
        self.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read(0.2)
        self.read(0.2)
        code = self.proc.wait(1)
        os.close(self.master)
        return code
