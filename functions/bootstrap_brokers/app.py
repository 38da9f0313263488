"""Custom resource Custom::KafkaBootstrapBrokers: the cluster's IAM bootstrap string, for the stack.

MSK has no CloudFormation attribute for it (Serverless or provisioned). This function runs outside
the VPC, so the MSK API is reached over its public endpoint and nothing inside the VPC needs an
MSK API endpoint. Properties: ClusterArn (created by the stack, or a cluster you run). Returns
`BootstrapServers` and `ClusterArn` (GetAtt): the rest of the stack takes the ARN from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

from orderstream import custom_resource
from orderstream.custom_resource import (
    Answer,
    CustomResourceRequest,
    respond,
    while_iam_propagates,
)
from orderstream.redaction import masked_log_line

logger = Logger(json_serializer=masked_log_line)


@cache
def _kafka_api() -> Any:
    return boto3.client("kafka")


IAM_PROPAGATION_S = custom_resource.IAM_PROPAGATION_S  # tests shorten it
ACCESS_DENIED = {"AccessDeniedException", "AccessDenied", "ForbiddenException"}


class ClusterUnusable(ValueError):
    """A cluster the stack cannot use; the message says what to change."""


def check_cluster_arn(cluster_arn: str, stack_id: str) -> None:
    """Refuse, before any call, a cluster of another account or region: the event-source
    mappings and the IAM statements name the cluster in the stack's own."""
    cluster = cluster_arn.split(":")
    stack = stack_id.split(":")
    if len(cluster) != 6 or cluster[2] != "kafka" or not cluster[5].startswith("cluster/"):
        raise ClusterUnusable(f"{cluster_arn!r} is not an MSK cluster ARN")
    if cluster[3:5] != stack[3:5]:
        raise ClusterUnusable(
            f"cluster {cluster_arn} is in account {cluster[4]}, region {cluster[3]}; this stack "
            f"is in account {stack[4]}, region {stack[3]}. Deploy the stack where the cluster is."
        )


def _access_denied(error: Exception) -> bool:
    return (
        isinstance(error, ClientError)
        and error.response.get("Error", {}).get("Code") in ACCESS_DENIED
    )


def bootstrap_servers(cluster_arn: str, sleep: Callable[[float], None] = time.sleep) -> str:
    """The SASL/IAM bootstrap string (port 9098)."""
    response = while_iam_propagates(
        lambda: _kafka_api().get_bootstrap_brokers(ClusterArn=cluster_arn),
        _access_denied,
        sleep,
        IAM_PROPAGATION_S,
    )
    brokers: str | None = response.get("BootstrapBrokerStringSaslIam")
    if not brokers:
        # A cluster you run without IAM access control: the API answers, with other strings.
        raise ClusterUnusable(
            f"cluster {cluster_arn} has no IAM (SASL/IAM, port 9098) brokers: turn on IAM "
            "client authentication (aws kafka update-security) or choose another cluster"
        )
    return brokers


def physical_id(cluster_arn: str) -> str:
    # One lookup per cluster: a replaced cluster is a new resource, and the old id's Delete is
    # a no-op.
    _, name, uuid = cluster_arn.rsplit(":", 1)[-1].split("/", 2)
    return f"bootstrap-brokers/{name}/{uuid}"


def look_up(request: CustomResourceRequest) -> Answer:
    cluster_arn = str(request.properties["ClusterArn"])
    if request.request_type == "Delete":
        # Nothing was created; never block a stack deletion on the MSK API.
        return Answer(
            request.physical_resource_id or physical_id(cluster_arn), reason="nothing to delete"
        )
    check_cluster_arn(cluster_arn, request.stack_id)
    servers = bootstrap_servers(cluster_arn)
    logger.info("bootstrap brokers found", extra={"bootstrap_servers": servers})
    return Answer(
        physical_id(cluster_arn),
        data={"BootstrapServers": servers, "ClusterArn": cluster_arn},
        reason=servers,
    )


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, str]:
    return respond(event, look_up, context.get_remaining_time_in_millis, logger.append_keys)
