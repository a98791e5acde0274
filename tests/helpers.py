"""Test helpers: real processes, a shared moto server, the real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail with ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A real workerpool process (``python -m <module>``) with its JSON log lines collected."""

    def __init__(self, module: str, env: dict[str, str], name: str | None = None,
                 args: list[str] | None = None) -> None:
        self.name = name or module
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", module, *(args or [])], env=full_env, cwd=str(ROOT),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.raw.append(line.rstrip("\n"))
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def events(self, event: str) -> list[dict[str, Any]]:
        return [l for l in self.lines if l.get("event") == event]

    def wait_ready(self, timeout: float = 20) -> dict[str, Any]:
        def ready() -> Any:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.popen.returncode}:\n"
                                     + "\n".join(self.raw[-30:]))
            got = self.events("ready")
            return got[0] if got else None

        return wait_for(ready, timeout, what=f"{self.name} ready")  # type: ignore[no-any-return]

    @property
    def health_port(self) -> int:
        return int(self.wait_ready()["health_port"])

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 12) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not stop within {timeout}s:\n"
                                 + "\n".join(self.raw[-30:])) from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def log_text(self) -> str:
        return "\n".join(self.raw)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
