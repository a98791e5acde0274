"""The agent's deployment files say what docs/agent.md promises."""

from __future__ import annotations

import configparser
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "agent"
UNIT = DEPLOY / "workerpool-agent.service"
CLOUD_INIT = DEPLOY / "cloud-init.yaml"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_restarts_on_failure_as_an_unprivileged_user_logging_to_journald() -> None:
    service = unit()["Service"]
    assert service["Restart"] == "on-failure"
    assert service["User"] == "workerpool-agent" and service["User"] != "root"
    assert service["EnvironmentFile"] == "/etc/workerpool/agent.env"
    assert service["ExecStart"].endswith("python -m agent")
    assert service["StandardError"] == "journal"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == ""
    # the agent stops within 10 s of SIGTERM; systemd must wait at least that long
    assert int(service["TimeoutStopSec"]) > 10
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_cloud_init_writes_the_environment_installs_and_enables_the_same_unit() -> None:
    assert CLOUD_INIT.read_text().startswith("#cloud-config\n")
    doc = yaml.safe_load(CLOUD_INIT.read_text())
    files = {f["path"]: f for f in doc["write_files"]}
    env = files["/etc/workerpool/agent.env"]
    assert env["permissions"] == "0640"  # it holds the broker password
    keys = {line.split("=", 1)[0] for line in env["content"].splitlines()
            if line and not line.startswith("#")}
    assert {"AMQP_URL", "HEARTBEAT_INTERVAL", "HEALTH_PORT", "CODE_SERVER_URL"} <= keys
    assert files["/etc/systemd/system/workerpool-agent.service"]["content"] == UNIT.read_text()
    commands = [" ".join(c) if isinstance(c, list) else c for c in doc["runcmd"]]
    assert any("bin/pip install" in c for c in commands)
    assert "systemctl enable --now workerpool-agent.service" in commands
    assert any(u.get("name") == "workerpool-agent" and u.get("system")
               for u in doc["users"] if isinstance(u, dict))
