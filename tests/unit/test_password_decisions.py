"""Per-lease passwords, the pure parts: the config edit, the hash, the names, the replies and
the command's validation (no I/O)."""

from __future__ import annotations

import hashlib

import pytest

from agent.commands import updated_config
from dispatcher import replies
from dispatcher.passwords import code_server_hash, new_password
from shared.errors import InvalidMessage
from shared.messages import ClaimReply, SetPassword, WorkerInfo, decode, now_sent_at
from shared.queues import command_queue, confirm_queue
from shared.state import Worker

HASH = hashlib.sha256(b"correct horse").hexdigest()


@pytest.mark.parametrize("before, kept", [
    ("", []),
    ("bind-addr: 127.0.0.1:8080\nauth: password\npassword: 1234abcd\ncert: false\n",
     ["bind-addr: 127.0.0.1:8080", "cert: false"]),
    ("auth: none\n", []),
    ('hashed-password: "old"\n# a comment: kept\nuser-data-dir: /x\n',
     ["# a comment: kept", "user-data-dir: /x"]),
    ("'password': quoted-key\nnested:\n  password: inner\n",
     ["nested:", "  password: inner"]),  # only top-level keys are the agent's
])
def test_the_config_gets_password_auth_and_the_hash_and_keeps_every_other_line(
        before: str, kept: list[str]) -> None:
    after = updated_config(before, HASH)
    assert after.splitlines() == [*kept, "auth: password", f'hashed-password: "{HASH}"']
    assert updated_config(after, HASH) == after  # applying twice changes nothing


def test_the_hash_is_what_code_server_compares_in_its_sha256_form() -> None:
    assert code_server_hash("correct horse") == HASH  # hex SHA-256, no "$argon"


def test_passwords_are_random_and_carry_at_least_128_bits() -> None:
    made = {new_password() for _ in range(200)}
    assert len(made) == 200
    assert all(len(p) == 24 for p in made)  # 18 bytes, URL-safe base64: 144 bits


@pytest.mark.parametrize("name, queue", [
    ("dispatcher@host:42", "workerpool.confirm.dispatcher-host-42"),
    ("dispatcher@ip-10-0-1-5.ec2.internal:7",
     "workerpool.confirm.dispatcher-ip-10-0-1-5-ec2-internal-7"),
])
def test_a_confirm_queue_name_is_one_topic_word_after_the_prefix(name: str, queue: str) -> None:
    assert confirm_queue(name) == queue
    assert command_queue("i-0abc") == "workerpool.agent.i-0abc"


def _command(hashed: str, confirm_to: str = "workerpool.confirm.d-1") -> bytes:
    body = ('{"type": "set_password", "request_id": "abcdefghijklmnopq", '
            f'"hashed_password": {hashed!r}, "confirm_to": "{confirm_to}", '
            '"sent_at": "2026-11-28T10:00:00Z"}')
    return body.replace("'", '"').encode()


@pytest.mark.parametrize("hashed", [
    HASH,
    "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
])
def test_a_command_carries_a_sha256_or_argon2_hash(hashed: str) -> None:
    assert decode(SetPassword, _command(hashed)).hashed_password == hashed


@pytest.mark.parametrize("hashed", [
    "hunter2",                       # a plain password is not a hash
    HASH.upper(),                    # code-server compares lowercase hex
    HASH + "\\nauth: none",          # a line break would inject config
    HASH[:-1] + " ",
])
def test_a_command_whose_hash_could_break_the_config_is_refused(hashed: str) -> None:
    with pytest.raises(InvalidMessage) as err:
        decode(SetPassword, _command(hashed))
    assert "hashed_password" in err.value.reason
    assert hashed not in err.value.reason


def test_a_command_must_confirm_to_a_confirm_queue() -> None:
    with pytest.raises(InvalidMessage, match="confirm_to"):
        decode(SetPassword, _command(HASH, confirm_to="workerpool.claims"))


def test_a_commands_repr_never_shows_the_hash() -> None:
    cmd = SetPassword(type="set_password", command_id="a" * 16, hashed_password=HASH,
                      confirm_to="workerpool.confirm.x", sent_at=now_sent_at())
    assert HASH not in repr(cmd) and HASH not in str(cmd)


def _assigned() -> ClaimReply:
    w = Worker(instance_id="i-1", status="leased", last_heartbeat=0.0, lease_expiry=100.0,
               public_ip="203.0.113.3")
    return replies.assigned_reply("r-1", w, 8080)


def test_the_first_reply_carries_the_password_and_a_repeat_says_why_it_does_not() -> None:
    first = replies.with_password(_assigned(), "s3cret")
    assert first.worker is not None and first.worker.password == "s3cret"
    assert first.reason is None
    assert replies.password_note(first) == first
    repeat = replies.password_note(_assigned())
    assert repeat.worker is not None and repeat.worker.password is None
    assert repeat.reason == replies.PASSWORD_SENT_ONCE


@pytest.mark.parametrize("reply", [
    ClaimReply(request_id="r-1", status="unavailable", reason="no worker"),
    ClaimReply(request_id="r-1", status="rejected", reason="request_id: bad"),
])
def test_only_assigned_replies_get_the_password_note(reply: ClaimReply) -> None:
    assert replies.password_note(reply) == reply


def test_worker_info_without_a_password_still_says_null() -> None:
    info = WorkerInfo(instance_id="i-1", public_ip=None, private_ip="10.0.0.1",
                      url="http://10.0.0.1:8080")
    assert b'"password":null' in info.to_json()


def test_a_command_is_sent_with_command_id_and_an_older_dispatchers_request_id_is_read() -> None:
    new = SetPassword(type="set_password", command_id="b" * 16, hashed_password=HASH,
                      confirm_to="workerpool.confirm.d-1", sent_at=now_sent_at())
    assert b'"command_id":"bbbbbbbbbbbbbbbb"' in new.to_json() and b"request_id" not in new.to_json()
    assert decode(SetPassword, new.to_json()).command_id == "b" * 16
    assert decode(SetPassword, _command(HASH)).command_id == "abcdefghijklmnopq"  # old name
