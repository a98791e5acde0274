"""A local stand-in for AWS's instance-identity signing: an RSA key and its self-signed
certificate. The simulated IMDS (sim/fakes.py) serves each VM an identity document signed
with the key, and ``workerpool dev`` hands the certificate to the dispatchers as
IDENTITY_CERT, so attestation (PROTOCOL §4 v2) is on in the local pool as on AWS."""

from __future__ import annotations

import base64
import datetime
import json
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

KEY_FILE = "imds-identity.key"
CERT_FILE = "imds-identity.pem"


class IdentityAuthority:
    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key

    @classmethod
    def in_dir(cls, directory: str | Path) -> IdentityAuthority:
        """The authority kept in ``directory`` (made there on first use, key 0600)."""
        d = Path(directory)
        key_path, cert_path = d / KEY_FILE, d / CERT_FILE
        if key_path.exists() and cert_path.exists():
            return cls.from_key_file(key_path)
        d.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        cert_path.write_bytes(_certificate(key).public_bytes(serialization.Encoding.PEM))
        return cls(key)

    @classmethod
    def from_key_file(cls, path: str | Path) -> IdentityAuthority:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return cls(key)

    def sign(self, document: str) -> str:
        """IMDS's ``/signature``: base64 RSA PKCS#1 v1.5 SHA-256 of the document's bytes."""
        raw = self._key.sign(document.encode(), padding.PKCS1v15(), hashes.SHA256())
        return base64.encodebytes(raw).decode().strip()  # IMDS wraps it in lines too


def document(*, instance_id: str, private_ip: str | None, instance_type: str,
             availability_zone: str, account_id: str = "000000000000") -> str:
    """An identity document shaped like IMDS's (its spacing included)."""
    facts = {"accountId": account_id, "architecture": "x86_64",
             "availabilityZone": availability_zone, "imageId": "ami-00000000",
             "instanceId": instance_id, "instanceType": instance_type,
             "pendingTime": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "privateIp": private_ip, "region": availability_zone[:-1], "version": "2017-09-30"}
    return json.dumps(facts, indent=2, separators=(",", " : "))


def _certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "workerpool sim IMDS")])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256()))
