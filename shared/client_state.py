"""What the command line remembers between runs: the last worker this user claimed (its
instance, URL, lease expiry and certificate fingerprint; never a password), in the XDG state
directory, so that ``release``, ``renew`` and ``open`` need no instance id."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

KEPT = ("user_id", "instance_id", "url", "lease_expiry", "tls_fingerprint")


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "workerpool"


def _path(user: str) -> Path:
    return state_dir() / f"last-claim-{user}.json"


def remember(user: str, reply: dict[str, Any]) -> None:
    """Keep an ``assigned`` reply's worker (best effort: a read-only home is no error)."""
    worker = reply.get("worker") or {}
    record = {"user_id": user, "instance_id": worker.get("instance_id"),
              "url": worker.get("url"), "lease_expiry": reply.get("lease_expiry"),
              "tls_fingerprint": worker.get("tls_fingerprint")}
    _write(user, record)


def _write(user: str, record: dict[str, Any]) -> None:
    try:
        state_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
        _path(user).write_text(json.dumps(record))
    except OSError:
        pass


def last(user: str) -> dict[str, Any] | None:
    try:
        record = json.loads(_path(user).read_text())
    except (OSError, ValueError):
        return None
    return {k: record.get(k) for k in KEPT} if isinstance(record, dict) else None


def renewed(user: str, instance_id: str, lease_expiry: str | None) -> None:
    """After a renewal of the remembered worker: keep its new expiry."""
    record = last(user)
    if record and record.get("instance_id") == instance_id and lease_expiry:
        _write(user, {**record, "lease_expiry": lease_expiry})


def forget(user: str, instance_id: str) -> None:
    """After a release of the remembered worker."""
    record = last(user)
    if record and record.get("instance_id") == instance_id:
        _path(user).unlink(missing_ok=True)
