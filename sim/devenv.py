"""The environment ``workerpool dev`` gives its processes, and the AWS emulators behind it.

moto answers every AWS service (the default), or every one but DynamoDB, which DynamoDB
Local answers (``--dynamodb local``). The processes find them the way boto3 documents:
``AWS_ENDPOINT_URL`` (moto) and ``AWS_ENDPOINT_URL_DYNAMODB`` (DynamoDB Local); botocore
resolves each client's endpoint from them (shared/aws.py), nothing passes one by hand.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

#: Timings for a local pool: a whole lifecycle in seconds, not minutes. Any of them can be
#: overridden by setting the variable before `workerpool dev`.
DEV_DEFAULTS = {
    "HEARTBEAT_INTERVAL": "2",
    "REAP_INTERVAL": "1",
    "COOLDOWN_SECONDS": "5",
    "RECONCILE_INTERVAL": "1",
    "BOOT_TIMEOUT_SECONDS": "60",
    "FLEET_BOOT_DELAY": "2",
    "LOCK_TTL_SECONDS": "5",
    "SCALE_IN_IDLE_SECONDS": "60",
    "LOG_LEVEL": "INFO",
}

BACKENDS = ("moto", "local")
DYNAMODB_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "dynamodb"


class DevError(Exception):
    """What keeps the local pool from starting, said in words for the user."""


def environment(args: argparse.Namespace) -> dict[str, str]:
    """Ours, with the local pool's timings and credentials where the user set none."""
    env = {**os.environ}
    for key, value in DEV_DEFAULTS.items():
        env.setdefault(key, value)
    env.setdefault("AWS_ACCESS_KEY_ID", "testing")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    env.setdefault("AWS_REGION", "us-east-1")
    if args.target is not None:
        env["TARGET_AVAILABLE"] = str(args.target)
    if args.max is not None:
        env["ASG_MAX_SIZE"] = str(args.max)
    env["HEALTH_PORT"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    _attestation(env)
    return env


def _attestation(env: dict[str, str]) -> None:
    """Attestation and TLS on, as on AWS: the simulated IMDS signs identity documents with a
    local key (kept in .cache/dev/), whose certificate the dispatchers get as IDENTITY_CERT;
    each simulated code-server serves https with the certificate its agent registers."""
    from sim.identity import CERT_FILE, KEY_FILE, IdentityAuthority

    state = Path(env.get("WORKERPOOL_DEV_STATE", ".cache/dev")).resolve()
    IdentityAuthority.in_dir(state)
    env.setdefault("IDENTITY_CERT", str(state / CERT_FILE))
    env.setdefault("FLEET_IDENTITY_KEY", str(state / KEY_FILE))
    env.setdefault("FLEET_TLS", "1")  # code-server over https, as on a real VM


def backend(args: argparse.Namespace) -> str:
    """``--dynamodb``: who serves DynamoDB, ``moto`` (the default) or ``local``."""
    chosen = getattr(args, "dynamodb", None) or "moto"
    if chosen not in BACKENDS:
        raise DevError(f"--dynamodb {chosen}: choose one of {', '.join(BACKENDS)}")
    return str(chosen)


def point_at(env: dict[str, str], *, moto: str, dynamodb: str | None) -> None:
    """Every AWS service on moto, DynamoDB on ``dynamodb`` when given. Whatever per-service
    endpoint the user's shell sets goes: the local pool is moto and, at most, DynamoDB
    Local, never half of it elsewhere."""
    for key in [k for k in env if k.startswith("AWS_ENDPOINT_URL_")]:
        del env[key]
    env.pop("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", None)  # it would turn both off
    env["AWS_ENDPOINT_URL"] = moto
    if dynamodb is not None:
        env["AWS_ENDPOINT_URL_DYNAMODB"] = dynamodb


def dynamodb_local(env: dict[str, str]) -> str:
    """DynamoDB Local's URL, started by ``scripts/dynamodb start`` if it is not running
    (idempotent; DYNAMODB_LOCAL_PORT picks the port, 8000 by default)."""
    key = env.get("AWS_ACCESS_KEY_ID", "")
    if not key.isalnum():
        raise DevError(f"DynamoDB Local refuses the access key id {key!r}: it must be letters "
                       "and digits only (unset AWS_ACCESS_KEY_ID to use `testing`)")
    if not DYNAMODB_SCRIPT.exists():
        raise DevError(f"--dynamodb local needs {DYNAMODB_SCRIPT} (a checkout of workerpool)")
    try:  # its progress lines (stderr) go to the user's terminal
        done = subprocess.run([str(DYNAMODB_SCRIPT), "start"], env=env, text=True,
                              stdout=subprocess.PIPE, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DevError(f"scripts/dynamodb start: {exc}") from exc
    lines = done.stdout.split()
    if done.returncode != 0 or not lines:
        raise DevError(f"scripts/dynamodb start failed (exit {done.returncode}; see above)")
    return lines[-1]


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def empty_table(table: str, region: str) -> bool:
    """Drop ``table`` where DynamoDB Local keeps it between runs, so the pool starts empty
    as it does on moto: last run's workers would name instances this moto never launched.
    Only on a loopback endpoint; True if there was one to drop."""
    from shared.aws import client, configured_endpoint

    endpoint = configured_endpoint("DYNAMODB")
    if endpoint is None or not is_loopback(endpoint):
        raise DevError(f"refusing to drop table {table} at {endpoint or 'AWS'}")
    db = client("dynamodb", region=region)
    try:
        db.delete_table(TableName=table)
    except db.exceptions.ResourceNotFoundException:
        return False
    db.get_waiter("table_not_exists").wait(TableName=table,
                                           WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    return True
