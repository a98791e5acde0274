"""The command line a user meets before anything is sent: help on every flag, examples and
exit codes in every command's help, one name for one idea, --version, completion."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from shared.cli import build_parser

WORKERPOOL = str(Path(sys.executable).with_name("workerpool"))
CLIENT_VERBS = ("claim", "cancel", "release", "renew", "open", "status", "completion")


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("name", [*CLIENT_VERBS, "bootstrap", "definitions"])
def test_every_command_has_examples_and_exit_codes_and_every_flag_has_help(name: str) -> None:
    parser = _commands()[name]
    assert parser.epilog and "examples:" in parser.epilog and "exit codes:" in parser.epilog
    assert "  0    " in parser.epilog
    for action in parser._actions:
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_waiting_is_called_wait_everywhere_and_timeout_still_works() -> None:
    commands = _commands()
    for name in ("claim", "cancel", "release", "renew", "status"):
        flags = {o for a in commands[name]._actions for o in a.option_strings}
        assert {"--wait", "--timeout"} <= flags, name
    args = build_parser().parse_args(["release", "--timeout", "2m", "i-0abc"])
    assert args.wait == 120 and args.instance == "i-0abc"
    old = build_parser().parse_args(["renew", "--instance", "i-0abc", "--lease", "2h"])
    assert old.instance_opt == "i-0abc" and old.lease == 7200  # v1 spelling still accepted


def test_durations_are_accepted_for_lease_and_wait() -> None:
    args = build_parser().parse_args(["claim", "--lease", "90m", "--wait", "2m"])
    assert (args.lease, args.wait, args.user) == (5400, 120, None)


def test_version_is_printed_and_exits_zero() -> None:
    done = subprocess.run([WORKERPOOL, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.startswith("workerpool ") and done.stdout.split()[1][0].isdigit()


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_know_the_verbs(shell: str) -> None:
    done = subprocess.run([WORKERPOOL, "completion", shell], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    for verb in ("claim", "release", "status"):
        assert verb in done.stdout
    assert "--watch" in done.stdout and "--lease" in done.stdout
