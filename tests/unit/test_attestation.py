"""Attestation and agent signatures (PROTOCOL §4 v2), the pure parts: a document signed by
a certificate in IDENTITY_CERT, the Ed25519 signature of the exact body bytes."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from dispatcher.attestation import (
    Refused,
    check_register,
    check_signed,
    load_certificates,
    verify_identity,
)
from shared.errors import ConfigError
from shared.messages import Register

ROOT = Path(__file__).resolve().parents[2]

# A real us-east-1 identity document and its /signature, as published in coder/coder's
# tests (coderd/awsidentity/awsidentity_test.go): public test data.
AWS_SIGNATURE = ("M7rX9w1s5zK1V7hK0dsE4hTDXHHaaDuKQ9iIz/W8ZNaA2lJ/usz5YuX+ORt3luJwswl/+B7cYOkJ\n"
                 "bXRMx/pEQ6vT+niLGZDC9ZZ1h9Ox4h4e4m4IisQSCUrVIzyLj+MB27/Wyy0NhXcpoZVjNEmioxF2\n"
                 "HNpOR4aCwUxxOm81y98=")
AWS_DOCUMENT = """{
  "accountId" : "628783029487",
  "architecture" : "x86_64",
  "availabilityZone" : "us-east-1b",
  "billingProducts" : null,
  "devpayProductCodes" : null,
  "marketplaceProductCodes" : null,
  "imageId" : "ami-0c02fb55956c7d316",
  "instanceId" : "i-076e9b91f7c420782",
  "instanceType" : "t2.micro",
  "kernelId" : null,
  "pendingTime" : "2022-03-25T20:07:16Z",
  "privateIp" : "172.31.84.238",
  "ramdiskId" : null,
  "region" : "us-east-1",
  "version" : "2017-09-30"
}"""


def authority() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test IMDS")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return key, cert


SIGNER, CERT = authority()
OTHER_SIGNER, OTHER_CERT = authority()
AGENT = ed25519.Ed25519PrivateKey.generate()
AGENT_KEY = base64.b64encode(AGENT.public_key().public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def document(instance_id: str = "i-0abc", private_ip: str = "10.0.1.5") -> str:
    return json.dumps({"instanceId": instance_id, "privateIp": private_ip,
                       "region": "us-east-1"}, indent=2)


def rsa_sign(key: rsa.RSAPrivateKey, text: str) -> str:
    return base64.b64encode(key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())
                            ).decode()


def register(**fields: object) -> tuple[Register, bytes, str]:
    """A register, its exact body and the agent's signature of that body."""
    doc = document()
    body = json.dumps({"type": "register", "instance_id": "i-0abc", "private_ip": "10.0.1.5",
                       "identity_document": doc, "identity_signature": rsa_sign(SIGNER, doc),
                       "agent_key": AGENT_KEY, **fields}).encode()
    return Register.model_validate_json(body), body, base64.b64encode(AGENT.sign(body)).decode()


def test_awss_own_document_verifies_with_the_certificates_we_ship() -> None:
    certs = load_certificates(str(ROOT / "deploy/aws/identity-certs.pem"))
    msg = Register(type="register", instance_id="i-076e9b91f7c420782",
                   private_ip="172.31.84.238", identity_document=AWS_DOCUMENT,
                   identity_signature=AWS_SIGNATURE)
    verify_identity(msg, certs)
    # one byte more (a trailing newline) and it no longer does: the exact bytes count
    with pytest.raises(Refused, match="identity_signature"):
        verify_identity(msg.model_copy(update={"identity_document": AWS_DOCUMENT + "\n"}),
                        certs)


def test_an_attested_register_gives_the_key_it_carries() -> None:
    msg, body, sig = register()
    assert check_register(msg, body, sig, [OTHER_CERT, CERT]) == AGENT_KEY


@pytest.mark.parametrize(("change", "reason"), [
    ({"identity_document": document("i-0other")}, "identity_signature"),  # not what was signed
    ({"identity_signature": rsa_sign(OTHER_SIGNER, document())}, "identity_signature"),
    ({"identity_document": None}, "identity_document: required"),
    ({"agent_key": None}, "agent_key: required"),
])
def test_an_unproven_register_is_refused(change: dict[str, object], reason: str) -> None:
    msg, body, sig = register(**change)
    with pytest.raises(Refused, match=reason):
        check_register(msg, body, sig, [CERT])


def test_a_genuine_document_for_another_instance_or_address_is_refused() -> None:
    doc = document("i-0victim", "10.0.9.9")  # replayed from another VM, signed by IMDS
    for fields in ({}, {"instance_id": "i-0victim"}):
        msg, body, sig = register(identity_document=doc,
                                  identity_signature=rsa_sign(SIGNER, doc), **fields)
        with pytest.raises(Refused, match="differs"):
            check_register(msg, body, sig, [CERT])


def test_a_register_must_be_signed_by_the_key_it_carries() -> None:
    msg, body, _ = register()
    stranger = ed25519.Ed25519PrivateKey.generate()
    for signature in (None, "", base64.b64encode(stranger.sign(body)).decode(),
                      base64.b64encode(AGENT.sign(body + b" ")).decode()):
        with pytest.raises(Refused, match="x-workerpool-signature"):
            check_register(msg, body, signature, [CERT])


def test_without_identity_cert_a_v1_register_has_no_key_and_a_v2_one_is_still_signed() -> None:
    v1 = Register(type="register", instance_id="i-0abc", private_ip="10.0.1.5")
    assert check_register(v1, b"{}", None, None) is None
    msg, body, sig = register(identity_document=None, identity_signature=None)
    assert check_register(msg, body, sig, None) == AGENT_KEY
    with pytest.raises(Refused):
        check_register(msg, body, None, None)


def test_later_messages_verify_against_the_recorded_key_only() -> None:
    body = b'{"type": "heartbeat", "instance_id": "i-0abc", "healthy": false}'
    check_signed(AGENT_KEY, body, base64.b64encode(AGENT.sign(body)).decode(), attested=True)
    forged = ed25519.Ed25519PrivateKey.generate()
    for signature in (None, base64.b64encode(forged.sign(body)).decode()):
        with pytest.raises(Refused):
            check_signed(AGENT_KEY, body, signature, attested=False)
    check_signed(None, body, None, attested=False)  # a v1 agent's instance
    with pytest.raises(Refused, match="no attested agent key"):
        check_signed(None, body, None, attested=True)


def test_identity_cert_must_hold_rsa_certificates(tmp_path: Path) -> None:
    path = tmp_path / "bad.pem"
    path.write_text("not a certificate")
    with pytest.raises(ConfigError, match="IDENTITY_CERT"):
        load_certificates(str(path))
