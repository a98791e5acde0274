"""code-server's TLS certificate on a worker VM (issue 13): made by the agent at first start,
self-signed, kept in CODE_SERVER_TLS_DIR for code-server to serve (``cert``/``cert-key`` in
its config); its SHA-256 fingerprint goes with the registration, so the claim reply can tell
the user which certificate is the real one (``workerpool open`` checks it before opening).
The password and the session cookie then never cross the network in clear."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.fingerprint import fingerprint

log = logging.getLogger(__name__)

CERT_FILE = "code-server.crt"
KEY_FILE = "code-server.key"
VALID_DAYS = 3650  # a VM lives hours to weeks; it is recycled, never renewed


def ensure_certificate(directory: str | Path, addresses: Iterable[str | None]) -> str:
    """The certificate in ``directory`` (made there if absent: key 0640, certificate 0644,
    both with the directory's group, for code-server to read); its fingerprint."""
    d = Path(directory)
    cert_path, key_path = d / CERT_FILE, d / KEY_FILE
    if not cert_path.exists():
        _make(d, cert_path, key_path, [a for a in addresses if a])
    pem = cert_path.read_bytes()
    return fingerprint(x509.load_pem_x509_certificate(pem).public_bytes(
        serialization.Encoding.DER))


def _make(d: Path, cert_path: Path, key_path: Path, addresses: list[str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, addresses[0] if addresses
                                         else "localhost")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    _write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o640)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("code-server certificate made", extra={
        "event": "tls_certificate_made", "path": str(cert_path),
        "fingerprint": fingerprint(cert.public_bytes(serialization.Encoding.DER))})


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)  # the umask may have narrowed it
    os.replace(tmp, path)


def pinned_context(directory: str | Path) -> ssl.SSLContext:
    """A client context that trusts exactly this certificate (the agent's probe of its own
    code-server over https://127.0.0.1)."""
    ctx = ssl.create_default_context(cafile=str(Path(directory) / CERT_FILE))
    ctx.check_hostname = False  # pinned: the certificate itself is the trust anchor
    return ctx
