"""``workerpool dev``: the whole pool on one machine.

The broker at AMQP_URL (localhost by default), an embedded moto server as AWS
(sim/motoserver.py), then bootstrap, dispatchers, scaler, reaper and the simulated fleet
(sim/fleet.py) as child processes. Their JSON log lines are merged, prefixed and shortened;
a line per process says when it is ready; Ctrl-C stops everything (SIGTERM, then SIGKILL
after 12 s).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

COLORS = ["36", "35", "33", "32", "34", "31", "96", "95"]


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[str]
    color: str
    ready: bool = False
    health_port: int | None = None
    buffer: str = field(default="")


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def _short(line: str) -> str:
    """A JSON log line as ``level msg key=value ...`` (raw text if it is not JSON)."""
    try:
        rec = json.loads(line)
    except ValueError:
        return line
    if not isinstance(rec, dict):
        return line
    skip = {"ts", "level", "process", "logger", "msg", "exc"}
    extras = " ".join(f"{k}={v}" for k, v in rec.items() if k not in skip)
    text = f"{rec.get('level', ''):<7} {rec.get('msg', '')} {extras}".rstrip()
    if rec.get("exc"):
        text += "\n" + rec["exc"]
    return text


class Dev:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children: list[Child] = []
        self.sel = selectors.DefaultSelector()
        self.tty = sys.stdout.isatty()
        self.stopping = False

    def say(self, text: str) -> None:
        print(f"\033[1m[dev]\033[0m {text}" if self.tty else f"[dev] {text}", flush=True)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        popen = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, bufsize=1,
                                 start_new_session=True)
        child = Child(name, popen, COLORS[len(self.children) % len(COLORS)])
        self.children.append(child)
        assert popen.stdout is not None
        os.set_blocking(popen.stdout.fileno(), False)
        self.sel.register(popen.stdout, selectors.EVENT_READ, child)
        return child

    def pump(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            child: Child = key.data
            chunk = key.fileobj.read()  # type: ignore[union-attr]
            if not chunk:
                self.sel.unregister(key.fileobj)
                continue
            child.buffer += chunk
            *lines, child.buffer = child.buffer.split("\n")
            for line in lines:
                self.show(child, line)

    def show(self, child: Child, line: str) -> None:
        if not line.strip():
            return
        try:
            rec = json.loads(line)
        except ValueError:
            rec = {}
        if isinstance(rec, dict) and rec.get("event") == "ready" and not child.ready:
            child.ready = True
            child.health_port = rec.get("health_port")
            self.say(f"✓ {child.name} ready (health http://127.0.0.1:{child.health_port}/health)")
        prefix = f"{child.name:<12}|"
        if self.tty:
            prefix = f"\033[{child.color}m{prefix}\033[0m"
        print(f"{prefix} {_short(line)}", flush=True)

    def stop_all(self) -> None:
        self.stopping = True
        self.say("stopping everything…")
        for c in reversed(self.children):
            if c.popen.poll() is None:
                try:
                    os.killpg(c.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and any(c.popen.poll() is None for c in self.children):
            self.pump(0.1)
        for c in self.children:
            if c.popen.poll() is None:
                self.say(f"{c.name} did not stop in time; killing it")
                os.killpg(c.popen.pid, signal.SIGKILL)
        for c in self.children:
            c.popen.wait()
        self.pump(0)


def _broker_answers(url: str) -> str | None:
    from shared.broker import connect
    from shared.errors import BrokerUnavailable

    try:
        connect(url, "dev").close()
        return None
    except BrokerUnavailable as exc:
        return str(exc)


def _management_url() -> str | None:
    try:
        urllib.request.urlopen("http://127.0.0.1:15672/", timeout=1).read(1)
        return "http://127.0.0.1:15672/ (guest/guest)"
    except OSError:
        return None


def _environment(args: argparse.Namespace) -> dict[str, str]:
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


def _prepare(dev: Dev, env: dict[str, str], amqp_url: str) -> None:
    """Empty queues (unless kept), then the table, the ASG and the broker's topology."""
    from shared import topology
    from shared.bootstrap import bootstrap
    from shared.broker import purge
    from shared.config import parse_settings

    os.environ.update(env)  # this launcher's own settings are the children's
    settings = parse_settings()
    if not dev.args.keep_queues:
        purge(amqp_url, "dev", [q.name for q in topology.QUEUES])
    bootstrap(settings)
    dev.say(f"bootstrapped table {settings.table_name} and ASG {settings.asg_name} "
            f"(max {settings.asg_max_size}); target {settings.target_available} free workers")


def _start_processes(dev: Dev, env: dict[str, str]) -> None:
    py = sys.executable
    for k in range(dev.args.dispatchers):
        dev.start(f"dispatcher-{k + 1}", [py, "-m", "dispatcher"], env)
    dev.start("scaler", [py, "-m", "scaler"], env)
    dev.start("reaper", [py, "-m", "reaper"], env)
    dev.start("fleet", [py, "-m", "sim.fleet"], env)


def _announce(dev: Dev, endpoint: str) -> None:
    ports = ", ".join(f"{c.name} :{c.health_port}" for c in dev.children)
    dev.say("the pool is up.")
    ui = _management_url() or "not enabled (rabbitmq-plugins enable rabbitmq_management)"
    dev.say(f"  RabbitMQ management UI: {ui}")
    dev.say(f"  AWS (moto): {endpoint}")
    dev.say(f"  health/metrics ports: {ports}")
    dev.say("  in another terminal:")
    dev.say("    workerpool claim --user alice")
    dev.say(f"    AWS_ENDPOINT_URL={endpoint} AWS_ACCESS_KEY_ID=testing "
            "AWS_SECRET_ACCESS_KEY=testing workerpool status --watch")
    dev.say("  Ctrl-C stops everything.")


def _supervise(dev: Dev, endpoint: str) -> int:
    """Show the children's lines until Ctrl-C (0) or until one of them exits (1)."""

    def on_signal(signum: int, frame: Any) -> None:
        dev.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    announced = False
    code = 0
    while not dev.stopping:
        dev.pump(0.2)
        for c in dev.children:
            if c.popen.poll() is not None:
                dev.say(f"✗ {c.name} exited with status {c.popen.returncode}")
                dev.stopping = True
                code = 1
        if not announced and all(c.ready for c in dev.children):
            announced = True
            _announce(dev, endpoint)
    return code


def run(args: argparse.Namespace) -> int:
    from shared.config import redact_url
    from sim.motoserver import SerializedMotoServer

    env = _environment(args)
    amqp_url = env.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
    if _broker_answers(amqp_url):
        print(f"workerpool dev: RabbitMQ does not answer at {redact_url(amqp_url)}; start one "
              "with `rabbitmq-server -detached` (or set AMQP_URL)", file=sys.stderr)
        return 3
    moto = SerializedMotoServer(port=_free_port(args.moto_port)).start()
    env["AWS_ENDPOINT_URL"] = moto.endpoint
    # one request at a time: its conditional writes are atomic (docs/emulators.md)
    env.setdefault("LEASE_RECHECK_SECONDS", "0")
    dev = Dev(args)
    dev.say(f"moto (AWS) at {moto.endpoint}; broker at {redact_url(amqp_url)}")
    try:
        _prepare(dev, env, amqp_url)
        _start_processes(dev, env)
        code = _supervise(dev, moto.endpoint)
    finally:
        dev.stop_all()
        moto.stop()
    dev.say("stopped.")
    return code


def can_run() -> bool:
    """Whether the AWS emulator is installed (the [local] extra), without importing it."""
    try:
        return importlib.util.find_spec("moto") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def add_command(sub: Any) -> None:
    p = sub.add_parser("dev", help="run the whole pool locally (broker + moto + processes)")
    p.add_argument("--dispatchers", type=int, default=2, help="dispatcher processes (2)")
    p.add_argument("--target", type=int, help="TARGET_AVAILABLE (default from env, or 2)")
    p.add_argument("--max", type=int, help="ASG_MAX_SIZE (default from env, or 10)")
    p.add_argument("--moto-port", type=int, default=4566, help="port for moto (4566, or free)")
    p.add_argument("--keep-queues", action="store_true",
                   help="do not purge workerpool queues at start (moto starts empty anyway)")
    p.set_defaults(func=run)
