"""The Auto Scaling adapter: the only module besides store.py that talks to AWS.

Processes see ``AsgState``/``Activity`` values (shared/state.py), never boto3 responses.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import ClientError
from botocore.parsers import ResponseParserError

from shared.aws import (
    QUICK,
    STANDARD,
    CallPolicy,
    Reachability,
    aws_call,
    client,
    error_code,
    error_message,
    translate,
)
from shared.config import Settings
from shared.errors import AwsError
from shared.state import Activity, AsgInstance, AsgState

log = logging.getLogger(__name__)


class Asg:
    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Asg:
        # endpoints: botocore's (AWS_ENDPOINT_URL_AUTO_SCALING, _EC2, AWS_ENDPOINT_URL)
        return cls(name=settings.asg_name, region=settings.aws_region,
                   instance_types=settings.instance_types, **kwargs)

    def __init__(self, *, name: str, region: str, endpoint_url: str | None = None,
                 autoscaling: Any = None, ec2: Any = None, policy: CallPolicy = STANDARD,
                 fence: Callable[[], None] | None = None,
                 instance_types: Sequence[str] = ()) -> None:
        """``fence``: called right before every attempt of a mutating call (raises LockLost
        when this replica may not act: shared.leader.Leadership.fence).
        ``instance_types``: the group ``ensure_group`` makes gets them as mixed-instances
        overrides (two or more)."""
        self.name = name
        self.instance_types = tuple(instance_types)
        self.policy = policy
        self.reachability = Reachability("Auto Scaling")
        self.fence = fence
        self.api = autoscaling or client("autoscaling", region=region,
                                         endpoint_url=endpoint_url, policy=policy)
        self._region = region
        self._endpoint = endpoint_url
        self._ec2 = ec2
        self._ping_api: Any = autoscaling  # injected clients serve the ping too

    @property
    def ec2(self) -> Any:
        if self._ec2 is None:
            self._ec2 = client("ec2", region=self._region, endpoint_url=self._endpoint)
        return self._ec2

    def ping(self) -> None:
        """One quick DescribeAutoScalingGroups for /health: no retries, short timeouts
        (QUICK), so that a health check answers in about a second even when AWS hangs."""
        if self._ping_api is None:
            self._ping_api = client("autoscaling", region=self._region,
                                    endpoint_url=self._endpoint, policy=QUICK)
        try:
            resp = self._ping_api.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name])
        except Exception as exc:
            raise translate(exc) from exc
        if not resp.get("AutoScalingGroups"):
            raise AwsError("NotFound", f"Auto Scaling Group {self.name!r} does not exist")

    def _group(self) -> dict[str, Any]:
        resp = self.api.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name])
        groups = resp.get("AutoScalingGroups", [])
        if not groups:
            raise AwsError("NotFound", f"Auto Scaling Group {self.name!r} does not exist")
        return dict(groups[0])

    @aws_call
    def describe(self) -> AsgState:
        g = self._group()
        overrides = (g.get("MixedInstancesPolicy") or {}).get("LaunchTemplate", {}).get(
            "Overrides") or []
        return AsgState(
            name=self.name,
            min_size=g["MinSize"],
            max_size=g["MaxSize"],
            desired=g["DesiredCapacity"],
            instances=tuple(
                AsgInstance(
                    instance_id=i["InstanceId"],
                    lifecycle_state=i["LifecycleState"],
                    health_status=i.get("HealthStatus", "Healthy"),
                    protected=bool(i.get("ProtectedFromScaleIn")),
                )
                for i in g.get("Instances", [])
            ),
            instance_types=tuple(o["InstanceType"] for o in overrides if o.get("InstanceType")),
            zones=tuple(g.get("AvailabilityZones") or ()),
        )

    def _fenced(self) -> None:
        if self.fence is not None:
            self.fence()

    @aws_call
    def set_desired(self, desired: int) -> None:
        self._fenced()
        self.api.set_desired_capacity(AutoScalingGroupName=self.name,
                                      DesiredCapacity=desired, HonorCooldown=False)

    @aws_call
    def set_instance_types(self, types: Sequence[str]) -> None:
        """Reorder the group's mixed-instances overrides (the first is launched first, the
        next when it lacks capacity). Only types the group already has, each override kept
        as it is (weights and all); the rest of the policy unchanged."""
        g = self._group()
        policy = g.get("MixedInstancesPolicy")
        if not policy:
            raise AwsError("NotMixed", f"{self.name!r} has no mixed-instances policy")
        lt = dict(policy["LaunchTemplate"])
        by_type = {o.get("InstanceType"): o for o in lt.get("Overrides") or []}
        spec = {k: v for k, v in lt["LaunchTemplateSpecification"].items()
                if k in ("LaunchTemplateId", "Version")}  # an Id or a Name, never both
        if "LaunchTemplateId" not in spec:
            spec["LaunchTemplateName"] = lt["LaunchTemplateSpecification"]["LaunchTemplateName"]
        ordered = [by_type[t] for t in types if t in by_type]
        ordered += [o for t, o in by_type.items() if t not in types]
        self._fenced()
        self.api.update_auto_scaling_group(AutoScalingGroupName=self.name, MixedInstancesPolicy={
            **policy, "LaunchTemplate": {"LaunchTemplateSpecification": spec,
                                         "Overrides": ordered}})

    @aws_call
    def set_protection(self, instance_ids: list[str], protected: bool) -> None:
        for start in range(0, len(instance_ids), 50):  # the API takes 50 at a time
            self._fenced()
            self.api.set_instance_protection(
                AutoScalingGroupName=self.name, InstanceIds=instance_ids[start:start + 50],
                ProtectedFromScaleIn=protected)

    @aws_call
    def terminate(self, instance_id: str, *, decrement: bool = True) -> bool:
        """Terminate one chosen instance; False if it was no longer in the group."""
        self._fenced()
        try:
            self.api.terminate_instance_in_auto_scaling_group(
                InstanceId=instance_id, ShouldDecrementDesiredCapacity=decrement)
            return True
        except (StopIteration, ResponseParserError):
            # an emulator's answer for an instance no longer in the group; AWS says
            # ValidationError (docs/emulators.md)
            if instance_id not in {i.instance_id for i in self.describe().instances}:
                return False
            raise AwsError("TerminateFailed", f"could not terminate {instance_id}") from None
        except ClientError as exc:
            msg = error_message(exc).lower()
            if error_code(exc) == "ValidationError" and ("not found" in msg
                                                          or "not part of" in msg
                                                          or "terminat" in msg):
                return False
            raise

    @aws_call
    def activities(self, max_records: int = 20) -> list[Activity]:
        """The newest scaling activities (what the console's Activity tab shows)."""
        resp = self.api.describe_scaling_activities(AutoScalingGroupName=self.name,
                                                    MaxRecords=max_records)
        out = []
        for a in resp.get("Activities", []):
            start = a.get("StartTime")
            out.append(Activity(
                activity_id=a.get("ActivityId", ""),
                status_code=a.get("StatusCode", ""),
                status_message=a.get("StatusMessage", ""),
                description=a.get("Description", ""),
                start_time=start.timestamp() if hasattr(start, "timestamp") else 0.0,
                details=a.get("Details", "") or "",
            ))
        return out

    @aws_call
    def instance_addresses(self, instance_id: str) -> dict[str, Any]:
        """What EC2 says of one instance: IPs, type, zone (the simulated fleet uses it)."""
        resp = self.ec2.describe_instances(InstanceIds=[instance_id])
        inst = resp["Reservations"][0]["Instances"][0]
        return {"private_ip": inst.get("PrivateIpAddress"),
                "public_ip": inst.get("PublicIpAddress"),
                "instance_type": inst.get("InstanceType"),
                "availability_zone": inst.get("Placement", {}).get("AvailabilityZone")}

    # --- bootstrap (local pools against an emulator) ----------------------------------
    @aws_call
    def ensure_group(self, *, launch_template: str, ami_id: str, instance_type: str,
                     max_size: int, user_data: str = "") -> bool:
        """Create the launch template and the group (min 0, desired 0) if absent; with two or
        more ``instance_types``, a mixed-instances group (prioritized, in their order)."""
        try:
            self.ec2.create_launch_template(
                LaunchTemplateName=launch_template,
                LaunchTemplateData={
                    "ImageId": ami_id,
                    "InstanceType": instance_type,
                    "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1,
                                        "HttpEndpoint": "enabled"},
                    "UserData": base64.b64encode(user_data.encode()).decode(),
                },
            )
        except ClientError as exc:
            if "AlreadyExists" not in error_code(exc):
                raise
        try:
            self.describe()
            return False
        except AwsError as exc:
            if exc.code != "NotFound":
                raise
        zones = [z["ZoneName"] for z in
                 self.ec2.describe_availability_zones()["AvailabilityZones"]][:1]
        spec = {"LaunchTemplateName": launch_template, "Version": "$Latest"}
        shape: dict[str, Any] = {"LaunchTemplate": spec}
        if len(self.instance_types) > 1:
            shape = {"MixedInstancesPolicy": {
                "LaunchTemplate": {"LaunchTemplateSpecification": spec, "Overrides": [
                    {"InstanceType": t} for t in self.instance_types]},
                "InstancesDistribution": {"OnDemandAllocationStrategy": "prioritized",
                                          "OnDemandBaseCapacity": 0,
                                          "OnDemandPercentageAboveBaseCapacity": 100}}}
        try:
            self.api.create_auto_scaling_group(
                AutoScalingGroupName=self.name, **shape,
                MinSize=0, MaxSize=max_size, DesiredCapacity=0, AvailabilityZones=zones,
                NewInstancesProtectedFromScaleIn=False,
                Tags=[{"Key": "workerpool", "Value": "worker", "PropagateAtLaunch": True}],
            )
        except ClientError as exc:
            if error_code(exc) != "AlreadyExists":
                raise
            return False
        return True
