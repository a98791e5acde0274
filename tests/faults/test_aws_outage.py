"""When AWS fails (issue 14, items 1, 10 and 11): every claim is answered by its deadline,
exactly once; transient failures wait in delay queues instead of spending the delivery
limit; live workers are not reclaimed for heartbeats we could not write; every service stops
within 10 s with AWS hanging."""

from __future__ import annotations

import json
import signal
import time

import pytest

from shared import topology
from shared.aws import FAST
from tests.faults.rig import Heartbeats, Rig, elapsed, health
from tests.helpers import wait_for
from tests.integration.test_dispatcher_support import (
    Client,
    dead_letters,
    publish_agent,
    register_msg,
    register_workers,
)

pytestmark = pytest.mark.timeout(120)

#: The longest a claim's first AWS call takes to find AWS hanging (shared.aws.FAST).
FINDING_OUT = FAST.attempts * (FAST.connect + FAST.read)


@pytest.mark.parametrize("outage", ["refused", "hanging"])
def test_claims_are_answered_by_their_deadline_exactly_once_while_aws_is_down(
        rig: Rig, outage: str) -> None:
    rig.start("dispatcher")
    client = Client(rig.settings)
    try:
        if outage == "refused":
            rig.aws.cut(refuse_for=600)
        else:
            rig.aws.hang(600)  # a blackhole: connections accepted, never answered
        sent: dict[str, tuple[float, int]] = {}
        for wait in (0, 4, 8):
            cid = client.send(topology.CLAIMS, json.dumps(
                {"request_id": f"r-{wait}", "user_id": "alice", "wait_seconds": wait}).encode())
            sent[cid] = (time.monotonic(), wait)
        got = rig.replies(client, sent, timeout=20)
        assert set(got) == set(sent), f"unanswered: {set(sent) - set(got)}"
        for cid, (at, reply) in got.items():
            sent_at, wait = sent[cid]
            assert reply["status"] == "unavailable", reply
            assert "AWS does not answer (DynamoDB" in reply["reason"], reply["reason"]
            # by its deadline, or, when that is sooner than a claim's AWS call can find AWS
            # down (FAST: two tries of a 2 s read), right after; 1.5 s of slack
            assert at - sent_at <= max(wait, FINDING_OUT) + 1.5, (wait, at - sent_at)
        client.settle(1.0)
        assert len(client.all) == 3  # exactly one reply each
        assert dead_letters(rig.settings) == []
    finally:
        client.close()

    # AWS back: the pool works again, no restart
    rig.aws.heal()
    (iid,) = rig.launch(1)
    register_workers(rig.settings, [iid])
    c2 = Client(rig.settings)
    try:
        assert c2.claim("bob", "r-after", timeout=15)["status"] == "assigned"
    finally:
        c2.close()


def test_transient_failures_wait_in_delay_queues_and_do_not_spend_the_delivery_limit(
        rig: Rig) -> None:
    """A registration while AWS refuses every call for 15 s: requeued at once, it would have
    spent the claims' and agents' delivery limit of 20 within a few seconds and been
    dead-lettered; it waits in workerpool.retry.* instead, and lands once AWS is back."""
    d = rig.start("dispatcher")
    (iid,) = rig.launch(1)
    rig.aws.cut(refuse_for=15)
    cut = time.monotonic()
    publish_agent(rig.settings, [register_msg(iid)])

    def tries() -> list[int]:
        return [int(l["attempt"]) for l in d.lines
                if l.get("msg") == "message sent back to be tried again"
                and l.get("queue") == topology.AGENTS]

    wait_for(lambda: len(tries()) >= 3, 20, what="three tries of the registration")
    store = rig.store
    wait_for(lambda: (w := store.workers.get(iid)) is not None and w.status == "free", 40,
             interval=0.25, what="the worker registered once AWS is back")
    assert elapsed(cut) >= 14  # not before AWS answered again
    # 1 s, 1 s, 1 s, 5 s, 5 s...: a handful of tries over 15 s, counted in a header of
    # their own (a requeue every 0.2 s would have spent the delivery limit of 20 in 4 s)
    assert tries() == list(range(1, len(tries()) + 1)) and 4 <= len(tries()) <= 8, tries()
    assert dead_letters(rig.settings) == []


def test_an_aws_outage_longer_than_the_heartbeat_timeout_reclaims_nobody(rig: Rig) -> None:
    ids = rig.launch(3)
    rig.start("dispatcher", HEARTBEAT_INTERVAL=0.5, HEARTBEAT_TIMEOUT=3)
    register_workers(rig.settings, ids)
    beats = Heartbeats(rig.settings, ids, interval=0.5)
    reaper = rig.start("reaper", HEARTBEAT_INTERVAL=0.5, HEARTBEAT_TIMEOUT=3,
                       REAP_INTERVAL=0.2, LOCK_TTL_SECONDS=2, ORPHAN_SWEEP_INTERVAL=1)
    try:
        time.sleep(1.5)
        rig.aws.cut(refuse_for=8)  # > HEARTBEAT_TIMEOUT: no heartbeat is written meanwhile
        time.sleep(8.5)
        rig.aws.heal()
        # the control: one agent really goes silent at recovery; the others live on
        silent = ids[0]
        beats.ids.remove(silent)
        healed = time.monotonic()
        store = rig.store
        wait_for(lambda: (w := store.workers.get(silent)) is None
                 or w.status in ("dead", "draining"), 20, interval=0.2,
                 what="the silent worker reclaimed")
        assert elapsed(healed) >= 2.5  # its timeout counted from recovery, not before
        for iid in ids[1:]:
            w = store.workers.get(iid)
            assert w is not None and w.status == "free", (iid, w)
        assert rig.asg.describe().live_ids >= set(ids[1:])
    finally:
        beats.stop()
    assert reaper.popen.poll() is None


@pytest.mark.parametrize("module", ["dispatcher", "scaler", "reaper"])
def test_every_service_stops_within_10_seconds_while_aws_hangs(rig: Rig, module: str) -> None:
    p = rig.start(module, RECONCILE_INTERVAL=0.2, REAP_INTERVAL=0.2, LOCK_TTL_SECONDS=2)
    rig.aws.hang(600)
    if module == "dispatcher":  # a claim in flight on the hanging AWS
        client = Client(rig.settings)
        client.send(topology.CLAIMS, json.dumps(
            {"request_id": "r-stuck", "user_id": "alice", "wait_seconds": 30}).encode())
        client.close()
    time.sleep(2.0)  # its calls are stuck by now
    wait_for(lambda: health(p)[0] == 503, 15, what=f"{module} /health 503 (AWS)")
    started = time.monotonic()
    p.signal(signal.SIGTERM)
    code = p.popen.wait(15)
    took = elapsed(started)
    assert took < 10.5, took
    assert code == 0, p.log_text()[-2000:]
