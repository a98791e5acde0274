"""The agent's own key and code-server's certificate: made once, kept with tight modes, and
what the peers see is what the agent registers."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from agent.health import probe_code_server
from agent.keys import AgentKey
from agent.tls import CERT_FILE, KEY_FILE, ensure_certificate, pinned_context
from dispatcher.attestation import verify_signature
from shared.errors import ConfigError
from shared.fingerprint import presented, same
from sim.fakes import FakeCodeServer


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_agent_key_is_made_once_0600_and_signs_what_the_dispatcher_verifies(
        tmp_path: Path) -> None:
    path = tmp_path / "state" / "agent.key"
    key = AgentKey.load_or_create(str(path))
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert len(base64.b64decode(key.public)) == 32
    again = AgentKey.load_or_create(str(path))
    assert again.public == key.public  # kept across restarts: the instance's key is fixed
    body = b'{"type": "heartbeat"}'
    verify_signature(key.public, body, key.sign(body))


def test_a_key_file_readable_by_others_is_narrowed_and_a_bad_one_names_the_variable(
        tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    AgentKey.load_or_create(str(path))
    path.chmod(0o644)
    AgentKey.load_or_create(str(path))
    assert mode(path) == 0o600
    path.write_text("garbage")
    with pytest.raises(ConfigError, match="AGENT_KEY_FILE"):
        AgentKey.load_or_create(str(path))


def test_code_servers_certificate_is_what_it_serves_and_the_probe_pins_it(tmp_path: Path
                                                                          ) -> None:
    tls = tmp_path / "tls"
    fp = ensure_certificate(tls, ["10.0.1.5", None, "203.0.113.7"])
    assert mode(tls / KEY_FILE) == 0o640 and mode(tls / CERT_FILE) == 0o644
    assert ensure_certificate(tls, ["10.9.9.9"]) == fp  # made once
    with FakeCodeServer(tls_dir=tls) as cs:
        assert cs.url.startswith("https://")
        assert same(presented(cs.url), fp)
        assert probe_code_server(cs.url, 2, tls=pinned_context(tls))[0]
        assert not probe_code_server(cs.url, 2)[0]  # unpinned: the certificate is refused
    other = tmp_path / "other"
    ensure_certificate(other, [])
    with FakeCodeServer(tls_dir=other) as impostor:
        assert not probe_code_server(impostor.url, 2, tls=pinned_context(tls))[0]
