"""Names of the private, per-process queues (the public ones are in shared.topology).

Both are exclusive queues a process declares for itself on its consumer's connection
(``Consumer.subscribe_own``); their shapes are fixed because the broker's permissions
(deploy/rabbitmq/definitions.json) match them.
"""

from __future__ import annotations

import re

#: An agent's command queue: ``workerpool.agent.<instance-id>`` (the agents' broker user may
#: configure and read only names of this shape, deploy/rabbitmq/definitions.json).
COMMAND_QUEUE_PREFIX = "workerpool.agent."
#: A dispatcher's confirm queue: ``workerpool.confirm.<its connection name, made safe>``.
CONFIRM_QUEUE_PREFIX = "workerpool.confirm."


def command_queue(instance_id: str) -> str:
    """The command queue of the agent on ``instance_id``."""
    return COMMAND_QUEUE_PREFIX + instance_id


def confirm_queue(connection_name: str) -> str:
    """``dispatcher@host.example:42`` → ``workerpool.confirm.dispatcher-host-example-42``:
    one word of a topic routing key (no dots), unique per process."""
    return CONFIRM_QUEUE_PREFIX + re.sub(r"[^A-Za-z0-9_-]", "-", connection_name)[:200]
