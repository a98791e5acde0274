"""One JSON object per line on stderr, for every process (PROTOCOL §1).

Use ``extra={...}`` for fields: ``log.info("claim assigned", extra={"request_id": r, ...})``.
pika's own chatter is kept at WARNING; values that look like secrets are never written.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from shared.config import redact_url

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_SECRET_KEYS = {"password", "secret", "token", "aws_secret_access_key", "hashed_password"}


def _clean(key: str, value: Any) -> Any:
    if key.lower() in _SECRET_KEYS:
        return "***"
    if isinstance(value, str) and "://" in value and "@" in value:
        return redact_url(value)
    return value


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "process": self.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = _clean(key, value)
        if record.exc_info and record.levelno >= logging.ERROR:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(process: str, level: str = "INFO") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pika", "botocore", "boto3", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # reconnects are logged by us
    return logging.getLogger(f"workerpool.{process}")
