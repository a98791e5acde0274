"""Configuration: every variable typed; a bad one stops the process with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.config import Settings, parse_settings, redact_url
from shared.errors import ConfigError
from tests.helpers import ROOT


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TARGET_AVAILABLE", "-1", "TARGET_AVAILABLE='-1': Input should be greater than or equal to 0"),
        ("AMQP_URL", "nonsense", "AMQP_URL: must start with amqp:// or amqps://"),
        ("HEARTBEAT_INTERVAL", "0", "HEARTBEAT_INTERVAL='0': Input should be greater than 0"),
        ("HEARTBEAT_INTERVAL", "fast", "HEARTBEAT_INTERVAL='fast': Input should be a valid number"),
        ("COOLDOWN_SECONDS", "-5", "COOLDOWN_SECONDS='-5'"),
        ("LEASE_SECONDS", "5", "LEASE_SECONDS='5'"),
        ("CLAIM_WAIT_SECONDS", "901", "CLAIM_WAIT_SECONDS='901'"),
        ("MAX_LEASES_PER_USER", "0", "MAX_LEASES_PER_USER='0'"),
        ("HEALTH_PORT", "70000", "HEALTH_PORT='70000'"),
        ("AWS_ENDPOINT_URL", "localhost:5000", "AWS_ENDPOINT_URL='localhost:5000': must be an http"),
        ("HEARTBEAT_TIMEOUT", "0", "HEARTBEAT_TIMEOUT='0': Input should be greater than 0"),
    ],
)
def test_each_bad_variable_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch, variable: str,
                                                value: str, expected: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as err:
        parse_settings()
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_defaults_follow_the_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    s = parse_settings()
    assert s.amqp_url == "amqp://guest:guest@localhost:5672/%2F"
    assert (s.table_name, s.asg_name, s.target_available, s.cooldown_seconds) == (
        "worker_pool", "workerpool-workers", 2, 30)
    assert (s.heartbeat_interval, s.heartbeat_timeout) == (15, 45)
    assert (s.lease_seconds, s.claim_wait_seconds, s.boot_timeout_seconds) == (3600, 300, 600)
    assert (s.reap_interval, s.max_leases_per_user, s.asg_max_size) == (5, 1, 10)
    assert s.port_for("dispatcher") == 9101


def test_fractional_intervals_are_accepted_and_timeout_follows(monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setenv("HEARTBEAT_INTERVAL", "0.2")
    monkeypatch.setenv("REAP_INTERVAL", "0.1")
    s = parse_settings()
    assert s.heartbeat_timeout == pytest.approx(0.6)
    assert s.reap_interval == 0.1


def test_a_timeout_not_above_the_interval_is_allowed_but_flagged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTBEAT_TIMEOUT", "5")
    s = parse_settings()
    assert s.heartbeat_timeout == 5
    assert any("HEARTBEAT_TIMEOUT" in w for w in s.warnings())


def test_an_empty_agent_url_means_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODE_SERVER_URL", "")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "")
    s = parse_settings()
    assert s.code_server_url == "http://127.0.0.1:8080"
    assert s.aws_ec2_metadata_service_endpoint == "http://169.254.169.254"


def test_a_health_port_in_use_stops_the_process_with_one_line() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "reaper"], cwd=ROOT,
                              env={"PATH": "/usr/bin:/bin", "HEALTH_PORT": str(port)},
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"workerpool reaper: bad configuration: HEALTH_PORT={port}")
    assert "Traceback" not in proc.stderr


def test_a_password_in_amqp_url_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://svc:hunter2@host:notaport/")
    with pytest.raises(ConfigError) as err:
        parse_settings()
    assert "hunter2" not in str(err.value)
    assert redact_url("amqp://svc:hunter2@h:5672/v") == "amqp://svc:***@h:5672/v"


@pytest.mark.parametrize(("variable", "value"), [("TARGET_AVAILABLE", "-1"),
                                                 ("AMQP_URL", "nonsense"),
                                                 ("HEARTBEAT_INTERVAL", "0")])
def test_a_process_with_a_bad_variable_exits_2_with_one_line_and_no_traceback(
        variable: str, value: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "shared.cli", "bootstrap"], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", variable: value},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert variable in lines[0] and "Traceback" not in proc.stderr


def test_a_busy_default_health_port_falls_back_to_a_free_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from shared.config import DEFAULT_HEALTH_PORTS
    from shared.runtime import Runtime

    monkeypatch.delenv("HEALTH_PORT", raising=False)
    default = DEFAULT_HEALTH_PORTS["reaper"]
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            busy.bind(("0.0.0.0", default))
            busy.listen(1)
        except OSError:
            pass  # already taken by something else: just as good for this test
        rt = Runtime("reaper", settings=parse_settings())
        try:
            assert rt.health.port not in (0, default)
        finally:
            rt.health._httpd.server_close()
