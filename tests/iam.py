"""The least-privilege checker: is every AWS operation the services perform allowed by the
orchestrator's policy in the CloudFormation template, and does that policy allow nothing else?

Recordings come from ``WORKERPOOL_RECORD_AWS_CALLS=<file>`` (shared/aws.py appends one
``<signing-name>:<Operation>`` line per call, with ``[<item kinds>]`` for requests made of
items). ``check(read_recording(path), policy())`` answers both directions; the integration
test and the end-to-end run both use it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "cloudformation" / "workerpool.yaml"
ROLE = "OrchestratorRole"
POLICY_NAME = "workerpool-services"

#: The IAM action of each kind of item, per AWS's Service Authorization Reference for
#: DynamoDB: TransactWriteItems and TransactGetItems are no IAM actions of their own, AWS
#: authorises each item as its action (so a ConditionCheck item needs
#: dynamodb:ConditionCheckItem); BatchWriteItem and BatchGetItem are actions, and we also
#: require the action of each of their items.
ITEM_ACTIONS = {"Update": "UpdateItem", "Put": "PutItem", "Delete": "DeleteItem",
                "ConditionCheck": "ConditionCheckItem", "Get": "GetItem",
                "PutRequest": "PutItem", "DeleteRequest": "DeleteItem",
                # PartiQL statements in a BatchExecuteStatement, by their verb
                "UPDATE": "PartiQLUpdate", "SELECT": "PartiQLSelect",
                "INSERT": "PartiQLInsert", "DELETE": "PartiQLDelete"}
NO_ACTION_OF_THEIR_OWN = {"dynamodb:TransactWriteItems", "dynamodb:TransactGetItems",
                          "dynamodb:BatchExecuteStatement"}

#: Operations that never run against real AWS, so the services' policy must not grant them:
#: on AWS the stack creates the table (bootstrap then only calls DescribeTable) and the ASG;
#: against moto, bootstrap also creates the ASG; the fleet simulator is local only.
NOT_ON_AWS: frozenset[str] = frozenset({
    "dynamodb:CreateTable",
    "dynamodb:UpdateTimeToLive",
    "autoscaling:CreateAutoScalingGroup",
    "ec2:CreateLaunchTemplate",
    "ec2:DescribeAvailabilityZones",
    "ec2:DescribeInstances",
})


class _CfnLoader(yaml.SafeLoader):
    """A YAML loader that understands CloudFormation's short tags (``!Ref``, ``!Sub``, ...)."""


def _cfn_tag(loader: yaml.Loader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    if suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as plain data (intrinsic functions as their long ``Fn::`` form)."""
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506


def policy(template: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The statements of the orchestrator role's ``workerpool-services`` policy."""
    template = template or load_template()
    role = template["Resources"][ROLE]["Properties"]
    for pol in role.get("Policies", []):
        if pol["PolicyName"] == POLICY_NAME:
            return list(pol["PolicyDocument"]["Statement"])
    raise KeyError(f"{ROLE} has no policy named {POLICY_NAME}")


BOOT_POLICY_NAME = "workerpool-boot"


def boot_policy(role: str, template: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The statements of a role's ``workerpool-boot`` policy: what its instance's boot script
    reads (the broker passwords in Secrets Manager). Separate from ``workerpool-services``,
    which the services' recorded calls must match both ways: the services never call it."""
    template = template or load_template()
    for pol in template["Resources"][role]["Properties"].get("Policies", []):
        if pol["PolicyName"] == BOOT_POLICY_NAME:
            return list(pol["PolicyDocument"]["Statement"])
    raise KeyError(f"{role} has no policy named {BOOT_POLICY_NAME}")


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _matches(action: str, pattern: str) -> bool:
    # IAM action names are case-insensitive; * and ? are the only wildcards
    return fnmatch.fnmatchcase(action.lower(), pattern.lower())


def allowed(action: str, statements: Iterable[dict[str, Any]]) -> bool:
    """Whether some Allow statement names ``action`` (wildcards honoured) and no Deny does.

    Resources and conditions are not evaluated here: the test checks their scoping apart.
    """
    statements = list(statements)
    hit = any(_matches(action, p) for s in statements if s.get("Effect") == "Allow"
              for p in _as_list(s.get("Action", [])))
    denied = any(_matches(action, p) for s in statements if s.get("Effect") == "Deny"
                 for p in _as_list(s.get("Action", [])))
    return hit and not denied


def actions_for(operation: str) -> tuple[str, ...]:
    """The IAM actions AWS checks for one recorded operation, derived from its content:
    ``dynamodb:TransactWriteItems[ConditionCheck,Update]`` needs ConditionCheckItem and
    UpdateItem. A transaction recorded without its items cannot be judged: it needs every
    item action."""
    name, _, rest = operation.partition("[")
    service = name.split(":", 1)[0]
    if name not in NO_ACTION_OF_THEIR_OWN and not rest:
        return (name,)
    kinds = rest.rstrip("]").split(",") if rest else sorted(
        k for k in ITEM_ACTIONS if not k.endswith("Request") and not k.isupper())
    items = tuple(sorted({f"{service}:{ITEM_ACTIONS[k]}" for k in kinds if k}))
    return items if name in NO_ACTION_OF_THEIR_OWN else (name, *items)


def read_recording(path: str | Path) -> set[str]:
    """The distinct operations in a recorder file (empty set if nothing was recorded)."""
    p = Path(path)
    if not p.exists():
        return set()
    return {line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()}


def check(recorded_ops: set[str], statements: Iterable[dict[str, Any]]
          ) -> tuple[set[str], set[str]]:
    """(operations the policy does not allow, granted actions no recorded operation needs).

    Operations in ``NOT_ON_AWS`` are ignored (they run against moto only); a granted pattern
    is "never used" when no needed action matches it.
    """
    statements = list(statements)
    ops = set(recorded_ops) - NOT_ON_AWS
    not_allowed = {op for op in ops if not all(allowed(a, statements) for a in actions_for(op))}
    needed = {a for op in ops for a in actions_for(op)}
    granted = {p for s in statements if s.get("Effect") == "Allow"
               for p in _as_list(s.get("Action", []))}
    never_used = {p for p in granted if not any(_matches(a, p) for a in needed)}
    return not_allowed, never_used
