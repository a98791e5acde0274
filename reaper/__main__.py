"""``python -m reaper``: wiring only; the story is in loop.py, the judgement in rules.py."""

from __future__ import annotations

from reaper.loop import Reaper
from reaper.metrics import ReaperMetrics
from reaper.notify import GIVE_UP_AFTER, Notifier
from shared.asg import Asg
from shared.aws import FAST
from shared.broker import Publisher, connect
from shared.broker.admin import declare
from shared.config import connection_name
from shared.health import CachedCheck
from shared.leader import Leadership
from shared.runtime import Runtime
from shared.store import Store


def main() -> int:
    with Runtime("reaper") as rt:
        s = rt.settings
        store = Store.from_settings(s, policy=FAST)
        leadership = Leadership(store, name="reaper", owner=connection_name("reaper"),
                                ttl=s.lock_ttl_seconds)
        # every terminate and protection change is fenced: made only while the lock is ours
        asg = Asg.from_settings(s, policy=FAST, fence=leadership.fence)
        metrics = ReaperMetrics(rt.health.registry)
        # events for users (reaper/notify.py): published from this, the loop's thread
        name = connection_name("reaper")
        publisher = Publisher(s.amqp_url, name, give_up_after=GIVE_UP_AFTER)
        notifier = Notifier(publisher=publisher, metrics=metrics, declare=lambda: declare(
            s.amqp_url, name, give_up_after=GIVE_UP_AFTER))
        reaper = Reaper(store=store, asg=asg, settings=s, metrics=metrics,
                        leadership=leadership, notifier=notifier)

        def aws_probe() -> str:
            store.ping()  # quick calls: /health answers in seconds even while AWS hangs
            asg.ping()
            return "ok"

        def broker_probe() -> str:
            connect(s.amqp_url, connection_name("reaper")).close()
            return "ok"

        rt.health.add_check("aws", CachedCheck(aws_probe))
        rt.health.add_check("broker", CachedCheck(broker_probe))
        rt.ready(reap_interval=s.reap_interval, owner=leadership.owner,
                 idle_seconds=s.idle_seconds, warn_before_seconds=s.warn_before_seconds)
        try:
            reaper.run(rt)
        finally:
            leadership.resign()  # a clean stop hands over at once, not after LOCK_TTL
            publisher.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
