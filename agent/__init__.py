"""The worker agent: runs on every worker VM, reads its identity from IMDSv2, registers
and heartbeats over RabbitMQ, and serves a local health check (PROTOCOL §4).

Kept light on purpose (it runs on every VM): no boto3, no requests; urllib for HTTP.
"""

from __future__ import annotations

#: Sent in every registration (``agent_version``); bump on a change an operator should see.
AGENT_VERSION = "1.0.0"
