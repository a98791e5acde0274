"""``workerpool dev``: the whole pool on one machine.

The broker at AMQP_URL (localhost by default), an embedded moto server as AWS on port 4566
(sim/motoserver.py), or moto for Auto Scaling and EC2 with DynamoDB Local for DynamoDB
(``--dynamodb local``, sim/devenv.py), then bootstrap, dispatchers, scaler, reaper and the
simulated fleet (sim/fleet.py) as child processes. Their JSON log lines are merged,
prefixed and shortened; a line per process says when it is ready; Ctrl-C stops everything,
the fleet before the dispatchers (sim/supervisor.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sim.devenv import DevError, backend, dynamodb_local, empty_table, environment, point_at
from sim.supervisor import Supervisor

if TYPE_CHECKING:
    from sim.motoserver import SerializedMotoServer

EXIT_USAGE = 2  # as shared.cli's: bad arguments or configuration (a taken port among them)
EXIT_UNREACHABLE = 3


@dataclass(frozen=True)
class Endpoints:
    """Where the local pool's AWS answers."""

    moto: str
    dynamodb: str | None  # DynamoDB Local; None: moto serves DynamoDB too


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


def _where(endpoints: Endpoints) -> str:
    if endpoints.dynamodb is None:
        return f"moto at {endpoints.moto} (DynamoDB, Auto Scaling, EC2)"
    return (f"moto at {endpoints.moto} (Auto Scaling, EC2), "
            f"DynamoDB Local at {endpoints.dynamodb} (DynamoDB)")


def _prepare(sup: Supervisor, args: argparse.Namespace, env: dict[str, str],
             endpoints: Endpoints) -> None:
    """Empty queues (unless kept) and, on DynamoDB Local, the table; then the table, the ASG
    and the broker's topology."""
    from shared import topology
    from shared.bootstrap import bootstrap
    from shared.broker import purge
    from shared.config import parse_settings

    for key in [k for k in os.environ if k not in env]:  # e.g. the shell's own endpoints
        del os.environ[key]
    os.environ.update(env)  # this launcher's own settings are the children's
    settings = parse_settings()
    if not args.keep_queues:
        purge(settings.amqp_url, "dev", [q.name for q in topology.QUEUES])
    if endpoints.dynamodb is not None and empty_table(settings.table_name, settings.aws_region):
        sup.say(f"dropped last run's table {settings.table_name} from DynamoDB Local "
                "(the pool starts empty, as on moto)")
    bootstrap(settings)
    sup.say(f"bootstrapped table {settings.table_name} and ASG {settings.asg_name} "
            f"(max {settings.asg_max_size}); target {settings.target_available} free workers")


def _start_processes(sup: Supervisor, args: argparse.Namespace, env: dict[str, str]) -> None:
    py = sys.executable
    names = [(f"dispatcher-{k + 1}", "dispatcher") for k in range(args.dispatchers)]
    for name, module in [*names, ("scaler", "scaler"), ("reaper", "reaper"),
                         ("fleet", "sim.fleet")]:
        if sup.stopping:  # Ctrl-C while starting
            return
        sup.start(name, [py, "-m", module], env)


def _announce(sup: Supervisor, endpoints: Endpoints) -> None:
    ports = ", ".join(f"{c.name} :{c.health_port}" for c in sup.children)
    sup.say("the pool is up.")
    ui = _management_url() or "not enabled (rabbitmq-plugins enable rabbitmq_management)"
    sup.say(f"  RabbitMQ management UI: {ui}")
    sup.say(f"  AWS: {_where(endpoints)}")
    sup.say(f"  health/metrics ports: {ports}")
    sup.say("  in another terminal:")
    sup.say("    workerpool claim --user alice")
    aws = f"AWS_ENDPOINT_URL={endpoints.moto}"
    if endpoints.dynamodb is not None:
        aws += f" AWS_ENDPOINT_URL_DYNAMODB={endpoints.dynamodb}"
    sup.say(f"    {aws} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "
            "workerpool status --watch")
    sup.say("  Ctrl-C stops everything.")


def _on_signals(sup: Supervisor) -> None:
    """Ctrl-C (or SIGTERM) stops the pool, from the first moment: during the start too,
    which then stops where it is instead of raising KeyboardInterrupt among its children."""

    def on_signal(signum: int, frame: Any) -> None:
        if sup.stopping:
            sup.hurry = True  # a second Ctrl-C while stopping
        sup.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def _supervise(sup: Supervisor, endpoints: Endpoints) -> int:
    """Show the children's lines until Ctrl-C (0) or until one of them exits (1)."""
    announced = False
    code = 0
    while not sup.stopping:
        sup.pump(0.2)
        for c in sup.children:
            if not c.running:
                sup.say(f"✗ {c.name} exited with status {c.popen.returncode}")
                sup.stopping = True
                code = 1
        if not announced and all(c.ready for c in sup.children):
            announced = True
            _announce(sup, endpoints)
    return code


def _start_moto(port: int) -> SerializedMotoServer:
    from sim.motoserver import SerializedMotoServer
    from sim.ports import PortTaken

    try:
        return SerializedMotoServer(port=port).start()
    except PortTaken as exc:
        raise DevError(f"moto cannot listen: {exc.strerror}. Stop it, or give moto another "
                       "port with --moto-port N (0: any free one; the README's commands "
                       "expect 4566)") from exc


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except DevError as exc:
        print(f"workerpool dev: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    from shared.config import redact_url

    dynamodb = backend(args)
    env = environment(args)
    amqp_url = env.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
    sup = Supervisor(amqp_url)
    _on_signals(sup)
    if _broker_answers(amqp_url):
        print(f"workerpool dev: RabbitMQ does not answer at {redact_url(amqp_url)}; start one "
              "with `rabbitmq-server -detached` (or set AMQP_URL)", file=sys.stderr)
        return EXIT_UNREACHABLE
    moto = _start_moto(args.moto_port)
    code = 0
    try:
        endpoints = Endpoints(moto.endpoint,
                              dynamodb_local(env) if dynamodb == "local" else None)
        point_at(env, moto=endpoints.moto, dynamodb=endpoints.dynamodb)
        sup.say(f"AWS: {_where(endpoints)}; broker at {redact_url(amqp_url)}")
        if not sup.stopping:
            _prepare(sup, args, env, endpoints)
        _start_processes(sup, args, env)
        code = _supervise(sup, endpoints)
    finally:
        if sup.children:
            sup.stop_all()
        moto.stop()
    sup.say("stopped.")
    return code


def can_run() -> bool:
    """Whether the AWS emulator is installed (the [local] extra), without importing it."""
    try:
        return importlib.util.find_spec("moto") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


DEV_EPILOG = """examples:
  workerpool dev                      # the pool on moto and the local RabbitMQ
  workerpool dev --dynamodb local     # DynamoDB on DynamoDB Local instead
  workerpool dev --target 4 --max 20  # a bigger pool

exit codes: 0 stopped cleanly (Ctrl-C), 1 a process of the pool exited, 2 a bad option
or a port taken, 3 the broker (or DynamoDB Local) does not answer
"""


def add_command(sub: Any) -> None:
    p = sub.add_parser(
        "dev", help="run the whole pool locally (broker + moto + processes)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=DEV_EPILOG)
    p.add_argument("--dynamodb", choices=("moto", "local"), default="moto",
                   help="who serves DynamoDB: moto (default, pure Python) or DynamoDB Local "
                        "(AWS's own emulator: atomic and fast; needs Java, see "
                        "scripts/dynamodb); the ASG stays on moto")
    p.add_argument("--dispatchers", type=int, default=2, help="dispatcher processes (2)")
    p.add_argument("--target", type=int, help="TARGET_AVAILABLE (default from env, or 2)")
    p.add_argument("--max", type=int, help="ASG_MAX_SIZE (default from env, or 10)")
    p.add_argument("--moto-port", type=int, default=4566,
                   help="port for moto (4566; 0: any free port)")
    p.add_argument("--keep-queues", action="store_true",
                   help="do not purge workerpool queues at start (moto starts empty anyway)")
    p.set_defaults(func=run)
