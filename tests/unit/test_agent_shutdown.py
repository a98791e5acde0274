"""A stop or a shutdown? The agent deregisters on SIGTERM only when the VM itself goes
(PROTOCOL §4 v2): the pure decision as a table, and how systemctl's answers are read."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.shutdown import (
    VARIABLE,
    SystemState,
    stop_decision,
    system_state,
)
from sim.fakes import FakeCodeServer, FakeImds
from sim.vm import agent_env

MISSING = SystemState(missing=True)
NO_BUS = SystemState(error="exit 1: Failed to connect to bus: No such file or directory")
TIMED_OUT = SystemState(error="systemctl timed out after 2s")


def said(word: str) -> SystemState:
    return SystemState(state=word)


DECISIONS = [
    # auto: ask systemd when it is there
    ("auto", said("stopping"), True),  # poweroff, reboot, EC2 stop/terminate, spot, ASG
    ("auto", said("running"), False),  # systemctl restart, an upgrade
    ("auto", said("degraded"), False),  # the same, with some other unit failed
    ("auto", said("starting"), False),  # a restart during boot
    ("auto", said("initializing"), False),
    ("auto", said("maintenance"), False),  # rescue/emergency: the VM stays
    ("auto", said("offline"), True),  # systemctl there, systemd not init: a container
    ("auto", MISSING, True),  # no systemctl at all: the sim, a slim container
    ("auto", None, True),  # not asked: same as no systemd
    ("auto", said("unknown"), False),  # systemd there but would not say: keep the lease
    ("auto", said("something-new"), False),
    ("auto", NO_BUS, False),
    ("auto", TIMED_OUT, False),
    # always: every stop is the machine going (today's behaviour, made explicit)
    *[("always", s, True) for s in (said("running"), said("stopping"), MISSING, NO_BUS, None)],
    # never: only the heartbeat timeout takes the worker out
    *[("never", s, False) for s in (said("running"), said("stopping"), MISSING, NO_BUS, None)],
]


@pytest.mark.parametrize(
    ("mode", "system", "deregister"), DECISIONS,
    ids=[f"{m} + {s.describe() if s else 'not asked'} -> {'deregister' if d else 'keep'}"
         for m, s, d in DECISIONS])
def test_the_stop_decision_table(mode: Any, system: SystemState | None,
                                 deregister: bool) -> None:
    decision = stop_decision(mode, system)
    assert decision.deregister is deregister
    assert decision.reason  # the "stopping" log line says why


def test_the_reason_names_what_decided() -> None:
    assert "stopping" in stop_decision("auto", said("stopping")).reason
    assert "running" in stop_decision("auto", said("running")).reason
    assert "lease is kept" in stop_decision("auto", said("running")).reason
    assert "Failed to connect to bus" in stop_decision("auto", NO_BUS).reason
    assert stop_decision("always", said("running")).reason == f"{VARIABLE}=always"
    assert stop_decision("never", said("stopping")).reason == f"{VARIABLE}=never"


@pytest.mark.parametrize(("raw", "mode"), [(None, "auto"), ("", "auto"), ("auto", "auto"),
                                           ("always", "always"), (" Never ", "never")])
def test_the_variable_defaults_to_auto_and_reads_its_three_values(raw: str | None,
                                                                   mode: str) -> None:
    from shared.config import parse_settings

    assert parse_settings(**({} if raw is None else {"agent_deregister_on_stop": raw})
                          ).agent_deregister_on_stop == mode


@pytest.mark.parametrize("raw", ["yes", "true", "1", "on-shutdown"])
def test_a_bad_value_is_one_line_naming_the_variable(raw: str) -> None:
    from shared.config import parse_settings
    from shared.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_settings(agent_deregister_on_stop=raw)
    assert str(err.value).startswith(f"{VARIABLE}=")
    assert "'auto', 'always' or 'never'" in str(err.value) and "\n" not in str(err.value)


class FakeRun:
    """Stands in for subprocess.run: answers as systemctl would, and records the call."""

    def __init__(self, stdout: str = "", stderr: str = "", returncode: int = 1,
                 raises: BaseException | None = None) -> None:
        self.result = subprocess.CompletedProcess(["systemctl"], returncode, stdout, stderr)
        self.raises = raises
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def __call__(self, args: list[str], **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        if self.raises is not None:
            raise self.raises
        return self.result


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        (FakeRun("running\n", returncode=0), said("running")),
        (FakeRun("stopping\n"), said("stopping")),  # non-zero exit for all but running
        (FakeRun("degraded\n"), said("degraded")),
        (FakeRun("offline\n"), said("offline")),
        (FakeRun("", "Failed to connect to bus: No such file or directory\n"), NO_BUS),
        (FakeRun("", "", returncode=4), SystemState(error="exit 4: no output")),
        (FakeRun(raises=FileNotFoundError("systemctl")), MISSING),
        (FakeRun(raises=subprocess.TimeoutExpired("systemctl", 2)), TIMED_OUT),
        (FakeRun(raises=PermissionError("denied")),
         SystemState(error="systemctl could not run: denied")),
    ],
)
def test_systemctl_is_read_by_the_word_it_prints_not_by_its_exit_code(
        run: FakeRun, expected: SystemState) -> None:
    assert system_state(run=run, timeout=2) == expected
    args, kwargs = run.calls[0]
    assert args == ["systemctl", "is-system-running"]
    assert kwargs["timeout"] == 2 and kwargs["stdin"] == subprocess.DEVNULL


def test_the_real_systemctl_is_asked_without_raising() -> None:
    # whatever this machine is (a container: offline or missing; a systemd host: running)
    got = system_state()
    assert got.missing or got.state or got.error


def test_the_simulated_fleet_deregisters_its_agents_whatever_the_hosts_systemd_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import parse_settings

    monkeypatch.setenv(VARIABLE, "never")  # not even the developer's own environment
    with FakeImds(instance_id="i-0sim") as imds, FakeCodeServer() as code_server:
        env = agent_env(parse_settings(), imds, code_server, key_file=tmp_path / "k")
    assert env[VARIABLE] == "always"
