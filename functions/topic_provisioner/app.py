"""Custom resource Custom::KafkaTopics: the topics, created from inside the VPC on any MSK cluster.

Creates, grows and (if asked) deletes the stack's topic; adopts a topic that was there first
and never alters it, unless it holds records our groups have not read. Returns
`BootstrapServers`. Properties and the adoption rules: docs/design.md, "The topic provisioner".
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from kafka.admin import KafkaAdminClient
from kafka.errors import AuthorizationError, SaslAuthenticationFailedError

from orderstream import settings
from orderstream.custom_resource import (
    Answer,
    CustomResourceRequest,
    respond,
    while_iam_propagates,
)
from orderstream.redaction import masked_log_line
from orderstream.settings import KafkaSettings
from orderstream.topics import (
    adoption_refusal,
    delete_topics,
    partition_counts,
    reconcile_topics,
    required_topics,
)

logger = Logger(json_serializer=masked_log_line)


def physical_id(cluster_arn: str, topic: str) -> str:
    # A different cluster or topic name is a different resource: CloudFormation then creates the
    # new one and deletes the old one (which keeps its data unless DeleteTopicsOnDelete).
    _, name, uuid = cluster_arn.rsplit(":", 1)[-1].split("/", 2)
    return f"kafka-topics/{name}/{uuid}/{topic}"


ADOPTED = "/adopted"


class AdoptionRefused(RuntimeError):
    """The topic exists, but taking it over as it is would lose or repeat work."""


def adopted_id(cluster_arn: str, topic: str) -> str:
    """The physical id of a topic the stack found rather than created."""
    return physical_id(cluster_arn, topic) + ADOPTED


def admin_for(servers: str) -> KafkaAdminClient:
    config = KafkaSettings.from_env({**os.environ, settings.KAFKA_BOOTSTRAP_SERVERS: servers})
    return KafkaAdminClient(
        **config.connection_config(),
        client_id="orderstream-topic-provisioner",
        request_timeout_ms=30_000,
        bootstrap_timeout_ms=30_000,
    )


def provision(request: CustomResourceRequest) -> Answer:
    props = request.properties
    cluster_arn = str(props["ClusterArn"])
    servers = str(props["BootstrapServers"])
    topic = str(props["OrderTopic"])
    resource_id = physical_id(cluster_arn, topic)
    found_id = adopted_id(cluster_arn, topic)
    data = {"BootstrapServers": servers, "OrderTopic": topic}

    if request.request_type == "Delete":
        if request.physical_resource_id == found_id:
            return Answer(found_id, reason=f"{topic} kept: it existed before this stack")
        if request.physical_resource_id != resource_id:
            # A Create that failed before it made anything, or an id from a replaced resource.
            return Answer(request.physical_resource_id or resource_id, reason="nothing to delete")
        if str(props.get("DeleteTopicsOnDelete", "false")).lower() != "true":
            return Answer(resource_id, reason="topics kept (DeleteTopicsOnDelete=false)")
        try:
            admin = admin_for(servers)
            try:
                deleted = delete_topics(admin, [topic])
            finally:
                admin.close()
        except Exception as exc:
            # Never block a stack deletion: the cluster may already be gone with its topics.
            logger.warning("topic deletion skipped", extra={"error": repr(exc)})
            return Answer(resource_id, reason=f"topics not deleted: {exc}")
        return Answer(resource_id, reason=f"deleted {deleted or 'nothing'}")

    specs = required_topics(
        topic,
        int(props["Partitions"]),
        int(props.get("ReplicationFactor", -1)),
        int(props.get("MinInsyncReplicas", -1)),
    )
    # A new resource: a Create, or an Update to another cluster or topic (CloudFormation then
    # deletes the old id). An existing one keeps the id it was created with.
    new = request.physical_resource_id not in (resource_id, found_id)

    def work() -> Answer:
        admin = admin_for(servers)
        try:
            if request.physical_resource_id == found_id or (new and topic in admin.list_topics()):
                count = partition_counts(admin, [topic]).get(topic, 0)
                if new and str(props.get("ExistingTopicRecords", "refuse")) != "process":
                    groups = [str(g) for g in props.get("ConsumerGroups", [])]
                    if refusal := adoption_refusal(admin, topic, count, groups):
                        raise AdoptionRefused(refusal)
                logger.info("topic adopted", extra={"topic": topic, "partitions": count})
                return Answer(
                    found_id,
                    data=data,
                    reason=f"{topic} adopted as it is ({count} partitions): it existed before "
                    "this stack, which never alters or deletes it",
                )
            changes = reconcile_topics(admin, specs)
        finally:
            admin.close()
        logger.info("topics reconciled", extra={"changes": changes.summary()})
        return Answer(resource_id, data=data, reason=changes.summary())

    # The role may have changed a moment ago (a new cluster's ARN): MSK refuses until it holds.
    return while_iam_propagates(work, kafka_denied)


def kafka_denied(error: Exception) -> bool:
    """MSK's answer to an IAM policy that does not (yet) allow the call."""
    return isinstance(error, AuthorizationError | SaslAuthenticationFailedError)


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, str]:
    return respond(event, provision, context.get_remaining_time_in_millis, logger.append_keys)
