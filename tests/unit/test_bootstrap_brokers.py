"""The bootstrap-broker lookup: the one MSK API call of the stack, made from outside the VPC.

moto does not implement GetBootstrapBrokers, so botocore's Stubber answers it: the request is
still validated against the API model. CloudFormation's answer goes to a real HTTP server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from functions.bootstrap_brokers import app
from orderstream import custom_resource
from tests.fakes import LambdaContext, logger_output, recording_http_server
from tests.samples import load_event

BOOT = "boot-abc.c2.kafka-serverless.eu-west-1.amazonaws.com:9098"


@pytest.fixture
def msk() -> Iterator[Stubber]:
    with Stubber(app._kafka_api()) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def invoke(event: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    with recording_http_server() as (url, received):
        event["ResponseURL"] = url
        result = app.lambda_handler(event, lambda_context(timeout_ms=60_000))
    [response] = received
    return result, json.loads(response.body)


def test_create_answers_the_iam_bootstrap_string(msk: Stubber) -> None:
    event = load_event("cfn-bootstrap-brokers-create.json")
    arn = event["ResourceProperties"]["ClusterArn"]
    msk.add_response(
        "get_bootstrap_brokers", {"BootstrapBrokerStringSaslIam": BOOT}, {"ClusterArn": arn}
    )
    result, body = invoke(event)
    assert result == {"Status": "SUCCESS"}
    assert body["Status"] == "SUCCESS"
    assert body["Data"] == {"BootstrapServers": BOOT, "ClusterArn": arn}
    assert body["PhysicalResourceId"] == app.physical_id(arn)
    assert body["LogicalResourceId"] == "KafkaBootstrapBrokers"


def test_a_cluster_the_api_does_not_know_fails_the_create(msk: Stubber) -> None:
    msk.add_client_error(
        "get_bootstrap_brokers", service_error_code="NotFoundException", http_status_code=404
    )
    result, body = invoke(load_event("cfn-bootstrap-brokers-create.json"))
    assert result == {"Status": "FAILED"}
    assert body["Status"] == "FAILED"
    assert "NotFoundException" in body["Reason"]


PROVISIONED = (
    "arn:aws:kafka:eu-west-1:123456789012:cluster/theirs/6357e0b2-0e6a-4b86-a0b4-70df934c2e31-5"
)
PROVISIONED_BOOT = ",".join(
    f"b-{n}.theirs.abc123.c5.kafka.eu-west-1.amazonaws.com:9098" for n in (1, 2, 3)
)


def test_a_provisioned_cluster_you_run_is_looked_up_the_same_way(msk: Stubber) -> None:
    event = load_event("cfn-bootstrap-brokers-create.json")
    event["ResourceProperties"]["ClusterArn"] = PROVISIONED
    msk.add_response(
        "get_bootstrap_brokers",
        {"BootstrapBrokerStringSaslIam": PROVISIONED_BOOT, "BootstrapBrokerStringTls": "x:9094"},
        {"ClusterArn": PROVISIONED},
    )
    _, body = invoke(event)
    assert body["Status"] == "SUCCESS", body["Reason"]
    assert body["Data"] == {"BootstrapServers": PROVISIONED_BOOT, "ClusterArn": PROVISIONED}


def test_a_cluster_without_iam_authentication_is_refused_with_the_fix(msk: Stubber) -> None:
    event = load_event("cfn-bootstrap-brokers-create.json")
    event["ResourceProperties"]["ClusterArn"] = PROVISIONED
    msk.add_response(
        "get_bootstrap_brokers",
        {"BootstrapBrokerStringTls": "b-1.theirs:9094,b-2.theirs:9094"},
        {"ClusterArn": PROVISIONED},
    )
    _, body = invoke(event)
    assert body["Status"] == "FAILED"
    assert body["Reason"] == (
        f"ClusterUnusable: cluster {PROVISIONED} has no IAM (SASL/IAM, port 9098) brokers: turn "
        "on IAM client authentication (aws kafka update-security) or choose another cluster"
    )


@pytest.mark.parametrize(
    ("arn", "why"),
    [
        (PROVISIONED.replace("123456789012", "210987654321"), "account 210987654321"),
        (PROVISIONED.replace("eu-west-1", "us-east-1"), "region us-east-1"),
        ("arn:aws:kafka:eu-west-1:123456789012:topic/theirs/uuid/order-placed", "not an MSK"),
    ],
)
def test_a_cluster_elsewhere_is_refused_before_any_call(msk: Stubber, arn: str, why: str) -> None:
    event = load_event("cfn-bootstrap-brokers-create.json")
    event["ResourceProperties"]["ClusterArn"] = arn
    _, body = invoke(event)  # the Stubber fails on any call it was not given
    assert body["Status"] == "FAILED"
    assert why in body["Reason"]


def test_delete_calls_nothing_and_keeps_the_id(msk: Stubber) -> None:
    event = load_event("cfn-bootstrap-brokers-create.json")
    event["RequestType"] = "Delete"
    event["PhysicalResourceId"] = "bootstrap-brokers/orderstream/some-uuid"
    result, body = invoke(event)  # the Stubber would fail on any call it was not given
    assert result == {"Status": "SUCCESS"}
    assert body["PhysicalResourceId"] == "bootstrap-brokers/orderstream/some-uuid"


def test_a_replaced_cluster_is_a_new_physical_resource() -> None:
    old = "arn:aws:kafka:eu-west-1:123456789012:cluster/orderstream-dev-0a1/1111-s1"
    new = "arn:aws:kafka:eu-west-1:123456789012:cluster/orderstream-dev-0b2/2222-s1"
    assert app.physical_id(old) != app.physical_id(new)


def test_a_role_not_yet_in_force_is_waited_for(msk: Stubber) -> None:
    """IAM is eventually consistent: the first calls after the role's creation may be denied."""
    arn = load_event("cfn-bootstrap-brokers-create.json")["ResourceProperties"]["ClusterArn"]
    for _ in range(2):
        msk.add_client_error(
            "get_bootstrap_brokers", service_error_code="ForbiddenException", http_status_code=403
        )
    msk.add_response(
        "get_bootstrap_brokers", {"BootstrapBrokerStringSaslIam": BOOT}, {"ClusterArn": arn}
    )
    slept: list[float] = []
    assert app.bootstrap_servers(arn, sleep=slept.append) == BOOT
    assert slept == [1.0, 2.0]


def test_a_denial_that_outlasts_propagation_fails(
    msk: Stubber, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "IAM_PROPAGATION_S", 2.5)
    for _ in range(2):
        msk.add_client_error(
            "get_bootstrap_brokers", service_error_code="ForbiddenException", http_status_code=403
        )
    slept: list[float] = []
    with pytest.raises(ClientError, match="ForbiddenException"):
        app.bootstrap_servers("arn:aws:kafka:eu-west-1:123456789012:cluster/x/y", slept.append)
    assert slept == [1.0]  # a second wait would end past the propagation window


SAMPLE_ARN = load_event("cfn-bootstrap-brokers-create.json")["ResourceProperties"]["ClusterArn"]


def test_the_physical_id_names_the_cluster_and_its_uuid() -> None:
    assert app.physical_id(SAMPLE_ARN) == (
        "bootstrap-brokers/orderstream/6f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8-s1"
    )
    assert app.physical_id(PROVISIONED) == (
        "bootstrap-brokers/theirs/6357e0b2-0e6a-4b86-a0b4-70df934c2e31-5"
    )


def test_success_answers_the_servers_as_its_reason_and_logs_them(msk: Stubber) -> None:
    msk.add_response(
        "get_bootstrap_brokers", {"BootstrapBrokerStringSaslIam": BOOT}, {"ClusterArn": SAMPLE_ARN}
    )
    with logger_output(app.logger) as logged:
        _, body = invoke(load_event("cfn-bootstrap-brokers-create.json"))
    assert body["Reason"] == BOOT
    [found] = [
        line
        for line in map(json.loads, logged.getvalue().splitlines())
        if line["message"] == "bootstrap brokers found"
    ]
    assert found["bootstrap_servers"] == BOOT
    assert found["level"] == "INFO"


def test_a_delete_without_an_id_answers_the_clusters_own() -> None:
    """A Create that failed before any id was sent is rolled back by a Delete without one."""
    event = load_event("cfn-bootstrap-brokers-create.json")
    event["RequestType"] = "Delete"
    event.pop("PhysicalResourceId", None)
    result, body = invoke(event)
    assert result == {"Status": "SUCCESS"}
    assert body["PhysicalResourceId"] == app.physical_id(SAMPLE_ARN)
    assert body["Reason"] == "nothing to delete"


@pytest.mark.parametrize(
    ("arn", "message"),
    [
        (
            PROVISIONED.replace("123456789012", "210987654321"),
            f"cluster {PROVISIONED.replace('123456789012', '210987654321')} is in account "
            "210987654321, region eu-west-1; this stack is in account 123456789012, region "
            "eu-west-1. Deploy the stack where the cluster is.",
        ),
        (
            PROVISIONED.replace("eu-west-1", "us-east-1"),
            f"cluster {PROVISIONED.replace('eu-west-1', 'us-east-1')} is in account "
            "123456789012, region us-east-1; this stack is in account 123456789012, region "
            "eu-west-1. Deploy the stack where the cluster is.",
        ),
        ("arn:aws:kafka:eu-west-1:123456789012:topic/x/y/z", "is not an MSK cluster ARN"),
        ("arn:aws:kafka:eu-west-1:123456789012:cluster/x/y:extra", "is not an MSK cluster ARN"),
        ("arn:aws:kafka:eu-west-1:123456789012", "is not an MSK cluster ARN"),
        ("arn:aws:ec2:eu-west-1:123456789012:cluster/x/y", "is not an MSK cluster ARN"),
    ],
)
def test_each_refusal_says_exactly_why(arn: str, message: str) -> None:
    stack = load_event("cfn-bootstrap-brokers-create.json")["StackId"]
    with pytest.raises(app.ClusterUnusable) as refused:
        app.check_cluster_arn(arn, stack)
    assert message in str(refused.value)
    if "account" in message:
        assert str(refused.value) == message


def test_a_cluster_of_the_stacks_own_account_and_region_is_accepted() -> None:
    stack = load_event("cfn-bootstrap-brokers-create.json")["StackId"]
    app.check_cluster_arn(SAMPLE_ARN, stack)
    app.check_cluster_arn(PROVISIONED, stack)


@pytest.mark.parametrize("code", ["AccessDeniedException", "AccessDenied", "ForbiddenException"])
def test_every_denial_code_is_waited_for(msk: Stubber, code: str) -> None:
    msk.add_client_error("get_bootstrap_brokers", service_error_code=code, http_status_code=403)
    msk.add_response(
        "get_bootstrap_brokers", {"BootstrapBrokerStringSaslIam": BOOT}, {"ClusterArn": SAMPLE_ARN}
    )
    slept: list[float] = []
    assert app.bootstrap_servers(SAMPLE_ARN, sleep=slept.append) == BOOT
    assert slept == [1.0]


@pytest.mark.parametrize(
    "error",
    [
        ClientError({"Error": {"Code": "ThrottlingException"}}, "GetBootstrapBrokers"),
        ClientError({}, "GetBootstrapBrokers"),  # an answer without an Error element
        ValueError("not from the API"),
    ],
)
def test_anything_but_a_denial_fails_at_once(error: Exception) -> None:
    def denied() -> Any:
        raise error

    slept: list[float] = []
    with pytest.raises(type(error)):
        custom_resource.while_iam_propagates(denied, app._access_denied, slept.append, 60.0)
    assert slept == []
    assert app._access_denied(error) is False


def lambda_context(**fields: Any) -> Any:
    """devstack's context, which has every attribute of Powertools' LambdaContext type."""
    return LambdaContext(**fields)
