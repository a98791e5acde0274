"""``workerpool bootstrap``: the table with its indexes and, against an emulator
(AWS_ENDPOINT_URL set), the launch template and the ASG (min 0, desired 0, max
ASG_MAX_SIZE). Idempotent."""

from __future__ import annotations

import logging

from shared.asg import Asg
from shared.aws import configured_endpoint
from shared.broker import Broker
from shared.config import Settings
from shared.store import Store

log = logging.getLogger("workerpool.bootstrap")


def bootstrap(settings: Settings, *, broker: bool = True) -> dict[str, object]:
    store = Store.from_settings(settings)
    created_table = store.create_table()
    log.info("table ready", extra={"table": settings.table_name, "table_created": created_table})
    result: dict[str, object] = {"table": settings.table_name, "table_created": created_table}
    if configured_endpoint("AUTO_SCALING"):
        asg = Asg.from_settings(settings)
        created = asg.ensure_group(
            launch_template=settings.launch_template_name, ami_id=settings.worker_ami_id,
            instance_type=settings.worker_instance_type, max_size=settings.asg_max_size)
        log.info("auto scaling group ready",
                 extra={"asg": settings.asg_name, "asg_created": created,
                        "max_size": settings.asg_max_size})
        result.update(asg=settings.asg_name, asg_created=created)
    else:
        log.info("no AWS_ENDPOINT_URL for Auto Scaling: real AWS; the ASG comes from deploy/ "
                 "(CloudFormation)")
    if broker:
        Broker(settings.amqp_url, "bootstrap").declare()
        log.info("broker topology declared", extra={"amqp_url": settings.redacted_amqp_url()})
        result["broker"] = "declared"
    return result
