"""docker-compose.yml and the Dockerfile. Structurally, always (no Docker engine here): every
service of ours runs the one image the Dockerfile builds (multi-stage, non-root, a pinned base;
nothing installed at start), a module or console script of the package, with variables the
config knows; the broker is the version of our definitions and loads them, with its Prometheus
plugin; each long-running process has a healthcheck and restarts. And `docker compose config`
(or the older `docker-compose config`) where Compose is installed: it needs no daemon."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from shared.cli import build_parser
from shared.config import Settings
from tests import iam

COMPOSE: dict[str, Any] = yaml.safe_load((iam.ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OURS = [name for name, s in SERVICES.items() if "build" in s]
DOCKERFILE = (iam.ROOT / "Dockerfile").read_text()
DEFINITIONS = json.loads((iam.ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())
#: variables a workerpool container may set that are not Settings fields: boto3 reads these
#: boto3's own variables: credentials, and a service's endpoint (PROTOCOL v2 §1)
ALLOWED_EXTRAS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_DYNAMODB"}


def _command(service: dict[str, Any]) -> str:
    cmd = service["command"]
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def test_the_pool_has_every_process_and_two_dispatchers() -> None:
    assert set(SERVICES) == {"rabbitmq", "moto", "dynamodb", "bootstrap", "dispatcher",
                             "scaler", "reaper", "fleet", "prometheus", "grafana"}
    assert set(OURS) == {"bootstrap", "dispatcher", "scaler", "reaper", "fleet"}
    # monitoring comes with its profile only: `docker compose up` is the pool alone
    assert SERVICES["prometheus"]["profiles"] == SERVICES["grafana"]["profiles"] == [
        "monitoring"]
    assert SERVICES["dispatcher"]["deploy"]["replicas"] == 2
    assert SERVICES["moto"]["image"].startswith("motoserver/moto")
    # two dispatchers lease concurrently: the table must be on an atomic backend, not moto
    assert SERVICES["dynamodb"]["image"].startswith("amazon/dynamodb-local:")
    for name in OURS:
        if name != "fleet":
            env = SERVICES[name]["environment"]
            assert env["AWS_ENDPOINT_URL_DYNAMODB"] == "http://dynamodb:8000", name
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


@pytest.mark.parametrize("name", OURS)
def test_every_process_runs_the_image_built_once_and_installs_nothing_at_start(name: str
                                                                             ) -> None:
    s = SERVICES[name]
    assert s["build"] == {"context": ".", "target": "runtime"}
    assert s["image"] == "workerpool:local"
    assert "pip" not in _command(s) and not s.get("volumes")  # no checkout mounted either


def test_the_dockerfile_has_two_stages_a_pinned_base_and_runs_unprivileged() -> None:
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, flags=re.M)
    assert base and re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?",
                                 base[1]), base
    stages = re.findall(r"^FROM \$\{PYTHON_IMAGE\} AS (\w+)$", DOCKERFILE, flags=re.M)
    assert stages == ["build", "runtime"]
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    assert "COPY --from=build /opt/workerpool/venv /opt/workerpool/venv" in runtime
    assert "pip install" not in runtime  # only the built virtualenv reaches this stage
    users = re.findall(r"^USER (\S+)$", runtime, flags=re.M)
    assert users == ["workerpool:workerpool"]
    # the context is what the build copies and nothing else (no .venv, no .git)
    ignore = (iam.ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore
    for source in re.findall(r"^COPY (?!--)(.+) \S+$", DOCKERFILE, flags=re.M):
        for path in source.split():
            assert f"!{path}" in ignore or f"!{path}/" in ignore, path


def test_every_image_is_pinned_and_rabbitmq_is_the_version_of_the_definitions() -> None:
    for name, s in SERVICES.items():
        if name in OURS:
            continue
        image = s["image"]
        assert ":" in image and not image.endswith((":latest", ":3", ":3-management")), image
    version = DEFINITIONS["rabbit_version"]
    assert SERVICES["rabbitmq"]["image"] == f"rabbitmq:{version}-management"


def test_the_broker_runs_its_prometheus_plugin_and_our_message_size_limit() -> None:
    mounts = " ".join(SERVICES["rabbitmq"]["volumes"])
    assert "deploy/rabbitmq/enabled_plugins:/etc/rabbitmq/enabled_plugins" in mounts
    plugins = (iam.ROOT / "deploy" / "rabbitmq" / "enabled_plugins").read_text()
    assert re.fullmatch(r"\[[a-z_,]+\]\.\n", plugins)
    assert {"rabbitmq_prometheus", "rabbitmq_management"} <= set(plugins.strip("[].\n").split(","))
    assert "15692:15692" in SERVICES["rabbitmq"]["ports"]


def _compose() -> list[str] | None:
    """The Compose on this machine: the plugin, else the standalone v1; None if neither."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.skipif(_compose() is None, reason="neither `docker compose` nor `docker-compose` "
                    "is installed (the structural tests above still ran)")
def test_docker_compose_accepts_the_file_with_and_without_the_monitoring_profile() -> None:
    compose = _compose()
    assert compose is not None
    for extra in ([], ["--profile", "monitoring"]):
        done = subprocess.run([*compose, "-f", str(iam.ROOT / "docker-compose.yml"), *extra,
                               "config", "--services"], capture_output=True, text=True,
                              timeout=60, cwd=iam.ROOT)
        assert done.returncode == 0, done.stderr
        # v1 lists profiled services either way; the plugin only with their profile
        assert set(OURS) | {"rabbitmq", "moto"} <= set(done.stdout.split()) <= set(SERVICES)


def test_the_image_and_the_repository_carry_the_license_pyproject_names() -> None:
    import tomllib

    declared = tomllib.loads((iam.ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == {"text": "Apache-2.0"}
    assert f'org.opencontainers.image.licenses="{declared["text"]}"' in DOCKERFILE
    text = (iam.ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
