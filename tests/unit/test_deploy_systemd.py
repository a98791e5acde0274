"""The systemd units: each starts a module of the package, restarts, tells systemd when it is
ready and that it is alive (Type=notify, WatchdogSec=), points to its documentation, and is
hardened, the three orchestrator units through one drop-in with the agent's own lines."""

from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
#: systemd applies ``<prefix>-.service.d/`` to every unit whose name starts with ``<prefix>-``
DROP_IN = SYSTEMD / "workerpool-.service.d" / "hardening.conf"
AGENT = ROOT / "deploy" / "agent" / "workerpool-agent.service"
DOCS_BASE = "https://github.com/workerpool/workerpool/blob/main/"
#: what every unit must say, whoever runs it (the agent's unit has had these first)
HARDENING = {
    "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
    "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes",
    "ProtectHostname": "yes", "ProtectProc": "invisible",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
    "SystemCallArchitectures": "native", "SystemCallFilter": "@system-service",
}


def parse(*paths: Path) -> configparser.ConfigParser:
    """The unit as systemd reads it: the file, then its drop-ins (later lines win)."""
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    for path in paths:
        cp.read(path)
    return cp


def effective(unit: Path) -> configparser.ConfigParser:
    prefix = unit.name.split("-")[0] + "-"
    drop_ins = sorted((unit.parent / f"{prefix}.service.d").glob("*.conf"))
    return parse(unit, *drop_ins)


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
    s = effective(unit)["Service"]
    assert s["Restart"] in ("always", "on-failure") and float(s["RestartSec"]) > 0
    assert s["TimeoutStopSec"] == "15"
    assert s["User"] == "workerpool" and s["EnvironmentFile"] == "/etc/workerpool/workerpool.env"
    assert {k: s.get(k) for k in HARDENING} == HARDENING
    assert s["UMask"] == "0077"  # the services write no file
    assert parse(unit)["Install"]["WantedBy"] == "multi-user.target"


def test_the_shared_drop_in_holds_only_hardening_and_the_agent_has_the_same_lines() -> None:
    assert DROP_IN.is_file()
    drop_in = parse(DROP_IN)
    assert drop_in.sections() == ["Service"]
    assert set(drop_in["Service"]) == set(HARDENING) | {"UMask"}
    agent = parse(AGENT)["Service"]
    assert {k: agent.get(k) for k in HARDENING} == HARDENING
    assert agent["UMask"] == "0027"  # code-server's group reads the config it writes


@pytest.mark.parametrize("unit", [*UNITS, AGENT], ids=lambda p: p.name)
def test_each_unit_notifies_systemd_and_is_watched(unit: Path) -> None:
    s = effective(unit)["Service"]
    assert s["Type"] == "notify"  # READY=1 comes with the "ready" log line
    assert 10 <= int(s["WatchdogSec"]) <= 300
    # the default NotifyAccess=main is right: python itself is the main process
    assert s.get("NotifyAccess", "main") == "main"
    assert s["ExecStart"].split()[0].endswith("/python")


@pytest.mark.parametrize("unit", [*UNITS, AGENT], ids=lambda p: p.name)
def test_each_unit_documents_itself_with_a_page_of_this_repository(unit: Path) -> None:
    docs = parse(unit)["Unit"]["Documentation"].split()
    assert docs
    for url in docs:
        assert url.startswith(DOCS_BASE), url
        assert (ROOT / url.removeprefix(DOCS_BASE)).is_file(), url


def test_the_example_environment_turns_the_v2_checks_on() -> None:
    example = (SYSTEMD / "workerpool.env.example").read_text(encoding="utf-8")
    env = dict(line.split("=", 1) for line in example.splitlines()
               if line and not line.startswith("#"))
    assert env["SERVICE_USERS"] == "workerpool-service"
    assert env["CLIENT_AUTH"] in ("broker", "field")
    assert env["IDENTITY_CERT"] == "/etc/workerpool/identity-certs.pem"
    assert "REPLACE-ME" in env["AMQP_URL"]  # an example, never a real password


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (the checks above still ran)")
def test_systemd_reads_every_line_of_the_units_and_the_drop_in(tmp_path: Path) -> None:
    # as installed: the units side by side, the drop-in in its prefix directory
    for unit in [*UNITS, AGENT]:
        shutil.copy(unit, tmp_path / unit.name)
    shutil.copytree(DROP_IN.parent, tmp_path / DROP_IN.parent.name)
    (tmp_path / DROP_IN.parent.name / "zz-probe.conf").write_text("[Service]\nNotAKey=1\n")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *[f"./{u.name}" for u in [*UNITS, AGENT]]],
        cwd=tmp_path, env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"},
        capture_output=True, text=True, timeout=60)
    lines = [line for line in (done.stdout + done.stderr).splitlines()
             if "is not executable" not in line]  # the venv exists on the hosts only
    # the probe shows the prefix drop-in is read; nothing else is amiss
    probes = [line for line in lines if "NotAKey" in line]
    assert len(probes) >= 1, lines
    assert [line for line in lines if "NotAKey" not in line] == []
