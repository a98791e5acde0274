"""The ``workerpool`` command (PROTOCOL §1): bootstrap, dev, and the client verbs.

``dev`` (the whole pool on one machine) comes from the ``sim`` package and needs the
``[local]`` extra; without it the subcommand only says how to get it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from shared.errors import AwsError, AwsUnavailable, BrokerUnavailable, ConfigError

EXIT_OK = 0
EXIT_FAILED = 1  # the request was answered, but not with what was asked (unavailable, ...)
EXIT_USAGE = 2  # bad arguments or configuration
EXIT_UNREACHABLE = 3  # broker or AWS does not answer
EXIT_TIMEOUT = 4  # no reply in time

Command = Callable[[argparse.Namespace], int]

BOOTSTRAP_EPILOG = """\
examples:
  AWS_ENDPOINT_URL=http://127.0.0.1:4566 workerpool bootstrap    against moto
  workerpool bootstrap --no-broker                               the table only

exit codes:
  0    done (prints what exists now, as JSON)
  2    bad configuration
  3    broker or AWS unreachable
"""

DEFINITIONS_EPILOG = """\
examples:
  workerpool definitions > definitions.json

exit codes:
  0    printed
"""

LOCAL_EXTRA_MISSING = ("the local pool needs the [local] extra: pip install -e '.[local]' "
                       "(or ./scripts/dev, which installs it)")


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    from shared import logging as wlogging
    from shared.bootstrap import bootstrap
    from shared.config import load_settings

    settings = load_settings("bootstrap")
    wlogging.setup("bootstrap", settings.log_level)
    result = bootstrap(settings, broker=not args.no_broker)
    print(json.dumps(result))
    return EXIT_OK


def _cmd_definitions(args: argparse.Namespace) -> int:
    from shared.topology import definitions

    print(json.dumps(definitions(), indent=2))
    return EXIT_OK


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("workerpool")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workerpool",
        description="On-demand development VMs from a warm pool (see README.md).",
        epilog="`workerpool COMMAND --help` shows a command's flags, examples and exit codes; "
               "docs/cli.md has sample output. The broker is AMQP_URL; your user id is "
               "--user, else $WORKERPOOL_USER, else your login name.",
    )
    parser.add_argument("--version", action="version", version=f"workerpool {_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bootstrap",
                       help="create the table (and, against an emulator, the ASG)",
                       description="Create the DynamoDB table and its indexes, declare the "
                       "broker's queues and, against an emulator (AWS_ENDPOINT_URL), the "
                       "launch template and ASG. Idempotent: safe to run again.",
                       epilog=BOOTSTRAP_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-broker", action="store_true", help="do not declare the broker topology")
    p.set_defaults(func=_cmd_bootstrap)

    p = sub.add_parser("definitions", help="print the RabbitMQ definitions of our queues",
                       description="Print the RabbitMQ definitions (queues, exchanges, "
                       "bindings) as JSON, for `rabbitmqctl import_definitions`.",
                       epilog=DEFINITIONS_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=_cmd_definitions)

    try:  # the client verbs live in their own module
        from shared import client_cli

        client_cli.add_commands(sub)
    except ImportError:
        pass
    _add_dev(sub)
    return parser


def _cmd_dev_unavailable(args: argparse.Namespace) -> int:
    print(f"workerpool dev: {LOCAL_EXTRA_MISSING}", file=sys.stderr)
    return EXIT_USAGE


def _add_dev(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dev`` from the sim package when the [local] extra is installed, else a stub."""
    try:
        from sim import dev
    except ModuleNotFoundError:
        pass
    else:
        if dev.can_run():
            dev.add_command(sub)
            return
    p = sub.add_parser("dev", help="run the whole pool locally (needs the [local] extra)",
                       add_help=False)
    p.set_defaults(func=_cmd_dev_unavailable)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.func is not _cmd_dev_unavailable:  # that one takes any arguments
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"workerpool {args.command}: bad configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokerUnavailable as exc:
        print(f"workerpool {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except AwsUnavailable as exc:
        print(f"workerpool {args.command}: AWS does not answer: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except AwsError as exc:
        print(f"workerpool {args.command}: AWS refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
