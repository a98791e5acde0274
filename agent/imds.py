"""An IMDSv2 client: the agent's only source of identity (PROTOCOL §4).

Every request carries a session token (PUT ``/latest/api/token`` first); there is no
IMDSv1 fallback, because accounts that require IMDSv2 answer token-less GETs with 401
and the previous agent broke exactly there (SEED.md). The token is refreshed before it
expires and after a 401 (IMDS restarted, or the token was revoked). Timeouts are short:
IMDS is link-local and answers in milliseconds when it answers at all.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException

from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from shared.errors import PermanentError, TransientError
from shared.messages.base import INSTANCE_ID

log = logging.getLogger(__name__)

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_ANSWER_BYTES = 4096
_VALUE = re.compile(r"^[A-Za-z0-9.:_-]{1,64}$")


class ImdsUnavailable(TransientError):
    """IMDS did not answer, answered 5xx, or refused our token: worth another try."""


class ImdsBadAnswer(PermanentError):
    """IMDS answered, but not with something usable (404 for a required key, garbage)."""


@dataclass(frozen=True)
class Identity:
    """What the agent registers with; ``None`` where IMDS has no such value."""

    instance_id: str
    private_ip: str | None
    public_ip: str | None
    instance_type: str | None
    availability_zone: str | None


@dataclass(frozen=True)
class Attestation:
    """The instance identity document (its exact text: the signature is over its bytes) and
    IMDS's base64 signature of it (PROTOCOL §4 v2)."""

    document: str
    signature: str


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    # urllib honours HTTP_PROXY; IMDS and code-server are local and must never go through one
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Imds:
    """IMDSv2 at ``endpoint`` (AWS_EC2_METADATA_SERVICE_ENDPOINT)."""

    def __init__(
        self,
        *,
        endpoint: str,
        token_ttl: int = 21600,
        timeout: float = 1.0,
        attempts: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._ttl = token_ttl
        self._timeout = timeout
        self._attempts = attempts
        self._clock = clock
        self._token: str | None = None
        self._token_expires = 0.0
        self._opener = _no_proxy_opener()

    # --- token ------------------------------------------------------------------------
    def _refresh_due(self, now: float) -> bool:
        # renew with a tenth of the TTL left, so a token never expires between check and use
        return self._token is None or now >= self._token_expires - max(1.0, self._ttl / 10)

    def token(self) -> str:
        """A valid session token, fetched (PUT) when absent or close to expiry."""
        now = self._clock()
        if self._refresh_due(now):
            req = urllib.request.Request(self.endpoint + TOKEN_PATH, method="PUT",
                                         headers={TTL_HEADER: str(self._ttl)})
            self._token = self._send(req, "api/token")
            self._token_expires = now + self._ttl
        assert self._token is not None
        return self._token

    # --- metadata ---------------------------------------------------------------------
    def get(self, key: str, *, optional: bool = False, base: str = "meta-data",
            exact: bool = False) -> str | None:
        """``/latest/<base>/<key>`` with the token; None for a 404 when ``optional``.
        ``exact``: the answer as served (not stripped), for signed documents."""
        retrying = Retrying(
            retry=retry_if_exception_type(ImdsUnavailable),
            wait=wait_exponential_jitter(multiplier=0.1, max=1.0, jitter=0.05),
            stop=stop_after_attempt(self._attempts),
            before_sleep=before_sleep_log(log, logging.DEBUG),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                req = urllib.request.Request(
                    f"{self.endpoint}/latest/{base}/{key}",
                    headers={TOKEN_HEADER: self.token()},
                )
                try:
                    return self._send(req, key, exact=exact)
                except _NotFound:
                    if optional:
                        return None
                    raise ImdsBadAnswer(f"IMDS has no {key} (404)") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def identity(self) -> Identity:
        """instance-id (required) plus the IPs, type and zone (absent is fine)."""
        instance_id = self.get("instance-id")
        if instance_id is None or not re.match(INSTANCE_ID, instance_id):
            raise ImdsBadAnswer(f"instance-id {instance_id!r:.80} is not an instance id")
        values = {key: self.get(key, optional=True) for key in
                  ("local-ipv4", "public-ipv4", "instance-type", "placement/availability-zone")}
        for key, value in values.items():
            if value is not None and not _VALUE.match(value):
                raise ImdsBadAnswer(f"{key} {value!r:.80} is not a usable value")
        return Identity(
            instance_id=instance_id,
            private_ip=values["local-ipv4"],
            public_ip=values["public-ipv4"],
            instance_type=values["instance-type"],
            availability_zone=values["placement/availability-zone"],
        )

    def attestation(self) -> Attestation | None:
        """The identity document and its signature; None where this IMDS serves none."""
        document = self.get("instance-identity/document", optional=True, base="dynamic",
                            exact=True)
        signature = self.get("instance-identity/signature", optional=True, base="dynamic")
        if not document or not signature:
            return None
        return Attestation(document=document, signature=signature)

    # --- one HTTP exchange ------------------------------------------------------------
    def _send(self, req: urllib.request.Request, what: str, *, exact: bool = False) -> str:
        try:
            with self._opener.open(req, timeout=self._timeout) as resp:
                body: bytes = resp.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                self._token = None  # expired or revoked (IMDS restarted): fetch a new one
                raise ImdsUnavailable(f"IMDS refused the token for {what} (401)") from None
            if exc.code == 404:
                raise _NotFound() from None
            if exc.code >= 500:
                raise ImdsUnavailable(f"IMDS answered {exc.code} for {what}") from None
            raise ImdsBadAnswer(f"IMDS answered {exc.code} for {what}") from None
        except (OSError, HTTPException) as exc:  # refused, timed out, connection dropped
            raise ImdsUnavailable(f"IMDS at {self.endpoint} does not answer ({what}): "
                                  f"{exc!r:.200}") from None
        if len(body) > MAX_ANSWER_BYTES:
            raise ImdsBadAnswer(f"IMDS answer for {what} is too long")
        try:
            text = body.decode("ascii")
            return text if exact else text.strip()
        except UnicodeDecodeError:
            raise ImdsBadAnswer(f"IMDS answer for {what} is not text") from None


class _NotFound(Exception):
    pass
