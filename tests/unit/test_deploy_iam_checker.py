"""tests/iam.py itself: wildcard matching and both directions of the check."""

from __future__ import annotations

import pytest

from tests import iam

POLICY = [
    {"Effect": "Allow", "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
     "Resource": "arn:table"},
    {"Effect": "Allow", "Action": "autoscaling:Describe*", "Resource": "*"},
    {"Effect": "Deny", "Action": "autoscaling:DescribeScalingActivities", "Resource": "*"},
]


@pytest.mark.parametrize(("action", "expected"), [
    ("dynamodb:GetItem", True),
    ("dynamodb:getitem", True),  # IAM action names are case-insensitive
    ("dynamodb:DeleteItem", False),
    ("autoscaling:DescribeAutoScalingGroups", True),  # via the wildcard
    ("autoscaling:DescribeScalingActivities", False),  # an explicit Deny wins
    ("autoscaling:SetDesiredCapacity", False),
])
def test_allowed_honours_wildcards_case_and_deny(action: str, expected: bool) -> None:
    assert iam.allowed(action, POLICY) is expected


def test_check_reports_operations_not_allowed_and_grants_never_used() -> None:
    not_allowed, never_used = iam.check({"dynamodb:GetItem", "dynamodb:Scan"}, POLICY)
    assert not_allowed == {"dynamodb:Scan"}
    assert never_used == {"dynamodb:PutItem", "dynamodb:UpdateItem", "autoscaling:Describe*"}


@pytest.mark.parametrize(("operation", "actions"), [
    ("dynamodb:GetItem", ("dynamodb:GetItem",)),
    ("dynamodb:TransactWriteItems[Put,Update]", ("dynamodb:PutItem", "dynamodb:UpdateItem")),
    ("dynamodb:TransactWriteItems[ConditionCheck,Update]",
     ("dynamodb:ConditionCheckItem", "dynamodb:UpdateItem")),
    ("dynamodb:TransactWriteItems", ("dynamodb:ConditionCheckItem", "dynamodb:DeleteItem",
                                     "dynamodb:GetItem", "dynamodb:PutItem",
                                     "dynamodb:UpdateItem")),  # items unknown: all of them
    ("dynamodb:BatchWriteItem[DeleteRequest,PutRequest]",
     ("dynamodb:BatchWriteItem", "dynamodb:DeleteItem", "dynamodb:PutItem")),
])
def test_the_actions_a_request_needs_come_from_its_items(operation: str,
                                                          actions: tuple[str, ...]) -> None:
    assert iam.actions_for(operation) == actions


def test_a_transaction_needs_the_actions_of_its_items() -> None:
    not_allowed, never_used = iam.check({"dynamodb:TransactWriteItems[Put,Update]"},
                                        POLICY[:1])
    assert not_allowed == set()
    assert never_used == {"dynamodb:GetItem"}
    # the registration's tombstone check: without ConditionCheckItem, AWS says AccessDenied
    assert iam.check({"dynamodb:TransactWriteItems[ConditionCheck,Update]"}, POLICY[:1])[0] == {
        "dynamodb:TransactWriteItems[ConditionCheck,Update]"}


def test_the_recorder_writes_the_kinds_of_items_of_a_transaction() -> None:
    from shared.aws import recorded_operation

    params = {"TransactItems": [{"Update": {}}, {"ConditionCheck": {}}, {"Update": {}}]}
    assert recorded_operation("dynamodb", "TransactWriteItems", params) == (
        "dynamodb:TransactWriteItems[ConditionCheck,Update]")
    batch = {"RequestItems": {"t": [{"PutRequest": {}}, {"DeleteRequest": {}}]}}
    assert recorded_operation("dynamodb", "BatchWriteItem", batch) == (
        "dynamodb:BatchWriteItem[DeleteRequest,PutRequest]")
    assert recorded_operation("dynamodb", "GetItem", {"Key": {}}) == "dynamodb:GetItem"


def test_operations_that_only_run_against_moto_are_ignored() -> None:
    assert iam.check({"dynamodb:CreateTable", "ec2:DescribeInstances"}, POLICY[:1]) == (
        set(), {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"})


def test_the_template_policy_loads_with_its_intrinsic_functions() -> None:
    stmts = iam.policy()
    assert {s["Sid"] for s in stmts} >= {"TableItems", "DescribeNeedsStar"}
    table = next(s for s in stmts if s["Sid"] == "TableItems")
    assert table["Resource"] == {"Fn::GetAtt": ["WorkerPoolTable", "Arn"]}


def test_an_empty_recording_file_reads_as_no_operations(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert iam.read_recording(tmp_path / "missing.txt") == set()
    (tmp_path / "r.txt").write_text("dynamodb:GetItem\n\ndynamodb:GetItem\nautoscaling:X\n")
    assert iam.read_recording(tmp_path / "r.txt") == {"dynamodb:GetItem", "autoscaling:X"}
