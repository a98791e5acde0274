"""Settings: the variables of ``variables.py`` with the checks that need code (URLs, lists,
files, empty-means-default), the values derived from them, and the warnings about values
that are valid but probably not what was meant."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from pydantic import field_validator, model_validator

from shared.config.amqp import redact_url, split_urls
from shared.config.variables import DEFAULT_HEALTH_PORTS, Variables


class Settings(Variables):
    """All configuration, from the environment (and ``.env``). Field name = variable name."""

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        users = set()
        for url in split_urls(value):
            try:
                parts = urlsplit(url)
                port = parts.port  # raises on a non-numeric port
            except ValueError as exc:
                raise ValueError("is not a valid URL") from exc
            if parts.scheme not in ("amqp", "amqps"):
                raise ValueError("must start with amqp:// or amqps://")
            if not parts.hostname:
                raise ValueError("has no host")
            del port
            users.add((unquote(parts.username or "guest"), unquote(parts.path[1:]) or "/"))
        if len(users) > 1:
            raise ValueError("lists brokers with different users or vhosts (a list names the "
                             "nodes of one cluster)")
        return value

    @field_validator("worker_instance_types")
    @classmethod
    def _instance_types(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        if any(not re.fullmatch(r"[a-z0-9-]+\.[a-z0-9-]+", n) for n in names):
            raise ValueError("must be comma-separated instance types such as t3.medium")
        return ",".join(dict.fromkeys(names))

    @field_validator("service_users", "gateway_users")
    @classmethod
    def _user_list(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = [n.strip() for n in value.split(",") if n.strip()]
        if any(c.isspace() for n in names for c in n):
            raise ValueError("must be comma-separated broker user names")
        return ",".join(names)

    @field_validator("identity_cert")
    @classmethod
    def _pem_file(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        try:
            with open(value, encoding="ascii") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read it ({exc})") from None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError("is not a PEM certificate file")
        return value

    @field_validator("aws_ec2_metadata_service_endpoint", "code_server_url",
                     "agent_deregister_on_stop", mode="before")
    @classmethod
    def _empty_is_default(cls, value: str | None, info: object) -> str:
        """An empty value (``CODE_SERVER_URL=``) means the default, not "no URL"."""
        if isinstance(value, str) and getattr(info, "field_name", "") == \
                "agent_deregister_on_stop":
            value = value.strip().lower()
        if value in (None, ""):
            name = getattr(info, "field_name", "")
            return str(cls.model_fields[name].default)
        return value  # type: ignore[return-value]

    @field_validator("aws_endpoint_url", "aws_ec2_metadata_service_endpoint", "code_server_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        if self.heartbeat_timeout is None:
            self.heartbeat_timeout = 3 * self.heartbeat_interval
        # A timeout at or below the interval makes every worker look dead between beats; it
        # is allowed (a process may only need the timeout, e.g. the reaper) but flagged.
        return self

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not what was meant."""
        out = []
        if self.dead_after <= self.heartbeat_interval:
            out.append(f"HEARTBEAT_TIMEOUT ({self.dead_after:g}) is not above "
                       f"HEARTBEAT_INTERVAL ({self.heartbeat_interval:g}): workers will look "
                       "dead between heartbeats")
        return out

    # ------------------------------------------------------------------------------------
    @property
    def dead_after(self) -> float:
        """Seconds of heartbeat silence after which a worker is dead."""
        assert self.heartbeat_timeout is not None
        return self.heartbeat_timeout

    @property
    def instance_types(self) -> tuple[str, ...]:
        """WORKER_INSTANCE_TYPES in order of preference, or WORKER_INSTANCE_TYPE alone."""
        return tuple(self.worker_instance_types.split(",")) if self.worker_instance_types \
            else (self.worker_instance_type,)

    @property
    def service_user_names(self) -> frozenset[str]:
        """SERVICE_USERS, or the user of our own AMQP_URL (PROTOCOL §1)."""
        if self.service_users is not None:
            return frozenset(self.service_users.split(",")) - {""}
        return frozenset({self.broker_user})

    @property
    def gateway_user_names(self) -> frozenset[str]:
        return frozenset(self.gateway_users.split(",")) - {""}

    @property
    def broker_user(self) -> str:
        """The broker user of AMQP_URL (``guest`` when the URL names none, as pika does)."""
        return unquote(urlsplit(split_urls(self.amqp_url)[0]).username or "guest")

    def port_for(self, process: str) -> int:
        return self.health_port if self.health_port is not None else DEFAULT_HEALTH_PORTS[process]

    def redacted_amqp_url(self) -> str:
        return redact_url(self.amqp_url)
