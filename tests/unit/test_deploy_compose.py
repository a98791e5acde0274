"""docker-compose.yml, validated structurally (no Docker engine here): every service runs a
module or console script of the package, every variable it sets is one the config knows,
the broker loads our definitions, and each long-running process has a healthcheck and restarts."""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import pytest
import yaml

from shared.cli import build_parser
from shared.config import Settings
from tests import iam

COMPOSE: dict[str, Any] = yaml.safe_load((iam.ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OURS = [name for name, s in SERVICES.items() if s.get("image", "").startswith("python")]
#: variables a workerpool container may set that are not Settings fields: boto3 reads these
ALLOWED_EXTRAS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def _command(service: dict[str, Any]) -> str:
    cmd = service["command"]
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def test_the_pool_has_every_process_and_two_dispatchers() -> None:
    assert set(SERVICES) == {"rabbitmq", "moto", "bootstrap", "dispatcher", "scaler", "reaper",
                             "fleet"}
    assert SERVICES["dispatcher"]["deploy"]["replicas"] == 2
    assert SERVICES["moto"]["image"].startswith("motoserver/moto")
    assert "management" in SERVICES["rabbitmq"]["image"]


@pytest.mark.parametrize("name", OURS)
def test_each_command_names_a_module_or_console_script_that_exists(name: str) -> None:
    cmd = _command(SERVICES[name])
    modules = re.findall(r"python -m ([\w.]+)", cmd)
    verbs = re.findall(r"\bworkerpool (\w+)", cmd)
    assert modules or verbs, cmd
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module
        if "." not in module:
            assert importlib.util.find_spec(f"{module}.__main__") is not None, module
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for verb in verbs:
        assert verb in choices, verb


@pytest.mark.parametrize("name", OURS)
def test_every_variable_a_service_sets_is_a_setting_or_a_listed_aws_credential(name: str
                                                                               ) -> None:
    fields = {f.upper() for f in Settings.model_fields}
    env = set(SERVICES[name].get("environment", {}))
    assert env - fields <= ALLOWED_EXTRAS, env - fields - ALLOWED_EXTRAS


@pytest.mark.parametrize("name", [n for n in OURS if n != "bootstrap"])
def test_long_running_processes_restart_and_check_health_on_their_port(name: str) -> None:
    s = SERVICES[name]
    assert s["restart"] in ("unless-stopped", "always", "on-failure")
    probe = " ".join(s["healthcheck"]["test"])
    assert f":{s['environment']['HEALTH_PORT']}/health" in probe


def test_no_process_uses_guest_and_the_broker_loads_our_definitions() -> None:
    for name in OURS:
        assert "guest" not in SERVICES[name]["environment"]["AMQP_URL"]
    assert "@" in SERVICES["fleet"]["environment"]["AMQP_URL"]
    assert SERVICES["fleet"]["environment"]["AMQP_URL"].startswith("amqp://workerpool-agent:")
    mounts = " ".join(SERVICES["rabbitmq"]["volumes"])
    assert "deploy/rabbitmq/definitions.json:/etc/rabbitmq/definitions.json" in mounts
    conf = (iam.ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf").read_text()
    assert "load_definitions = /etc/rabbitmq/definitions.json" in conf


def test_services_wait_for_the_bootstrap_to_finish() -> None:
    for name in ("dispatcher", "scaler", "reaper", "fleet"):
        deps = SERVICES[name]["depends_on"]
        assert deps["bootstrap"]["condition"] == "service_completed_successfully"
