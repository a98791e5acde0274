"""Deprecated: the queue-name helpers moved to ``shared.queues``; ``OwnQueueConsumer`` became
``Consumer.subscribe_own`` (shared.broker). Kept only until the tests that still import
from here (test_password_decisions, test_password_permissions) import ``shared.queues``.
"""

from __future__ import annotations

from shared.queues import (
    COMMAND_QUEUE_PREFIX,
    CONFIRM_QUEUE_PREFIX,
    command_queue,
    confirm_queue,
)

__all__ = ["COMMAND_QUEUE_PREFIX", "CONFIRM_QUEUE_PREFIX", "command_queue", "confirm_queue"]
