"""Custom resource Custom::KafkaTopics: topics on MSK Serverless, created from inside the VPC.

Properties: ClusterArn, BootstrapServers (from Custom::KafkaBootstrapBrokers, which looks them up
outside the VPC: this function calls no AWS API but CloudFormation's S3 response URL), OrderTopic,
Partitions, DeleteTopicsOnDelete. Returns `BootstrapServers` (GetAtt) so the producer's
environment depends on the topics existing, not only on the cluster.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from kafka.admin import KafkaAdminClient

from orderstream import settings
from orderstream.custom_resource import CustomResourceRequest, Outcome, respond
from orderstream.settings import KafkaSettings
from orderstream.topics import delete_topics, reconcile_topics, required_topics

logger = Logger()
tracer = Tracer()


def physical_id(cluster_arn: str, topic: str) -> str:
    # A different cluster or topic name is a different resource: CloudFormation then creates the
    # new one and deletes the old one (which keeps its data unless DeleteTopicsOnDelete).
    _, name, uuid = cluster_arn.rsplit(":", 1)[-1].split("/", 2)
    return f"kafka-topics/{name}/{uuid}/{topic}"


def admin_for(servers: str) -> KafkaAdminClient:
    config = KafkaSettings.from_env({**os.environ, settings.KAFKA_BOOTSTRAP_SERVERS: servers})
    return KafkaAdminClient(
        **config.connection_config(),
        client_id="orderstream-topic-provisioner",
        request_timeout_ms=30_000,
        bootstrap_timeout_ms=30_000,
    )


def provision(request: CustomResourceRequest) -> Outcome:
    props = request.properties
    cluster_arn = str(props["ClusterArn"])
    servers = str(props["BootstrapServers"])
    topic = str(props["OrderTopic"])
    resource_id = physical_id(cluster_arn, topic)

    if request.request_type == "Delete":
        if request.physical_resource_id != resource_id:
            # A Create that failed before it made anything, or an id from a replaced resource.
            return Outcome(request.physical_resource_id or resource_id, reason="nothing to delete")
        if str(props.get("DeleteTopicsOnDelete", "false")).lower() != "true":
            return Outcome(resource_id, reason="topics kept (DeleteTopicsOnDelete=false)")
        try:
            admin = admin_for(servers)
            try:
                deleted = delete_topics(admin, [topic])
            finally:
                admin.close()
        except Exception as exc:
            # Never block a stack deletion: the cluster may already be gone with its topics.
            logger.warning("topic deletion skipped", extra={"error": repr(exc)})
            return Outcome(resource_id, reason=f"topics not deleted: {exc}")
        return Outcome(resource_id, reason=f"deleted {deleted or 'nothing'}")

    admin = admin_for(servers)
    try:
        changes = reconcile_topics(admin, required_topics(topic, int(props["Partitions"])))
    finally:
        admin.close()
    logger.info("topics reconciled", extra={"changes": changes.summary()})
    return Outcome(
        resource_id,
        data={"BootstrapServers": servers, "OrderTopic": topic},
        reason=changes.summary(),
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, str]:
    return respond(event, provision, context.get_remaining_time_in_millis, logger.append_keys)
