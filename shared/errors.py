"""The error vocabulary every layer shares, sorted by what the caller can do.

* ``TransientError``: the world hiccupped (connection lost, throttled). Retry, with backoff.
* ``PermanentError``: the input is wrong (bad message, bad request). Reject it, do not retry.
* ``ConditionFailed``: an expected outcome, not a failure: a conditional write lost its race
  or its precondition no longer holds. Callers branch on it.
"""

from __future__ import annotations

from typing import Any


class WorkerpoolError(Exception):
    """Base of every error workerpool raises on purpose."""


class ConfigError(WorkerpoolError):
    """A variable is missing or wrong; the message is one line naming it."""


class TransientError(WorkerpoolError):
    """Retryable: the broker or AWS is unreachable or throttling."""


class BrokerUnavailable(TransientError):
    """The broker does not answer (or the connection was lost)."""


class AwsUnavailable(TransientError):
    """AWS (or the emulator at AWS_ENDPOINT_URL) does not answer, or throttles beyond our
    retries."""


class PermanentError(WorkerpoolError):
    """Not retryable: the request or message is wrong."""


class InvalidMessage(PermanentError):
    """A message body that cannot be parsed or validated; ``reason`` names the field."""

    def __init__(self, reason: str, *, request_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id


class Unroutable(PermanentError):
    """A message published with mandatory=True that no queue took (e.g. a gone reply queue)."""


class AwsError(PermanentError):
    """AWS refused a call for a reason retrying will not fix; ``code`` is AWS's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConditionFailed(WorkerpoolError):
    """A conditional write did not apply. ``item`` is the item as it was (if DynamoDB said)."""

    def __init__(self, what: str, item: dict[str, Any] | None = None) -> None:
        super().__init__(what)
        self.item = item


class LockLost(WorkerpoolError):
    """This replica no longer provably holds its active-replica lock (another took it over,
    or it could not be confirmed): the mutating call it guarded was not made."""
