"""The agent's own Ed25519 key (PROTOCOL §4 v2): made once, kept in AGENT_KEY_FILE (0600),
and used to sign every message the agent sends. Its public half goes with the (attested)
registration; the dispatcher then believes the instance's messages only when this key
signed them, so broker credentials alone (shared by every VM) cannot speak for a worker."""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.errors import ConfigError

log = logging.getLogger(__name__)


class AgentKey:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
        #: base64 of the raw 32-byte public key, as ``agent_key`` in a register
        self.public = base64.b64encode(raw).decode()

    def sign(self, body: bytes) -> str:
        """The ``x-workerpool-signature`` of a message body: base64 Ed25519."""
        return base64.b64encode(self._private.sign(body)).decode()

    @classmethod
    def load_or_create(cls, path: str) -> AgentKey:
        """The key in ``path``, made there (0600, directory 0700) on first start.
        ConfigError naming AGENT_KEY_FILE when it cannot be read or made."""
        file = Path(path)
        try:
            return cls(_load(file)) if file.exists() else cls(_create(file))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"AGENT_KEY_FILE={path!r}: {exc}") from None


def _load(file: Path) -> Ed25519PrivateKey:
    mode = file.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(file, 0o600)  # a key others can read is a key others can use
        log.warning("agent key was readable by others; now 0600",
                    extra={"path": str(file), "mode": oct(mode)})
    key = serialization.load_pem_private_key(file.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def _create(file: Path) -> Ed25519PrivateKey:
    file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # O_EXCL: two agents starting at once never both write (the loser reads the winner's)
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _load(file)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    log.info("agent key made", extra={"event": "agent_key_made", "path": str(file)})
    return key
