"""Who an agent is (PROTOCOL §4, v2): attested registrations and signed agent messages.

* **Attestation.** With IDENTITY_CERT, a register must carry the instance identity document
  that IMDS served, its signature (RSA PKCS#1 v1.5, SHA-256, over the document's exact
  bytes) and the agent's Ed25519 public key. The signature must verify against a certificate
  in IDENTITY_CERT (a PEM bundle: AWS's "RSA" certificate of each region we run in), and the
  document's ``instanceId`` and ``privateIp`` must equal the message's. So only code running
  on that instance, with its IMDS, can register it; a document replayed by another host
  still cannot sign for a key it does not hold (the next point).
* **Signatures.** Every agent message carries ``x-workerpool-signature``: the Ed25519
  signature of the exact body bytes. A register must be signed by the key it carries; the
  first accepted register fixes the instance's key (the table refuses another,
  shared.store.workers); every later message of the instance must verify against it.

Everything here is a pure function of the message, the header and the certificates; which
key an instance has is read by the caller (``AgentKeys``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.broker import Delivery
from shared.errors import ConfigError
from shared.messages import Register
from shared.topology import SIGNATURE_HEADER

log = logging.getLogger(__name__)


class Refused(Exception):
    """A message whose sender is not proven; ``reason`` says why (it goes to the
    dead-letter header and the log, never anything secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_certificates(path: str) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM file (IDENTITY_CERT); ConfigError naming the variable."""
    try:
        with open(path, "rb") as fh:
            certs = x509.load_pem_x509_certificates(fh.read())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"IDENTITY_CERT={path!r}: not a readable PEM certificate ({exc})"
                          ) from None
    if not all(isinstance(c.public_key(), rsa.RSAPublicKey) for c in certs):
        raise ConfigError(f"IDENTITY_CERT={path!r}: identity documents are signed with RSA "
                          "keys; the file holds another kind")
    return tuple(certs)


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        raise Refused(f"{what}: not base64") from None


def agent_key_of(value: str) -> Ed25519PublicKey:
    """An agent's public key: base64 of the raw 32-byte Ed25519 key."""
    raw = _b64(value, "agent_key")
    if len(raw) != 32:
        raise Refused("agent_key: must be a raw 32-byte Ed25519 public key, base64")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_signature(agent_key: str, body: bytes, signature: object) -> None:
    """The body was signed by this agent key (the header's value); else Refused."""
    if not isinstance(signature, (str, bytes)) or not signature:
        raise Refused("x-workerpool-signature: missing (this instance's messages are signed)")
    text = signature.decode("ascii", "replace") if isinstance(signature, bytes) else signature
    try:
        agent_key_of(agent_key).verify(_b64(text, "x-workerpool-signature"), body)
    except InvalidSignature:
        raise Refused("x-workerpool-signature: does not verify with this instance's agent "
                      "key") from None


def verify_identity(register: Register, certificates: Sequence[x509.Certificate]) -> None:
    """The register's identity document is signed by one of ``certificates`` and names the
    instance and private IP of the message; else Refused."""
    document, signature = register.identity_document, register.identity_signature
    if not document or not signature:
        raise Refused("identity_document: required (IDENTITY_CERT is set: registrations "
                      "must be attested)")
    raw = _b64(signature, "identity_signature")
    if not any(_signed_by(cert, raw, document.encode()) for cert in certificates):
        raise Refused("identity_signature: does not verify with IDENTITY_CERT")
    try:
        facts = json.loads(document)
    except ValueError:
        raise Refused("identity_document: not JSON") from None
    if not isinstance(facts, dict) or facts.get("instanceId") != register.instance_id:
        raise Refused("identity_document: instanceId differs from instance_id")
    if facts.get("privateIp") != register.private_ip:
        raise Refused("identity_document: privateIp differs from private_ip")


def _signed_by(cert: x509.Certificate, signature: bytes, data: bytes) -> bool:
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    try:
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        return True
    except InvalidSignature:
        return False


def check_register(register: Register, body: bytes, signature: object,
                   certificates: Sequence[x509.Certificate] | None) -> str | None:
    """The key this register may fix (None: a v1 agent, allowed without IDENTITY_CERT);
    Refused when it is not proven. The table then refuses a key other than the one an
    earlier register of the instance fixed."""
    if register.agent_key is None:
        if certificates:
            raise Refused("agent_key: required (IDENTITY_CERT is set)")
        return None
    verify_signature(register.agent_key, body, signature)
    if certificates:
        verify_identity(register, certificates)
    return register.agent_key


def check_signed(recorded_key: str | None, body: bytes, signature: object, *,
                 attested: bool) -> None:
    """Any other agent message of an instance: signed by its recorded key. An instance
    with no recorded key (None: not registered; "": registered by a v1 agent) is accepted
    unsigned unless registrations are attested (IDENTITY_CERT), where nothing unproven
    acts."""
    if not recorded_key:
        if attested:
            raise Refused("instance has no attested agent key (it must register first)")
        return
    verify_signature(recorded_key, body, signature)


class AgentKeys:
    """Instance id → its recorded agent key, cached once the instance has registered: a
    key (or its absence, ``""``) never changes once fixed, and instance ids are never
    reused. An instance not registered yet (None) is read again each time. Thread-safe,
    bounded."""

    def __init__(self, read: Callable[[str], str | None], size: int = 50_000) -> None:
        self._read = read
        self._known: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, instance_id: str) -> str | None:
        with self._lock:
            if instance_id in self._known:
                self._known.move_to_end(instance_id)
                return self._known[instance_id]
        key = self._read(instance_id)  # a consistent read
        if key is not None:
            self.remember(instance_id, key)
        return key

    def remember(self, instance_id: str, key: str) -> None:
        with self._lock:
            self._known[instance_id] = key
            self._known.move_to_end(instance_id)
            while len(self._known) > self._size:
                self._known.popitem(last=False)


class AgentCheck:
    """What the dispatcher applies to agent messages: attested registrations (with
    IDENTITY_CERT) and signatures by the recorded key. A refused message is dead-lettered
    with its reason and counted (``on_refused(delivery, kind)``); it changes nothing."""

    def __init__(self, *, keys: AgentKeys, certificates: Sequence[x509.Certificate] | None,
                 on_refused: Callable[[Delivery, str], None] = lambda d, kind: None) -> None:
        self.keys = keys
        self.certificates = tuple(certificates) if certificates else None
        self.on_refused = on_refused

    @property
    def attested(self) -> bool:
        return self.certificates is not None

    def refuse(self, d: Delivery, kind: str, reason: str) -> None:
        log.warning("agent message refused: %s", reason,
                    extra={"queue": d.queue, "refused": kind})
        self.on_refused(d, kind)
        d.dead_letter(reason)

    def register_key(self, d: Delivery, register: Register) -> str | None:
        """The key a register may fix; Refused when it is not proven (not yet refused:
        the caller refuses it, with the register's own ids)."""
        return check_register(register, d.body, d.headers.get(SIGNATURE_HEADER),
                              self.certificates)

    def verified(self, d: Delivery, instance_id: str) -> bool:
        """Whether this message of the instance is signed as its recorded key requires; a
        refused one is dead-lettered."""
        try:
            check_signed(self.keys.get(instance_id), d.body, d.headers.get(SIGNATURE_HEADER),
                         attested=self.attested)
            return True
        except Refused as exc:
            self.refuse(d, "signature", f"{exc.reason} (instance {instance_id})")
            return False
