"""Every variable of PROTOCOL §1 (and our own), typed and validated in one place.

``load_settings(process)`` is what a ``__main__`` calls: on a bad value it prints one line
naming the variable and what is wrong, and exits with status 2 (no traceback).
"""

from __future__ import annotations

import re
import socket
import sys
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError

#: Default HEALTH_PORT of each process ("per process" in PROTOCOL §1).
DEFAULT_HEALTH_PORTS = {
    "dispatcher": 9101,
    "scaler": 9102,
    "reaper": 9103,
    "agent": 9100,
    "fleet": 9104,
    "bootstrap": 0,
    "cli": 0,
}

#: Variables whose values are never echoed (they may hold a password).
SECRET_VARIABLES = {"AMQP_URL"}


#: Between two URLs of an AMQP_URL that lists several brokers (a cluster's nodes): a comma
#: where the next URL begins, so that a password may hold a comma.
_URL_LIST = re.compile(r"\s*,\s*(?=amqps?://)")


def split_urls(value: str) -> list[str]:
    """The URLs of an AMQP_URL, in the order written (one for one broker)."""
    return [u for u in _URL_LIST.split(value.strip()) if u] or [value]


def redact_url(url: str) -> str:
    """``amqp://user:secret@host/vh`` → ``amqp://user:***@host/vh`` (for logs and errors);
    each URL of a comma-separated list likewise."""
    if len(urls := split_urls(url)) > 1:
        return ",".join(redact_url(u) for u in urls)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable>"
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Settings(BaseSettings):
    """All configuration, from the environment (and ``.env``). Field name = variable name."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- PROTOCOL §1 -------------------------------------------------------------------
    amqp_url: str = "amqp://guest:guest@localhost:5672/%2F"
    aws_region: str = Field(default="us-east-1", min_length=1)
    aws_endpoint_url: str | None = None
    table_name: str = Field(default="worker_pool", pattern=r"^[A-Za-z0-9_.-]{3,255}$")
    asg_name: str = Field(default="workerpool-workers", min_length=1, max_length=255)
    asg_max_size: int = Field(default=10, ge=0, le=10000)
    target_available: int = Field(default=2, ge=0, le=10000)
    cooldown_seconds: float = Field(default=30, ge=0)
    heartbeat_interval: float = Field(default=15, gt=0, le=3600)
    heartbeat_timeout: float | None = Field(default=None, gt=0)
    lease_seconds: int = Field(default=3600, ge=10, le=86400)
    claim_wait_seconds: int = Field(default=300, ge=0, le=900)
    boot_timeout_seconds: float = Field(default=600, gt=0)
    reap_interval: float = Field(default=5, gt=0)
    max_leases_per_user: int = Field(default=1, ge=1, le=100)
    health_port: int | None = Field(default=None, ge=0, le=65535)
    aws_ec2_metadata_service_endpoint: str = "http://169.254.169.254"
    code_server_url: str = "http://127.0.0.1:8080"
    #: v2: broker users whose messages internal queues and agent commands accept (comma-
    #: separated); unset: the user in this process's own AMQP_URL.
    service_users: str | None = None
    #: v2, dispatcher: PEM certificate that signs instance identity documents; set: every
    #: registration must be attested (PROTOCOL §4).
    identity_cert: str | None = None
    #: v2, dispatcher: ``field`` takes user_id as written; ``broker`` requires it to equal
    #: the AMQP user_id property (validated by RabbitMQ), except from service/gateway users.
    client_auth: Literal["field", "broker"] = "field"
    #: v2, dispatcher: broker users (e.g. a web portal) that may act for any user_id.
    gateway_users: str = ""
    #: v2, agent: where its Ed25519 key is kept (mode 0600), made on first start.
    agent_key_file: str = Field(default="/var/lib/workerpool/agent.key", min_length=1)
    #: agent: on SIGTERM, deregister only when the VM itself shuts down (``auto``: asks
    #: systemd), ``always`` (the simulated fleet), or ``never`` (docs/agent.md)
    agent_deregister_on_stop: Literal["auto", "always", "never"] = "auto"
    #: agent: where it makes code-server's TLS certificate at first start (code-server's
    #: ``cert``/``cert-key``); unset: code-server serves plain HTTP (docs/deploy.md).
    code_server_tls_dir: str | None = None
    #: v2, reaper: a leased worker whose code-server reports no user activity (nor a renew)
    #: for this long is reclaimed like an expired lease; 0: never (docs/reaper.md)
    idle_seconds: float = Field(default=0, ge=0)
    #: v2, reaper: how long before a lease ends (expiry or idleness) its user is warned on
    #: workerpool.events and on the VM; 0: no warnings (``lease_ended`` is still sent)
    warn_before_seconds: float = Field(default=300, ge=0)

    # --- our own (documented in README "Variables") ------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    code_server_port: int = Field(default=8080, ge=1, le=65535)
    request_memory_seconds: int = Field(default=86400, ge=86400)
    dispatcher_threads: int = Field(default=8, ge=1, le=64)
    wait_poll_interval: float = Field(default=0.25, gt=0, le=10)
    scale_strategy: Literal["missing", "naive"] = "missing"
    reconcile_interval: float = Field(default=5, gt=0)
    scale_in_idle_seconds: float = Field(default=600, ge=0)
    lock_ttl_seconds: float = Field(default=15, gt=0)
    orphan_sweep_interval: float = Field(default=60, gt=0)
    #: reaper: a free worker unhealthy this long (its code-server failing) is replaced
    unhealthy_grace_seconds: float = Field(default=300, ge=0)
    launch_template_name: str = Field(default="workerpool-worker", min_length=3)
    worker_ami_id: str = "ami-12c6146b"
    worker_instance_type: str = "t3.medium"
    #: instance types in order of preference, comma-separated: the ASG's mixed-instances
    #: overrides (bootstrap makes them; the scaler reorders them while a type's capacity
    #: circuit is open); empty: WORKER_INSTANCE_TYPE alone (docs/scaler.md)
    worker_instance_types: str = ""
    #: scaler: ``fixed`` keeps TARGET_AVAILABLE free; ``learned`` keeps max(TARGET_AVAILABLE,
    #: forecast claims/min x p90 time-to-ready) + WARM_MARGIN (docs/scaler.md)
    warm_target: Literal["fixed", "learned"] = "fixed"
    warm_margin: int = Field(default=1, ge=0, le=1000)
    #: scaler, learned: the slow arrival rate's time constant (the fast one's is a sixth)
    demand_window_seconds: float = Field(default=1800, gt=0)
    #: scaler: how long a launch failure for capacity or quota keeps that instance type
    #: (in that zone) behind the others
    capacity_cool_off_seconds: float = Field(default=900, gt=0)
    fleet_boot_delay: float = Field(default=2, ge=0)
    #: agent: "" (the default exchange, routing key workerpool.agents) or "amq.topic" where
    #: broker permissions confine agents to a topic (deploy/rabbitmq/definitions.json).
    agent_exchange: Literal["", "amq.topic"] = ""
    #: dispatcher: per-lease code-server passwords (docs/dispatcher.md "Per-lease passwords").
    lease_passwords: bool = False
    #: dispatcher: how long it waits for the agent's confirmation; agent: how long it gives
    #: the restart command and code-server's /healthz together.
    password_confirm_seconds: float = Field(default=10, gt=0, le=120)
    #: agent: code-server's config file (its ``hashed-password`` is set per lease).
    code_server_config: str = Field(default="/home/ubuntu/.config/code-server/config.yaml",
                                    min_length=1)
    #: agent: run after writing the config (shlex-split, no shell), e.g.
    #: ``sudo systemctl restart code-server@ubuntu``; unset: code-server is not restarted.
    code_server_restart_command: str | None = None
    #: agent: run with a lease notice on standard input, to reach the user's terminals
    #: (shlex-split, no shell); empty: none. The simulated fleet sets a stand-in.
    agent_wall_command: str = "wall"
    #: agent: the file that holds the latest lease notice, in the user's home; empty: none
    agent_notice_file: str = "/home/ubuntu/WORKERPOOL-NOTICE.txt"

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


def _one_line(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]).upper()
        msg = err["msg"].removeprefix("Value error, ")
        if not name:  # a model-level check names its variable itself
            problems.append(msg)
        elif name in SECRET_VARIABLES:
            problems.append(f"{name}: {msg}")
        else:
            problems.append(f"{name}={err.get('input')!r}: {msg}")
    return "; ".join(problems)


def parse_settings(**overrides: object) -> Settings:
    """Build Settings from the environment (+ overrides); raise ConfigError with one line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def load_settings(process: str) -> Settings:
    """For ``__main__``: settings, or one line on stderr and exit status 2."""
    try:
        return parse_settings()
    except ConfigError as exc:
        print(f"workerpool {process}: bad configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def connection_name(process: str) -> str:
    """``<process>@<host>:<pid>``, the client property operators see in the management UI."""
    import os

    return f"{process}@{socket.gethostname()}:{os.getpid()}"
