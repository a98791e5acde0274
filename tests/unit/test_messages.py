"""Messages: strict models and one decode function that gives a precise reason."""

from __future__ import annotations

import json

import pytest

from shared.errors import InvalidMessage
from shared.messages import (
    AgentMessage,
    ClaimReply,
    ClaimRequest,
    Heartbeat,
    LeaseReply,
    LeaseRequest,
    Register,
    RenewRequest,
    WorkerInfo,
    decode,
)


def test_a_valid_claim_decodes_with_optional_fields_absent() -> None:
    claim = decode(ClaimRequest, b'{"request_id": "r-42", "user_id": "alice"}')
    assert (claim.request_id, claim.user_id, claim.lease_seconds, claim.wait_seconds) == (
        "r-42", "alice", None, None)


@pytest.mark.parametrize(
    ("body", "reason", "request_id"),
    [
        (b"not json", "body is not valid JSON", None),
        (b"\xff\xfe", "body is not UTF-8", None),
        (b"[1, 2]", "body: must be a JSON object", None),
        (b'{"user_id": "alice"}', "request_id: field required", None),
        (b'{"request_id": "r 1", "user_id": "alice"}', "request_id: String should match", None),
        (b'{"request_id": "r1", "user_id": "al ice"}', "user_id: String should match", "r1"),
        (b'{"request_id": "r1", "user_id": "a", "lease_seconds": 9}', "lease_seconds: Input should be greater than or equal to 10", "r1"),
        (b'{"request_id": "r1", "user_id": "a", "lease_seconds": 86401}', "lease_seconds: Input should be less than or equal to 86400", "r1"),
        (b'{"request_id": "r1", "user_id": "a", "wait_seconds": 901}', "wait_seconds:", "r1"),
        (b'{"request_id": "r1", "user_id": "a", "wait_seconds": "30"}', "wait_seconds: Input should be a valid integer", "r1"),
        (json.dumps({"request_id": "r" * 129, "user_id": "a"}).encode(), "request_id:", None),
    ],
)
def test_an_invalid_claim_names_its_field(body: bytes, reason: str, request_id: str | None
                                          ) -> None:
    with pytest.raises(InvalidMessage) as err:
        decode(ClaimRequest, body)
    assert reason in err.value.reason
    assert err.value.request_id == request_id


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"type": "steal", "request_id": "r1"}', "type: must be one of release, renew"),
        (b'{"request_id": "r1"}', "type: field required"),
        (b'{"type": "release", "request_id": "r1", "user_id": "a"}', "instance_id: field required"),
        (b'{"type": "renew", "request_id": "r1", "user_id": "a", "instance_id": "vm-1"}', "instance_id: String should match"),
    ],
)
def test_an_invalid_lease_request_names_its_field(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as err:
        decode(LeaseRequest, body)
    assert reason in err.value.reason


def test_lease_requests_are_told_apart_by_type() -> None:
    renew = decode(LeaseRequest, b'{"type": "renew", "request_id": "r1", "user_id": "a", '
                                 b'"instance_id": "i-0abc", "lease_seconds": 600}')
    assert isinstance(renew, RenewRequest) and renew.lease_seconds == 600


def test_agent_messages_of_the_protocol_decode() -> None:
    reg = decode(AgentMessage, json.dumps({
        "type": "register", "instance_id": "i-0abc", "private_ip": "10.0.1.5",
        "public_ip": None, "instance_type": "t3.medium", "availability_zone": "us-east-1a",
        "agent_version": "1.0.0", "sent_at": "2026-11-28T10:00:00Z"}).encode())
    assert isinstance(reg, Register) and reg.public_ip is None
    hb = decode(AgentMessage, b'{"type": "heartbeat", "instance_id": "i-0abc", '
                              b'"healthy": false, "sent_at": "2026-11-28T10:00:00Z"}')
    assert isinstance(hb, Heartbeat) and hb.healthy is False


def test_a_heartbeat_with_a_non_boolean_health_is_refused() -> None:
    with pytest.raises(InvalidMessage) as err:
        decode(AgentMessage, b'{"type": "heartbeat", "instance_id": "i-0abc", "healthy": 1, '
                             b'"sent_at": "2026-11-28T10:00:00Z"}')
    assert "healthy" in err.value.reason


def test_replies_carry_every_field_with_null_not_omitted() -> None:
    reply = json.loads(ClaimReply(request_id=None, status="rejected", reason="x").to_json())
    assert reply == {"request_id": None, "status": "rejected", "reason": "x", "worker": None,
                     "lease_expiry": None}
    assigned = json.loads(ClaimReply(
        request_id="r-42", status="assigned",
        worker=WorkerInfo(instance_id="i-0abc", public_ip="203.0.113.3", private_ip="10.0.1.5",
                          url="http://203.0.113.3:8080"),
        lease_expiry="2026-11-28T10:00:00Z").to_json())
    assert assigned["worker"]["password"] is None
    assert set(json.loads(LeaseReply(request_id="r", status="not_found").to_json())) == {
        "request_id", "status", "reason", "instance_id", "lease_expiry"}


def test_fields_this_version_does_not_know_are_ignored_and_named() -> None:
    """A newer client or agent works with an older dispatcher (rolling upgrades)."""
    from shared.messages import unknown_fields

    claim = decode(ClaimRequest, b'{"request_id": "r1", "user_id": "a", "colour": "red", '
                                 b'"priority": 3}')
    assert (claim.request_id, claim.user_id) == ("r1", "a")
    assert unknown_fields(claim) == ("colour", "priority")
    beat = decode(AgentMessage, b'{"type": "heartbeat", "instance_id": "i-1", '
                                b'"healthy": true, "gpu": "busy"}')
    assert isinstance(beat, Heartbeat) and unknown_fields(beat) == ("gpu",)
    # still strict in what is acted on: a known field of the wrong type is refused
    with pytest.raises(InvalidMessage, match="healthy"):
        decode(AgentMessage, b'{"type": "heartbeat", "instance_id": "i-1", "healthy": "yes", '
                             b'"gpu": "busy"}')


@pytest.mark.parametrize(("ip", "ok"), [
    ("10.0.1.5", True), ("2001:db8::1", True), ("203.0.113.7", True),
    ("evil.example.com", False), ("10.0.1.5:8080", False), ("10.0.1", False), ("", False),
])
def test_addresses_in_a_register_must_be_ip_addresses(ip: str, ok: bool) -> None:
    body = json.dumps({"type": "register", "instance_id": "i-1", "private_ip": ip}).encode()
    if ok:
        assert decode(AgentMessage, body).private_ip == ip  # type: ignore[union-attr]
    else:
        with pytest.raises(InvalidMessage, match="private_ip"):
            decode(AgentMessage, body)
