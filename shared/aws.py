"""boto3 clients and the translation of AWS errors into ours (store.py and asg.py use it)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
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
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from shared.errors import AwsError, AwsUnavailable

log = logging.getLogger(__name__)

#: botocore's "standard" mode retries throttling and 5xx with jittered backoff itself.
BOTO_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 6},
    connect_timeout=3,
    read_timeout=10,
    max_pool_connections=32,
)

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
            "BatchWriteItem": "RequestItems", "BatchGetItem": "RequestItems"}


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
    else:
        kinds = {next(iter(item)) for item in items}
    return f"{line}[{','.join(sorted(kinds))}]"


def _recorder(path: str) -> Callable[..., None]:
    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        line = recorded_operation(model.service_model.signing_name, model.name, params)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    return record


#: For health checks: one try, short timeouts (an answer within ~2 s, even when AWS is not).
QUICK_CONFIG = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=1,
                      read_timeout=2)


def client(service: str, *, region: str, endpoint_url: str | None = None,
           quick: bool = False) -> Any:
    """A boto3 client; AWS_ENDPOINT_URL (an emulator) is honoured when ``endpoint_url`` is
    given."""
    c = boto3.client(service, region_name=region, endpoint_url=endpoint_url or None,
                     config=QUICK_CONFIG if quick else BOTO_CONFIG)
    path = os.environ.get(RECORD_ENV)
    if path:
        c.meta.events.register("before-parameter-build", _recorder(path))
    return c


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


def aws_call(fn: Callable[..., T]) -> Callable[..., T]:
    """Retry an adapter method while AWS is unreachable (3 tries, jittered), then raise.

    Throttling is already retried by botocore; what reaches us is translated. ClientErrors
    that a method handles itself (a failed condition) must be caught inside ``fn``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        retrying = Retrying(
            retry=retry_if_exception_type(AwsUnavailable),
            wait=wait_exponential(multiplier=0.2, max=3) + wait_random(0, 0.2),
            stop=stop_after_attempt(3),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                try:
                    return fn(*args, **kwargs)
                except (ClientError, BotoCoreError) as exc:
                    raise translate(exc) from exc
        raise AssertionError("unreachable")

    return wrapper
