"""``python -m reaper``: wiring only; the story is in loop.py, the judgement in rules.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from reaper.loop import Reaper
from reaper.metrics import ReaperMetrics
from shared.asg import Asg
from shared.broker import connect
from shared.config import connection_name
from shared.leader import Leadership
from shared.runtime import Runtime
from shared.store import Store

#: Seconds a health answer is reused: /health may be polled often, and each check costs a
#: broker connection or two AWS calls.
HEALTH_CACHE_SECONDS = 3.0


class CachedCheck:
    """A health check that runs ``probe`` at most every ``ttl`` seconds."""

    def __init__(self, probe: Callable[[], Any], ttl: float = HEALTH_CACHE_SECONDS) -> None:
        self.probe, self.ttl = probe, ttl
        self._lock = threading.Lock()
        self._at = -1e18
        self._result: tuple[bool, Any] = (False, "not checked yet")

    def __call__(self) -> tuple[bool, Any]:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                try:
                    detail = self.probe()
                    self._result = (True, detail or "ok")
                except Exception as exc:  # any failure is "unreachable" to an operator
                    self._result = (False, str(exc) or repr(exc))
                self._at = time.monotonic()
            return self._result


def main() -> int:
    with Runtime("reaper") as rt:
        s = rt.settings
        store = Store.from_settings(s)
        asg = Asg.from_settings(s)
        leadership = Leadership(store, name="reaper", owner=connection_name("reaper"),
                                ttl=s.lock_ttl_seconds)
        reaper = Reaper(store=store, asg=asg, settings=s,
                        metrics=ReaperMetrics(rt.health.registry), leadership=leadership)

        def aws_probe() -> str:
            store.ping()
            asg.describe()
            return "ok"

        def broker_probe() -> str:
            connect(s.amqp_url, connection_name("reaper")).close()
            return "ok"

        rt.health.add_check("aws", CachedCheck(aws_probe))
        rt.health.add_check("broker", CachedCheck(broker_probe))
        rt.ready(reap_interval=s.reap_interval, owner=leadership.owner)
        try:
            reaper.run(rt)
        finally:
            leadership.resign()  # a clean stop hands over at once, not after LOCK_TTL
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
