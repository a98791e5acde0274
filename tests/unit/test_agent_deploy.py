"""The agent's deployment files say what docs/agent.md promises."""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import yaml

from agent import tls

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "agent"
UNIT = DEPLOY / "workerpool-agent.service"
CLOUD_INIT = DEPLOY / "cloud-init.yaml"
BOOT_SCRIPT = "/usr/local/sbin/workerpool-broker-secrets"
#: the user code-server runs as (code-server@<user>.service), whose group reads its config
CODE_SERVER_USER = "ubuntu"


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


def cloud_init() -> dict[str, Any]:
    return yaml.safe_load(CLOUD_INIT.read_text())


def files() -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in cloud_init()["write_files"]}


def agent_env() -> dict[str, str]:
    return dict(line.split("=", 1) for line in files()["/etc/workerpool/agent.env"][
        "content"].splitlines() if line and not line.startswith("#"))


def commands() -> list[str]:
    return [" ".join(c) if isinstance(c, list) else c for c in cloud_init()["runcmd"]]


def ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_cloud_init_writes_the_environment_installs_and_enables_the_same_unit() -> None:
    assert CLOUD_INIT.read_text().startswith("#cloud-config\n")
    env = files()["/etc/workerpool/agent.env"]
    assert env["permissions"] == "0640"  # the boot adds the broker password to it
    assert {"HEARTBEAT_INTERVAL", "HEALTH_PORT", "CODE_SERVER_URL"} <= set(agent_env())
    assert files()["/etc/systemd/system/workerpool-agent.service"]["content"] == UNIT.read_text()
    assert any("bin/pip install" in c for c in commands())
    assert "systemctl enable --now workerpool-agent.service" in commands()
    assert any(u.get("name") == "workerpool-agent" and u.get("system")
               for u in cloud_init()["users"] if isinstance(u, dict))


def test_the_broker_password_comes_from_secrets_manager_before_the_agent_starts() -> None:
    assert "AMQP_URL" not in agent_env()  # nothing secret in user-data
    script = files()[BOOT_SCRIPT]
    assert script["permissions"] == "0755" and script["content"].startswith(
        "#!/opt/workerpool/venv/bin/python\n")
    step = (f"{BOOT_SCRIPT} url /etc/workerpool/agent.env ${{BrokerUrl}} ${{AgentSecretArn}}")
    run = commands()
    assert step in run
    assert run.index(step) > next(i for i, c in enumerate(run) if "bin/pip install" in c)
    assert run.index(step) < run.index("systemctl enable --now workerpool-agent.service")


def test_the_agent_obeys_only_the_services_and_keeps_its_key_in_its_state_directory() -> None:
    env, service = agent_env(), unit()["Service"]
    # an agent applies a command only from a service user; its default would be its own
    # broker user, whose password every lessee can read
    assert env["SERVICE_USERS"] == "workerpool-service"
    state = Path("/var/lib") / service["StateDirectory"]
    assert Path(env["AGENT_KEY_FILE"]).parent == state  # systemd makes it, the agent's own
    assert service["StateDirectoryMode"] == "0700"


def _tls_dir_creation() -> list[str]:
    return next(c.split() for c in commands() if c.startswith("install -d")
                and agent_env()["CODE_SERVER_TLS_DIR"] in c.split())


def test_code_server_serves_https_with_the_certificate_the_agent_makes() -> None:
    env = agent_env()
    tls_dir = env["CODE_SERVER_TLS_DIR"]
    assert env["CODE_SERVER_URL"] == "https://127.0.0.1:8080"  # the agent pins its own cert
    # setgid, the agent's, code-server's group: the agent's files are readable by code-server
    install = _tls_dir_creation()
    assert install[install.index("-o") + 1] == unit()["Service"]["User"]
    assert install[install.index("-g") + 1] == CODE_SERVER_USER
    assert install[install.index("-m") + 1] == "2750"
    # ... and the agent may write there (its only writable place besides its state)
    assert any(tls_dir == p or tls_dir.startswith(p + "/")
               for p in unit()["Service"]["ReadWritePaths"].split())
    config = next(c for c in commands() if "config.yaml" in c and "printf" in c)
    assert f"cert: {tls_dir}/{tls.CERT_FILE}" in config
    assert f"cert-key: {tls_dir}/{tls.KEY_FILE}" in config
    assert "cert: false" not in CLOUD_INIT.read_text()


def test_code_server_starts_only_once_the_agent_has_made_the_certificate() -> None:
    cert = f"{agent_env()['CODE_SERVER_TLS_DIR']}/{tls.CERT_FILE}"
    drop_in = ini(files()["/etc/systemd/system/code-server@.service.d/workerpool.conf"][
        "content"])
    assert drop_in["Unit"]["ConditionPathExists"] == cert  # never without it...
    path = ini(files()["/etc/systemd/system/code-server-tls.path"]["content"])
    assert path["Path"]["PathExists"] == cert  # ...and started as soon as it is there
    assert path["Path"]["Unit"] == f"code-server@{CODE_SERVER_USER}.service"
    assert path["Install"]["WantedBy"] == "multi-user.target"
    run = commands()
    enable = next(i for i, c in enumerate(run) if c.startswith("systemctl enable --now")
                  and "code-server-tls.path" in c)
    # one started with the image's config before the drop-in existed is stopped first
    assert run.index(f"systemctl stop code-server@{CODE_SERVER_USER}.service") < enable
    assert enable < run.index("systemctl enable --now workerpool-agent.service")


def test_at_shutdown_the_agent_can_still_ask_systemd_and_reach_the_broker() -> None:
    """SIGTERM deregisters only if `systemctl is-system-running` says "stopping" (docs/agent.md
    "Stop or shutdown"): at shutdown the agent must be stopped while D-Bus (how an unprivileged
    systemctl asks) and the network are still up, i.e. ordered after both."""
    u = unit()
    assert {"network-online.target", "dbus.service"} <= set(u["Unit"]["After"].split())
    # default dependencies: Conflicts=shutdown.target, so a shutdown is what stops it
    assert u["Unit"].get("DefaultDependencies", "yes") == "yes"
    service = u["Service"]
    assert "AF_UNIX" in service["RestrictAddressFamilies"].split()  # the D-Bus socket
    assert "ExecStop" not in service  # the agent decides itself, on SIGTERM
    assert service["KillSignal"] == "SIGTERM"
    assert agent_env()["AGENT_DEREGISTER_ON_STOP"] == "auto"


def test_lease_notices_reach_the_users_home_and_terminals_through_a_root_path_unit() -> None:
    """The agent runs unprivileged with ProtectHome=yes and NoNewPrivileges=yes: it can write
    neither the user's home nor (wall without its setgid bit) their terminals. So it writes
    the notice in its own StateDirectory, and a path unit has root copy it into the user's
    home and wall its first line (docs/agent.md "User activity and lease notices")."""
    env, service = agent_env(), unit()["Service"]
    notice = env["AGENT_NOTICE_FILE"]
    assert service["ProtectHome"] == "yes" and service["NoNewPrivileges"] == "yes"
    assert notice.startswith(f"/var/lib/{service['StateDirectory']}/")  # writable by it
    assert env["AGENT_WALL_COMMAND"] == ""  # the agent's own wall could reach nobody
    path = ini(files()["/etc/systemd/system/workerpool-notice.path"]["content"])["Path"]
    assert path["PathChanged"] == notice
    shown = files()[f"/etc/systemd/system/{path['Unit']}"]["content"]
    assert "User=" not in shown and "Type=oneshot" in shown  # root, once per notice
    starts = [line.split("=", 1)[1] for line in shown.splitlines()
              if line.startswith("ExecStart=")]
    home_file = f"/home/{CODE_SERVER_USER}/WORKERPOOL-NOTICE.txt"
    assert any(s.startswith("/usr/bin/install ") and f"-o {CODE_SERVER_USER}" in s
               and s.endswith(f"{notice} {home_file}") for s in starts), starts
    assert any(notice in s and s.rstrip("'").endswith("| wall") for s in starts), starts
    assert any(c.startswith("systemctl enable --now") and "workerpool-notice.path" in c
               for c in commands())
