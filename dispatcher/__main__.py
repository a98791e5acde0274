"""``python -m dispatcher``: wiring only (the story is in loop.py)."""

from __future__ import annotations

import sys

from dispatcher.attestation import AgentCheck, AgentKeys, load_certificates
from dispatcher.loop import Dispatcher
from dispatcher.metrics import Metrics
from dispatcher.passwords import Passwords
from shared.asg import Asg
from shared.aws import FAST
from shared.broker import Broker, Consumer
from shared.config import connection_name
from shared.queues import confirm_queue
from shared.runtime import Runtime
from shared.store import Store
from shared.topology import AGENTS_TOPIC_EXCHANGE

#: Unacked messages per queue on our one channel. It bounds claims in flight per dispatcher
#: and how many waiting claims the waiting room holds at once (the rest wait, in order, in
#: the queue), and lets heartbeats pile up enough to be coalesced and written in parallel.
PREFETCH = 200


def main() -> int:
    with Runtime("dispatcher") as rt:
        s = rt.settings
        # short calls: a claim's deadline is a promise, whatever AWS does (shared.aws FAST)
        store = Store.from_settings(s, policy=FAST)
        asg = Asg.from_settings(s, policy=FAST)
        broker = Broker(s.amqp_url, "dispatcher")
        name = connection_name("dispatcher")
        consumer = Consumer(s.amqp_url, name, prefetch=PREFETCH)
        metrics = Metrics(rt.health.registry)
        check = AgentCheck(
            keys=AgentKeys(store.workers.agent_key),
            certificates=load_certificates(s.identity_cert) if s.identity_cert else None,
            on_refused=lambda d, kind: metrics.count_refused(d.queue, kind))
        passwords: Passwords | None = None
        if s.lease_passwords:
            # the agents' confirmations come to a queue of our own, on the consumer's
            # connection; bound to amq.topic too, for agents confined to that exchange
            passwords = Passwords(broker=broker, confirm_queue=confirm_queue(name),
                                  timeout=s.password_confirm_seconds, check=check)
            consumer.subscribe_own(passwords.confirm_queue, passwords.on_confirm,
                                   bind_exchange=AGENTS_TOPIC_EXCHANGE)
        dispatcher = Dispatcher(settings=s, store=store, asg=asg, broker=broker,
                                consumer=consumer, metrics=metrics, passwords=passwords,
                                check=check)
        dispatcher.attach()
        rt.health.add_check("broker", dispatcher.health.broker)
        rt.health.add_check("aws", dispatcher.health.aws)
        rt.on_stop(consumer.stop)
        announced: list[bool] = []

        def ready() -> None:
            if not announced:
                announced.append(True)
                rt.ready(threads=s.dispatcher_threads, lease_passwords=s.lease_passwords,
                         attested=check.attested, client_auth=s.client_auth)

        consumer.on_connect(ready)
        dispatcher.ticker.every(10, rt.alive)  # systemd's watchdog: the loop still turns
        dispatcher.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
