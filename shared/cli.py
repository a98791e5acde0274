"""The ``workerpool`` command (PROTOCOL §1): bootstrap, dev, and the client verbs."""

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workerpool",
        description="On-demand development VMs from a warm pool (see README.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bootstrap", help="create the table (and, against moto, the ASG)")
    p.add_argument("--no-broker", action="store_true", help="do not declare the broker topology")
    p.set_defaults(func=_cmd_bootstrap)

    p = sub.add_parser("definitions", help="print the RabbitMQ definitions of our queues")
    p.set_defaults(func=_cmd_definitions)

    try:  # the client verbs and `dev` live in their own module
        from shared import client_cli

        client_cli.add_commands(sub)
    except ImportError:
        pass
    try:
        from shared import dev

        dev.add_command(sub)
    except ImportError:
        pass
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
