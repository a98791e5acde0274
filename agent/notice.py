"""Lease notices on the VM: the reaper sends a ``notice`` command (its lease will end, was
extended, has ended; shared/messages/events.py) and the agent tells the user where they
are: one line to their terminals through AGENT_WALL_COMMAND (``wall``: the line on its
standard input, never as an argument), and the notice file AGENT_NOTICE_FILE in their home
(replaced atomically, 0644: the user must read it; through a symlink, the file it points
to is replaced). Either may be empty (off). Failures are logged, never retried: the next
notice says what is true then.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from shared.broker import Delivery
from shared.messages import LeaseEvent, Notice, event_text

log = logging.getLogger(__name__)

#: How long the wall command may run.
WALL_TIMEOUT = 5.0


def notice_text(event: LeaseEvent) -> str:
    """The notice file: the line for people, then the facts, one ``key: value`` a line."""
    facts = event.model_dump(mode="json")
    return event_text(event) + "\n\n" + "".join(f"{k}: {facts[k]}\n" for k in (
        "type", "reason", "ends_at", "instance_id", "user_id", "sent_at"))


def write_notice(path: str, text: str) -> None:
    """Replace ``path`` (or the file its symlink names) atomically, mode 0644."""
    target = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".notice.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_wall(command: str, line: str, timeout: float = WALL_TIMEOUT) -> str | None:
    """Run ``command`` (shlex-split, no shell) with ``line`` on its standard input; None
    when it exited 0, else why not."""
    try:
        done = subprocess.run(shlex.split(command), input=line + "\n", text=True,
                              capture_output=True, timeout=timeout)
    except (OSError, ValueError) as exc:
        return f"{command!r} failed to start: {exc!r:.200}"
    except subprocess.TimeoutExpired:
        return f"{command!r} still running after {timeout:g}s"
    if done.returncode != 0:
        return f"{command!r} exited {done.returncode}: {(done.stderr or '').strip()[-200:]}"
    return None


class Notices:
    """Handles ``notice`` commands on the command consumer's thread."""

    def __init__(self, *, instance_id: str, wall_command: str, notice_file: str) -> None:
        self.instance_id = instance_id
        self.wall_command = wall_command.strip()
        self.notice_file = notice_file.strip()

    def handle(self, d: Delivery, cmd: Notice) -> None:
        event = cmd.event
        ids = {"instance_id": self.instance_id, "user_id": event.user_id,
               "command_id": cmd.command_id, "notice": event.type, "reason": event.reason}
        if event.instance_id != self.instance_id:
            log.warning("notice for another instance ignored",
                        extra={**ids, "event": "notice_ignored", "for": event.instance_id})
        else:
            problems = self.show(event)
            if problems:
                log.warning("notice not fully shown: %s", "; ".join(problems),
                            extra={**ids, "event": "notice_failed"})
            else:
                log.info("notice shown", extra={**ids, "event": "notice_shown",
                                                "ends_at": event.ends_at.isoformat()})
        d.ack()

    def show(self, event: LeaseEvent) -> list[str]:
        """Write the notice file and run the wall command; what went wrong, if anything."""
        problems = []
        if self.notice_file:
            try:
                write_notice(self.notice_file, notice_text(event))
            except OSError as exc:
                problems.append(f"cannot write {self.notice_file}: {exc.strerror or exc!r}")
        if self.wall_command:
            error = run_wall(self.wall_command, event_text(event))
            if error:
                problems.append(error)
        return problems
