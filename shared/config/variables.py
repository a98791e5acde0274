"""The declarations: every variable of PROTOCOL §1 (and our own), with its type, default and
bounds, and the tables about variables (default health ports, secrets).

The checks that need code, and the values derived from these, are in ``settings.py``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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


class Variables(BaseSettings):
    """The variables as declared (field name = variable name); ``Settings`` adds the checks
    and derived values. Processes build ``Settings``, never this."""

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
