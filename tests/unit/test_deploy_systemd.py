"""The orchestrator's systemd units: each starts a module of the package, restarts, is hardened."""

from __future__ import annotations

import configparser
import importlib.util
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "systemd").glob("*.service"))


def parse(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    cp.read(path)
    return cp


def test_there_is_a_unit_for_each_orchestrator_process() -> None:
    assert [u.name for u in UNITS] == ["workerpool-dispatcher.service",
                                       "workerpool-reaper.service", "workerpool-scaler.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_each_unit_runs_a_module_that_exists_in_the_package(unit: Path) -> None:
    exec_start = parse(unit)["Service"]["ExecStart"].split()
    assert exec_start[:2] == ["/opt/workerpool/venv/bin/python", "-m"]
    module = exec_start[2]
    assert unit.name == f"workerpool-{module}.service"
    assert importlib.util.find_spec(module) is not None, f"no package {module}"
    assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{module} has no __main__"


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_each_unit_restarts_stops_in_time_and_is_hardened(unit: Path) -> None:
    s = parse(unit)["Service"]
    assert s["Restart"] in ("always", "on-failure") and float(s["RestartSec"]) > 0
    assert s["TimeoutStopSec"] == "15"
    assert s["User"] == "workerpool" and s["EnvironmentFile"] == "/etc/workerpool/workerpool.env"
    assert (s["NoNewPrivileges"], s["ProtectSystem"], s["ProtectHome"], s["PrivateTmp"]) == (
        "yes", "strict", "yes", "yes")
    assert s["CapabilityBoundingSet"] == ""
    assert parse(unit)["Install"]["WantedBy"] == "multi-user.target"


def test_the_example_environment_turns_the_v2_checks_on() -> None:
    example = (UNITS[0].parent / "workerpool.env.example").read_text(encoding="utf-8")
    env = dict(line.split("=", 1) for line in example.splitlines()
               if line and not line.startswith("#"))
    assert env["SERVICE_USERS"] == "workerpool-service"
    assert env["CLIENT_AUTH"] in ("broker", "field")
    assert env["IDENTITY_CERT"] == "/etc/workerpool/identity-certs.pem"
    assert "REPLACE-ME" in env["AMQP_URL"]  # an example, never a real password
