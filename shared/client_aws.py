"""``workerpool status --aws``: the operator's view, read from the table, the ASG and the
broker's queue depths (needs AWS credentials; users see ``workerpool status`` instead)."""

from __future__ import annotations

import time
from typing import Any

from shared import topology
from shared.client_args import format_duration
from shared.clock import iso
from shared.errors import AwsError, ConfigError

#: AWS's answers that mean "your credentials or region", not "AWS refused the request".
CREDENTIAL_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "NoRegionError",
                     "UnrecognizedClientException", "InvalidClientTokenId",
                     "ExpiredTokenException", "ExpiredToken", "InvalidSignatureException",
                     "ProfileNotFound", "NoAuthTokenError"}


def _settings() -> Any:
    from shared.config import parse_settings

    return parse_settings()


def _asg(s: Any) -> dict[str, Any]:
    from shared.asg import Asg

    try:
        g = Asg.from_settings(s).describe()
    except AwsError as exc:
        if exc.code in CREDENTIAL_ERRORS:
            raise
        return {"name": s.asg_name, "error": str(exc)}
    return {"name": g.name, "desired": g.desired, "min": g.min_size, "max": g.max_size,
            "in_service": sum(1 for i in g.instances if i.lifecycle_state == "InService")}


def _queues(s: Any) -> dict[str, Any]:
    from shared.broker import queue_depths
    from shared.config import connection_name
    from shared.errors import BrokerUnavailable

    try:
        return dict(queue_depths(s.amqp_url, connection_name("cli"),
                                 [q.name for q in topology.QUEUES]))
    except BrokerUnavailable as exc:
        return {"error": str(exc)}


def snapshot() -> dict[str, Any]:
    """The pool as an operator sees it: workers, totals, ASG, queue depths. ConfigError when
    AWS's answer says the credentials (or region) are missing or wrong."""
    from shared.store import Store

    s = _settings()
    now = time.time()
    try:
        workers = sorted(Store.from_settings(s).workers.all(),
                         key=lambda w: (w.status, w.instance_id))
        asg = _asg(s)
    except AwsError as exc:
        if exc.code in CREDENTIAL_ERRORS:
            raise ConfigError(f"AWS credentials: {exc} (`status --aws` reads the table: set "
                              "AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; "
                              "`workerpool status` needs only the broker)") from exc
        raise
    totals: dict[str, int] = {}
    for w in workers:
        totals[w.status] = totals.get(w.status, 0) + 1
    return {
        "time": iso(now),
        "workers": [{
            "instance_id": w.instance_id, "status": w.status, "healthy": w.healthy,
            "user_id": w.user_id,
            "lease_left_seconds": int(w.lease_expiry - now) if w.status == "leased" else None,
            "lease_expiry": iso(w.lease_expiry) if w.lease_expiry else None,
            "heartbeat_age_seconds": round(max(0.0, now - w.last_heartbeat), 1),
            "private_ip": w.private_ip, "public_ip": w.public_ip, "reason": w.reason,
        } for w in workers],
        "totals": totals,
        "target_available": s.target_available,
        "asg": asg,
        "queues": _queues(s),
    }


def render(snap: dict[str, Any]) -> str:
    rows = [("INSTANCE", "STATUS", "HEALTHY", "USER", "LEASE LEFT", "HEARTBEAT AGE", "IP")]
    for w in snap["workers"]:
        left = w["lease_left_seconds"]
        rows.append((w["instance_id"], w["status"] + (f" ({w['reason']})" if w["reason"] else ""),
                     "yes" if w["healthy"] else "no", w["user_id"] or "-",
                     "-" if left is None else format_duration(left),
                     f"{w['heartbeat_age_seconds']:.1f}s",
                     w["public_ip"] or w["private_ip"] or "-"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = [f"workerpool status at {snap['time']}", ""]
    lines += ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    if not snap["workers"]:
        lines.append("(no workers yet)")
    t = snap["totals"]
    lines.append("")
    lines.append("workers: " + ", ".join(f"{k} {t.get(k, 0)}" for k in
                                         ("free", "leased", "booting", "draining", "dead"))
                 + f"  (target free: {snap['target_available']})")
    a = snap["asg"]
    lines.append(f"asg {a['name']}: " + (a["error"] if "error" in a else
                                         f"desired {a['desired']}, in service {a['in_service']}, "
                                         f"min {a['min']}, max {a['max']}"))
    q = snap["queues"]
    lines.append("queues: " + (q["error"] if "error" in q else ", ".join(
        f"{k.removeprefix('workerpool.')} {'-' if v is None else v}" for k, v in q.items())))
    return "\n".join(lines)
