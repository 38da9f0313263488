"""The topic provisioner end to end: a real broker, a real HTTP response URL, the real handler.

It calls no AWS API (the bootstrap string arrives as a property), so nothing is stubbed.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.admin import NewTopic, OffsetSpec
from kafka.structs import OffsetAndMetadata

from devstack.broker import EmbeddedBroker
from functions.topic_provisioner import app
from tests.fakes import LambdaContext, recording_http_server
from tests.samples import load_event

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(kafka_broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker speaks plaintext; the provisioner's bootstrap string points at it."""
    monkeypatch.setenv("KAFKA_SECURITY", "plaintext")


def run(
    _: None,
    broker: EmbeddedBroker,
    name: str,
    request_type: str | None = None,
    physical_id: str | None = None,
    **props: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One CloudFormation request; an Update or Delete names the physical id (the Create's
    answer), by default the id of a topic the stack created."""
    event = load_event(name)
    event["RequestType"] = request_type or event["RequestType"]
    event["ResourceProperties"].update({"BootstrapServers": broker.bootstrap_servers, **props})
    arn = event["ResourceProperties"]["ClusterArn"]
    if event["RequestType"] != "Create":
        event["PhysicalResourceId"] = physical_id or app.physical_id(
            arn, event["ResourceProperties"]["OrderTopic"]
        )
    with recording_http_server() as (url, received):
        event["ResponseURL"] = url
        result = app.lambda_handler(event, lambda_context(timeout_ms=60_000))
    [response] = received
    return result, json.loads(response.body)


def partitions(broker: EmbeddedBroker, topic: str) -> int | None:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        if topic not in admin.list_topics():
            return None
        return len(admin.describe_topics([topic])[0]["partitions"])
    finally:
        admin.close()


def test_create_update_and_delete_a_topic(cluster: None, kafka_broker: EmbeddedBroker) -> None:
    topic = f"order-placed-{uuid.uuid4().hex[:8]}"
    result, created = run(cluster, kafka_broker, "cfn-topics-create.json", OrderTopic=topic)
    assert result == {"Status": "SUCCESS"}
    assert created["Status"] == "SUCCESS", created["Reason"]
    assert created["Data"] == {
        "BootstrapServers": kafka_broker.bootstrap_servers,
        "OrderTopic": topic,
    }
    assert created["PhysicalResourceId"].endswith(f"/{topic}")
    assert partitions(kafka_broker, topic) == 6

    # An Update with the same count changes nothing. (Growing is tested against a fake admin:
    # the embedded broker does not implement CreatePartitions.)
    _, again = run(cluster, kafka_broker, "cfn-topics-create.json", "Update", OrderTopic=topic)
    assert (again["Status"], again["Reason"]) == ("SUCCESS", "no change")
    assert again["PhysicalResourceId"] == created["PhysicalResourceId"]

    _, shrink = run(
        cluster,
        kafka_broker,
        "cfn-topics-create.json",
        "Update",
        OrderTopic=topic,
        Partitions="2",
    )
    assert shrink["Status"] == "FAILED"
    assert "cannot shrink" in shrink["Reason"]
    assert partitions(kafka_broker, topic) == 6

    _, kept = run(cluster, kafka_broker, "cfn-topics-delete.json", OrderTopic=topic)
    assert kept["Status"] == "SUCCESS"
    assert partitions(kafka_broker, topic) == 6  # data is left alone by default

    _, deleted = run(
        cluster,
        kafka_broker,
        "cfn-topics-delete.json",
        OrderTopic=topic,
        DeleteTopicsOnDelete="true",
    )
    assert deleted["Status"] == "SUCCESS"
    assert partitions(kafka_broker, topic) is None


def test_a_failed_create_still_answers(cluster: None, kafka_broker: EmbeddedBroker) -> None:
    event = load_event("cfn-topics-create.json")
    # A stack whose template forgot the bootstrap string: the work fails, the answer still goes.
    del event["ResourceProperties"]["BootstrapServers"]
    with recording_http_server() as (url, received):
        event["ResponseURL"] = url
        assert app.lambda_handler(event, lambda_context()) == {"Status": "FAILED"}
    body = json.loads(received[0].body)
    assert body["Status"] == "FAILED"
    assert "BootstrapServers" in body["Reason"]


def replicas(broker: EmbeddedBroker, topic: str) -> set[int]:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        [described] = admin.describe_topics([topic])
        return {len(p["replica_nodes"]) for p in described["partitions"]}
    finally:
        admin.close()


def test_a_topic_that_was_there_first_is_adopted_never_altered_never_deleted(
    cluster: None, kafka_broker: EmbeddedBroker
) -> None:
    """ClusterType=existing: someone's cluster already holds order-placed, say with 3
    partitions. The stack uses it as it is, and even DeleteTopicsOnStackDelete=true keeps it."""
    topic = existing_topic(kafka_broker, partitions=3)
    _, created = run(
        cluster,
        kafka_broker,
        "cfn-topics-create.json",
        OrderTopic=topic,
        DeleteTopicsOnDelete="true",
    )
    assert created["Status"] == "SUCCESS", created["Reason"]
    arn = load_event("cfn-topics-create.json")["ResourceProperties"]["ClusterArn"]
    found = created["PhysicalResourceId"]
    assert found == app.adopted_id(arn, topic) != app.physical_id(arn, topic)
    assert "adopted as it is (3 partitions)" in created["Reason"]
    assert created["Data"]["OrderTopic"] == topic

    _, updated = run(
        cluster,
        kafka_broker,
        "cfn-topics-create.json",
        "Update",
        found,
        OrderTopic=topic,
        Partitions="12",
        DeleteTopicsOnDelete="true",
    )
    assert (updated["Status"], updated["PhysicalResourceId"]) == ("SUCCESS", found)
    assert partitions(kafka_broker, topic) == 3  # not ours to grow

    # Re-pointed from another cluster (ExistingClusterArn changed): a new resource, which finds
    # the topic there and adopts it too; CloudFormation then deletes the old id.
    old_cluster = app.physical_id(arn.replace("/orderstream/", "/previous/"), topic)
    _, moved = run(
        cluster, kafka_broker, "cfn-topics-create.json", "Update", old_cluster, OrderTopic=topic
    )
    assert moved["PhysicalResourceId"] == found

    _, deleted = run(
        cluster,
        kafka_broker,
        "cfn-topics-delete.json",
        physical_id=found,
        OrderTopic=topic,
        DeleteTopicsOnDelete="true",
    )
    assert deleted["Status"] == "SUCCESS"
    assert "existed before this stack" in deleted["Reason"]
    assert partitions(kafka_broker, topic) == 3


def test_a_missing_topic_on_a_cluster_you_run_is_created_and_is_ours_to_delete(
    cluster: None, kafka_broker: EmbeddedBroker
) -> None:
    topic = f"order-placed-{uuid.uuid4().hex[:8]}"
    _, created = run(
        cluster, kafka_broker, "cfn-topics-create.json", OrderTopic=topic, Partitions="2"
    )
    arn = load_event("cfn-topics-create.json")["ResourceProperties"]["ClusterArn"]
    assert created["PhysicalResourceId"] == app.physical_id(arn, topic)
    _, deleted = run(
        cluster,
        kafka_broker,
        "cfn-topics-delete.json",
        OrderTopic=topic,
        DeleteTopicsOnDelete="true",
    )
    assert deleted["Reason"] == f"deleted {[topic]}"
    assert partitions(kafka_broker, topic) is None


def test_brokers_we_size_get_three_replicas(cluster: None, kafka_broker: EmbeddedBroker) -> None:
    """ClusterType=provisioned sends ReplicationFactor 3 and MinInsyncReplicas 2 (template)."""
    topic = f"order-placed-{uuid.uuid4().hex[:8]}"
    _, created = run(
        cluster,
        kafka_broker,
        "cfn-topics-create.json",
        OrderTopic=topic,
        ReplicationFactor="3",
        MinInsyncReplicas="2",
    )
    assert created["Status"] == "SUCCESS", created["Reason"]
    assert replicas(kafka_broker, topic) == {3}
    _, impossible = run(
        cluster,
        kafka_broker,
        "cfn-topics-create.json",
        OrderTopic=f"{topic}-x",
        ReplicationFactor="2",
        MinInsyncReplicas="3",
    )
    assert impossible["Status"] == "FAILED"
    assert "above replication factor" in impossible["Reason"]


def produce(broker: EmbeddedBroker, topic: str, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    try:
        for n in range(count):
            producer.send(topic, key=f"k{n}".encode(), value=b'{"order_id": "someone else"}')
            # One record per batch: the embedded broker's latest offset counts a batch of
            # several records as one (Kafka counts records).
            producer.flush()
    finally:
        producer.close()


def existing_topic(broker: EmbeddedBroker, records: int = 0, partitions: int = 2) -> str:
    """A topic someone else made before the stack came."""
    topic = f"order-placed-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
    produce(broker, topic, records)
    return topic


def groups() -> list[str]:
    suffix = uuid.uuid4().hex[:8]
    return [f"order-email-notifier-{suffix}", f"order-s3-archiver-{suffix}"]


def test_a_found_topic_with_unread_records_is_refused_unless_told_to_process_them(
    cluster: None, kafka_broker: EmbeddedBroker
) -> None:
    """Adopting it would mail a confirmation for every order in it: the deploy stops first."""
    topic = existing_topic(kafka_broker, records=3)
    readers = groups()
    _, refused = run(
        cluster, kafka_broker, "cfn-topics-create.json", OrderTopic=topic, ConsumerGroups=readers
    )
    assert refused["Status"] == "FAILED"
    assert "AdoptionRefused" in refused["Reason"]
    assert f"3 for {readers[0]}" in refused["Reason"]
    assert "ExistingTopicRecords=process" in refused["Reason"]
    assert not refused["PhysicalResourceId"].endswith("/adopted")

    _, adopted = run(
        cluster,
        kafka_broker,
        "cfn-topics-create.json",
        OrderTopic=topic,
        ConsumerGroups=readers,
        ExistingTopicRecords="process",
    )
    assert adopted["Status"] == "SUCCESS", adopted["Reason"]
    assert adopted["PhysicalResourceId"].endswith("/adopted")


def test_records_our_groups_have_read_do_not_stop_an_adoption(
    cluster: None, kafka_broker: EmbeddedBroker
) -> None:
    """A stack re-created on the cluster it used before: its groups committed every record."""
    topic = existing_topic(kafka_broker, records=4)
    readers = groups()
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
    try:
        partitions = [TopicPartition(topic, p) for p in range(2)]
        latest = admin.list_partition_offsets(dict.fromkeys(partitions, OffsetSpec.LATEST))
        assert sum(o.offset for o in latest.values()) == 4
        for group in readers:  # as the old stack's pollers left them: everything committed
            done = {p: OffsetAndMetadata(latest[p].offset, None, -1) for p in partitions}
            admin.alter_group_offsets(group, done)
    finally:
        admin.close()
    _, adopted = run(
        cluster, kafka_broker, "cfn-topics-create.json", OrderTopic=topic, ConsumerGroups=readers
    )
    assert adopted["Status"] == "SUCCESS", adopted["Reason"]

    produce(kafka_broker, topic, 1)  # one they have not read: refused again
    _, refused = run(
        cluster, kafka_broker, "cfn-topics-create.json", OrderTopic=topic, ConsumerGroups=readers
    )
    assert f"1 for {readers[0]}" in refused["Reason"]


def lambda_context(**fields: Any) -> Any:
    """devstack's context, which has every attribute of Powertools' LambdaContext type."""
    return LambdaContext(**fields)
