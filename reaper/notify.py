"""Telling users about their leases: the event on ``workerpool.events`` (routing key
``user.<user_id>``, what ``workerpool watch`` shows) and a ``notice`` command to the worker's
agent (``workerpool.agent.<instance-id>``), which writes it to the user's terminals and a
file in their home (agent/notice.py).

The event is published without ``mandatory``: nobody may be watching, and that is fine. The
agent's notice is best effort (``mandatory``: an agent not listening is logged, nothing
more). The reaper's publisher gives up quickly, so that a broker outage never holds up a
pass: a warning that could not be published is tried again next pass (reaper/actions.py).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from reaper.metrics import ReaperMetrics
from shared import topology
from shared.broker import PublisherLike
from shared.errors import TransientError, Unroutable
from shared.messages import LeaseEvent, Notice
from shared.queues import command_queue

log = logging.getLogger(__name__)

#: How long one publish may retry before the pass goes on without it.
GIVE_UP_AFTER = 2.0


class Notifier:
    """``publisher`` None: no broker (the table's tests); events are then only logged.
    ``declare`` (the topology, so that workerpool.events exists) runs before the first
    publish and again after a failure, best effort."""

    def __init__(self, *, publisher: PublisherLike | None, metrics: ReaperMetrics,
                 declare: Callable[[], None] | None = None) -> None:
        self.publisher = publisher
        self.metrics = metrics
        self._declare = declare
        self._declared = declare is None

    def _ensure_topology(self) -> None:
        if self._declared or self._declare is None:
            return
        try:
            self._declare()
            self._declared = True
        except Exception as exc:  # no broker now: the publish says so, and we try again
            log.info("could not declare the topology", extra={"error": str(exc)[:300]})

    def send(self, event: LeaseEvent) -> bool:
        """Publish ``event`` for its user, then the agent's notice; True when the broker
        confirmed the event."""
        ids = {"user_id": event.user_id, "instance_id": event.instance_id,
               "notice": event.type, "reason": event.reason,
               "ends_at": event.ends_at.isoformat()}
        if self.publisher is None:
            log.info("user not notified: no broker", extra=ids)
            return True
        self._ensure_topology()
        try:
            self.publisher.publish(topology.events_key(event.user_id), event.to_json(),
                                   exchange=topology.EVENTS_EXCHANGE, mandatory=False)
        except (TransientError, Unroutable) as exc:
            self._declared = self._declare is None
            self.metrics.notices_failed.inc()
            log.warning("user not notified: the broker did not take the event",
                        extra={**ids, "event": "notice_failed", "error": str(exc)[:300]})
            return False
        self.metrics.notices.labels(type=event.type).inc()
        log.info("user notified: %s", event.type, extra={**ids, "event": "user_notified"})
        self._tell_agent(event, ids)
        return True

    def _tell_agent(self, event: LeaseEvent, ids: dict[str, str]) -> None:
        assert self.publisher is not None
        command = Notice(type="notice", command_id=secrets.token_urlsafe(16), event=event,
                         sent_at=event.sent_at)
        try:
            self.publisher.publish(command_queue(event.instance_id), command.to_json(),
                                   mandatory=True)
        except Unroutable:
            log.info("agent not listening: no notice on the VM", extra=ids)
        except TransientError as exc:
            log.warning("notice to the agent not sent", extra={**ids, "error": str(exc)[:300]})
