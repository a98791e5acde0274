"""boto3 clients and the translation of AWS errors into ours (store.py and asg.py use it)."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from shared.errors import AwsError, AwsUnavailable

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class CallPolicy:
    """How long one AWS call may take: botocore makes one attempt of at most
    ``connect + read`` seconds, and ``aws_call`` retries an unreachable or throttling AWS
    ``attempts`` times (jittered backoff, logged). Short on purpose: a claim's deadline and
    the scaler's and reaper's lock (fencing) are counted in seconds, so no call may hang for
    a minute as botocore's defaults allow."""

    connect: float
    read: float
    attempts: int

    def config(self) -> Config:
        # total_max_attempts, not max_attempts: botocore reads the latter as retries after
        # the first attempt (max_attempts=1 made two attempts: twice every timeout here)
        return Config(retries={"mode": "standard", "total_max_attempts": 1},
                      connect_timeout=self.connect, read_timeout=self.read,
                      max_pool_connections=32)


#: The services' calls: at most ~6 s an attempt, 3 attempts.
STANDARD = CallPolicy(connect=2, read=4, attempts=3)
#: Calls on a path with a deadline (a claim, a fenced scaler or reaper action): ~3 s, 2 tries.
FAST = CallPolicy(connect=1, read=2, attempts=2)
#: Health probes, and what must be done by a deadline (the outcome of a claim answered at its
#: deadline): one short try. DynamoDB answers in milliseconds; 1.5 s is its bad day.
QUICK = CallPolicy(connect=0.5, read=1.5, attempts=1)


class Reachability:
    """Whether AWS answered our last call (thread-safe enough: plain assignments). What
    depends on AWS being up (answering a claim's outcome before its deadline, counting the
    reaper's grace after an outage) asks it instead of finding out the slow way."""

    def __init__(self, what: str = "AWS") -> None:
        self.what = what  # the service, for the log lines of a change
        self.down_since: float | None = None  # monotonic, while the last call failed
        self.up_since: float | None = None  # monotonic, since AWS answered again
        self.reason: str | None = None

    def ok(self) -> None:
        if self.down_since is not None:
            log.warning("%s answers again", self.what, extra={
                "event": "aws_up", "service": self.what,
                "down_seconds": round(time.monotonic() - self.down_since, 1)})
        if self.down_since is not None or self.up_since is None:
            self.up_since = time.monotonic()
        self.down_since, self.reason = None, None

    def failed(self, exc: Exception) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("%s does not answer", self.what, extra={
                "event": "aws_down", "service": self.what, "error": str(exc)[:300]})
        self.reason = str(exc)[:300]

    @property
    def down(self) -> bool:
        return self.down_since is not None


THROTTLING = {
    "ThrottlingException",
    "Throttling",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "RequestLimitExceededException",
    "TooManyRequestsException",
    "InternalServerError",
    "ServiceUnavailable",
}


#: When set, every AWS operation a process performs is appended to this file as
#: ``<signing-name>:<Operation>``, and for a request made of items (TransactWriteItems,
#: BatchWriteItem...) with the kinds of its items, ``[ConditionCheck,Update]``: AWS
#: authorises each item as its own action (the IAM least-privilege test reads it).
RECORD_ENV = "WORKERPOOL_RECORD_AWS_CALLS"

#: Requests whose items AWS authorises one by one: the parameter that lists them.
ITEMISED = {"TransactWriteItems": "TransactItems", "TransactGetItems": "TransactItems",
            "BatchWriteItem": "RequestItems", "BatchGetItem": "RequestItems",
            "BatchExecuteStatement": "Statements"}


def recorded_operation(service: str, operation: str, params: dict[str, Any]) -> str:
    """One line of the recording: the operation, and the kinds of items it carries."""
    line = f"{service}:{operation}"
    key = ITEMISED.get(operation)
    if key is None:
        return line
    items = params.get(key) or []
    if isinstance(items, dict):  # Batch*: table name -> requests (or keys)
        kinds = {next(iter(r)) for reqs in items.values() for r in
                 (reqs if isinstance(reqs, list) else [{"Get": reqs}])}
    elif operation == "BatchExecuteStatement":  # PartiQL: the verb of each statement
        kinds = {str(item.get("Statement", "")).split(None, 1)[0].upper() for item in items}
    else:
        kinds = {next(iter(item)) for item in items}
    return f"{line}[{','.join(sorted(kinds))}]"


def _recorder(path: str) -> Callable[..., None]:
    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        line = recorded_operation(model.service_model.signing_name, model.name, params)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    return record


def client(service: str, *, region: str, endpoint_url: str | None = None,
           policy: CallPolicy = STANDARD) -> Any:
    """A boto3 client whose calls take at most ``policy``'s time. Its endpoint is botocore's
    to resolve (PROTOCOL v2 §1): ``AWS_ENDPOINT_URL_<SERVICE>`` (e.g. DynamoDB Local for
    ``AWS_ENDPOINT_URL_DYNAMODB``), then ``AWS_ENDPOINT_URL``, then the shared config file,
    then AWS itself. ``endpoint_url`` is for the few callers that must point one client
    somewhere else (a test's cuttable proxy, a benchmark's counting one)."""
    c = boto3.client(service, region_name=region, endpoint_url=endpoint_url or None,
                     config=policy.config())
    path = os.environ.get(RECORD_ENV)
    if path:
        c.meta.events.register("before-parameter-build", _recorder(path))
    return c


def configured_endpoint(service_env: str) -> str | None:
    """The endpoint the environment names for a service (``AWS_ENDPOINT_URL_<service_env>``,
    else ``AWS_ENDPOINT_URL``), as botocore will resolve it; None for AWS itself. For words
    in logs and for bootstrap's "is this an emulator?", never passed to a client."""
    return (os.environ.get(f"AWS_ENDPOINT_URL_{service_env}")
            or os.environ.get("AWS_ENDPOINT_URL") or None)


T = TypeVar("T")


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def error_message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


def translate(exc: Exception) -> Exception:
    """botocore's exceptions → AwsUnavailable (retry later) or AwsError (do not retry)."""
    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError,
                        ConnectTimeoutError, BotoConnectionError)):
        return AwsUnavailable(f"AWS endpoint does not answer: {exc}")
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in THROTTLING:
            return AwsUnavailable(f"{code}: {error_message(exc)}")
        return AwsError(code, error_message(exc))
    if isinstance(exc, BotoCoreError):  # e.g. parameter validation: our bug, not AWS's
        return AwsError(type(exc).__name__, str(exc))
    return exc


def _retry_note(call: str, seen: Reachability | None) -> Callable[[RetryCallState], None]:
    """Log a retry: a warning while AWS was answering, a debug line while it is known down
    (its going down and coming back are logged once each, by Reachability)."""

    def note(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        level = logging.DEBUG if seen is not None and seen.down else logging.WARNING
        log.log(level, "AWS call failed; trying again", extra={
            "call": call, "attempt": state.attempt_number,
            "in_seconds": round(state.next_action.sleep, 2) if state.next_action else None,
            "error": str(exc)[:300]})

    return note


def aws_call(fn: Callable[..., T]) -> Callable[..., T]:
    """Retry one AWS request while AWS is unreachable or throttles, then raise.

    The attempts come from the adapter's ``policy`` (the method's ``self``; STANDARD when it
    has none) and the outcome is noted on its ``reachability`` if it keeps one. ClientErrors
    that a method handles itself (a failed condition) must be caught inside ``fn``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        owner = args[0] if args else None
        policy: CallPolicy = getattr(owner, "policy", STANDARD)
        seen: Reachability | None = getattr(owner, "reachability", None)
        retrying = Retrying(
            retry=retry_if_exception_type(AwsUnavailable),
            wait=wait_exponential(multiplier=0.2, max=3) + wait_random(0, 0.2),
            stop=stop_after_attempt(policy.attempts),
            before_sleep=_retry_note(fn.__qualname__, seen),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    try:
                        result = fn(*args, **kwargs)
                    except (ClientError, BotoCoreError) as exc:
                        raise translate(exc) from exc
                    if seen is not None:
                        seen.ok()
                    return result
        except AwsUnavailable as exc:
            if seen is not None:
                seen.failed(exc)
            raise
        raise AssertionError("unreachable")

    return wrapper
