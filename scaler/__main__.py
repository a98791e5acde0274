"""``python -m scaler``: keep the pool at TARGET_AVAILABLE free workers (docs/scaler.md)."""

from __future__ import annotations

import time
from typing import Any

from scaler.loop import Engine
from scaler.metrics import ScalerMetrics
from scaler.service import Service
from shared.asg import Asg
from shared.config import connection_name
from shared.leader import Leadership
from shared.runtime import Runtime
from shared.store import Store


def main() -> int:
    with Runtime("scaler") as rt:
        s = rt.settings
        store = Store.from_settings(s)
        asg = Asg.from_settings(s)
        name = connection_name("scaler")
        metrics = ScalerMetrics(rt.health.registry)
        service: Service | None = None
        engine = Engine(settings=s, store=store, asg=asg, metrics=metrics,
                        publish=lambda status: service.publish_capacity(status) if service
                        else None)
        service = Service(settings=s, engine=engine, name=name,
                          leadership=Leadership(store, name="scaler", owner=name,
                                                ttl=s.lock_ttl_seconds),
                          stopping=lambda: rt.stopping)
        probe: dict[str, Any] = {"at": 0.0, "result": (False, "not probed yet")}

        def aws_check() -> tuple[bool, Any]:
            if time.monotonic() - probe["at"] > 2:  # /health may be polled often; AWS is not
                try:
                    store.ping()
                    state = asg.describe()
                    probe["result"] = (True, {"asg": state.name, "desired": state.desired})
                except Exception as exc:
                    probe["result"] = (False, str(exc))
                probe["at"] = time.monotonic()
            return probe["result"]  # type: ignore[no-any-return]

        rt.health.add_check("broker", service.broker_check)
        rt.health.add_check("aws", aws_check)
        rt.health.info["scaler"] = engine.status
        rt.ready(strategy=s.scale_strategy, target_available=s.target_available)
        service.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
