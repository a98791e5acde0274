"""``python -m scaler``: wiring only; the story is in loop.py, the judgement in policy.py
(docs/scaler.md)."""

from __future__ import annotations

from scaler.feed import EventFeed, scaling_consumer
from scaler.loop import Scaler
from scaler.metrics import ScalerMetrics
from shared import topology
from shared.asg import Asg
from shared.aws import FAST
from shared.broker import Publisher, connect
from shared.config import connection_name
from shared.health import CachedCheck
from shared.leader import Leadership
from shared.messages import CapacityStatus
from shared.runtime import Runtime
from shared.store import Store


def main() -> int:
    with Runtime("scaler") as rt:
        s = rt.settings
        store = Store.from_settings(s, policy=FAST)
        name = connection_name("scaler")
        leadership = Leadership(store, name="scaler", owner=name, ttl=s.lock_ttl_seconds)
        # every mutating ASG call is fenced: made only while the lock is provably ours
        asg = Asg.from_settings(s, policy=FAST, fence=leadership.fence)
        capacity = Publisher(s.amqp_url, name, give_up_after=2.0)

        def publish_capacity(status: CapacityStatus) -> None:
            """Fanout to every dispatcher (none bound yet is fine: not mandatory)."""
            capacity.publish("", status.to_json(), exchange=topology.CAPACITY_EXCHANGE,
                             mandatory=False)

        metrics = ScalerMetrics(rt.health.registry)
        scaler = Scaler(
            settings=s, store=store, asg=asg, metrics=metrics,
            publish_capacity=publish_capacity,
            leadership=leadership,
            open_feed=lambda: EventFeed(
                scaling_consumer(s.amqp_url, name), senders=s.service_user_names,
                on_refused=lambda d: metrics.refused.labels(reason="untrusted sender").inc()),
            stopping=lambda: rt.stopping)

        def aws_probe() -> dict[str, object]:
            store.ping()  # quick calls: /health answers in seconds even while AWS hangs
            asg.ping()
            return {"table": s.table_name, "asg": s.asg_name}

        standby_probe = CachedCheck(lambda: connect(s.amqp_url, name).close()
                                    or "reachable (standby)")

        def broker_check() -> tuple[bool, object]:
            """Connected while active (the event feed); a standby probes."""
            up = scaler.feed_connected()
            if up is None:
                return standby_probe()
            return up, "consuming workerpool.scaling" if up else "reconnecting"

        rt.health.add_check("broker", broker_check)
        rt.health.add_check("aws", CachedCheck(aws_probe, ttl=2.0))
        rt.health.info["scaler"] = scaler.status
        rt.ready(strategy=s.scale_strategy, target_available=s.target_available)
        try:
            scaler.run()
        finally:
            capacity.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
