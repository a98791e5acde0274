"""The fault suite's fixture: a pool whose processes reach AWS (and, when asked, the broker)
through cuttable proxies (rig.py)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from shared.config import Settings
from tests.faults.rig import Rig
from tests.proxy import CuttableProxy


@pytest.fixture
def rig(pool: Settings, moto_endpoint: str) -> Iterator[Rig]:
    port = urlsplit(moto_endpoint).port
    amqp = urlsplit(pool.amqp_url)
    r = Rig(pool, CuttableProxy(target_port=port or 80),
            CuttableProxy(amqp.hostname or "127.0.0.1", amqp.port or 5672))
    try:
        yield r
    finally:
        for p in r.procs:
            p.kill()
        r.aws.close()
        r.broker.close()
