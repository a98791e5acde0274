"""``python -m agent``: the worker agent on a VM (PROTOCOL §1, §4).

Wiring only: settings → IMDS client, publisher, health checks → the loop in agent/loop.py.
/health (HEALTH_PORT, default 9100) has two checks: ``code_server`` (its /healthz at the
last heartbeat) and ``heartbeat`` (registered, and the last heartbeat confirmed by the
broker within ~2 intervals). The ready line follows the first confirmed registration.
On SIGTERM it deregisters only if the VM is shutting down (agent/shutdown.py).
"""

from __future__ import annotations

import logging
import threading

from agent.commands import listen
from agent.heartbeat import Timing
from agent.imds import Imds
from agent.keys import AgentKey
from agent.loop import Agent
from agent.shutdown import stop_decision, system_state
from agent.tls import ensure_certificate, pinned_context
from shared.broker import Publisher, connect, declare_topology
from shared.config import connection_name
from shared.runtime import Runtime

log = logging.getLogger(__name__)

#: Longest wait at start for the command queue before registering anyway.
COMMANDS_READY_WAIT = 5.0


def _wait_for(ready: threading.Event, rt: Runtime) -> None:
    """Listen before registering, so a dispatcher that leases us finds the command queue;
    a broker that is down does not hold the registration up for long."""
    waited = 0.0
    while not ready.is_set() and waited < COMMANDS_READY_WAIT:
        if rt.wait(0.05):
            return
        waited += 0.05


def _serve_tls(agent: Agent, directory: str) -> None:
    """code-server's certificate (made on first start) and the context that pins it."""
    assert agent.identity is not None
    agent.tls_fingerprint = ensure_certificate(
        directory, [agent.identity.private_ip, agent.identity.public_ip])
    agent.tls = pinned_context(directory)


def main() -> int:
    with Runtime("agent") as rt:
        s = rt.settings
        mode = s.agent_deregister_on_stop
        name = connection_name("agent")
        timing = Timing(interval=s.heartbeat_interval)

        def declare() -> None:
            conn = connect(s.amqp_url, name)
            try:
                declare_topology(conn.channel())
            finally:
                conn.close()

        key = AgentKey.load_or_create(s.agent_key_file)
        publisher = Publisher(s.amqp_url, name, give_up_after=timing.give_up_after)
        agent = Agent(
            imds=Imds(endpoint=s.aws_ec2_metadata_service_endpoint),
            publisher=publisher,
            key=key,
            code_server_url=s.code_server_url,
            timing=timing,
            wait=rt.wait,
            declare=declare,
            exchange=s.agent_exchange,
        )
        rt.health.add_check("code_server", agent.code_server_check)
        rt.health.add_check("heartbeat", agent.heartbeat_check)

        log.info("starting", extra={"event": "starting",
                                    "imds": s.aws_ec2_metadata_service_endpoint,
                                    "code_server_url": s.code_server_url,
                                    "heartbeat_interval": s.heartbeat_interval,
                                    "deregister_on_stop": mode,
                                    "amqp_url": s.redacted_amqp_url()})
        if agent.wait_for_identity() is not None:
            assert agent.identity is not None
            instance_id = agent.identity.instance_id
            if s.code_server_tls_dir:
                _serve_tls(agent, s.code_server_tls_dir)
            commands = listen(settings=s, connection_name=name, instance_id=instance_id,
                              code_server_url=s.code_server_url, key=key, tls=agent.tls)
            rt.on_stop(commands.stop)
            _wait_for(commands.own_ready, rt)
            agent.run(on_first_registration=lambda: rt.ready(instance_id=instance_id))
            # asked only now, after the signal: the shutdown may have begun a moment ago
            agent.stop(stop_decision(mode, system_state() if mode == "auto" else None))
        publisher.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
