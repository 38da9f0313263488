"""The topic provisioner end to end: a real broker, a real HTTP response URL, the real handler.

It calls no AWS API (the bootstrap string arrives as a property), so nothing is stubbed.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kafka import KafkaAdminClient

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
    _: None, broker: EmbeddedBroker, name: str, **props: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    event = load_event(name)
    event["ResourceProperties"].update({"BootstrapServers": broker.bootstrap_servers, **props})
    arn = event["ResourceProperties"]["ClusterArn"]
    if event["RequestType"] == "Delete":
        event["PhysicalResourceId"] = app.physical_id(
            arn, event["ResourceProperties"]["OrderTopic"]
        )
    with recording_http_server() as (url, received):
        event["ResponseURL"] = url
        result = app.lambda_handler(event, LambdaContext(timeout_ms=60_000))
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

    # Create again (a retried invocation) and an Update with the same count change nothing.
    _, again = run(cluster, kafka_broker, "cfn-topics-create.json", OrderTopic=topic)
    assert (again["Status"], again["Reason"]) == ("SUCCESS", "no change")
    assert again["PhysicalResourceId"] == created["PhysicalResourceId"]

    _, shrink = run(
        cluster, kafka_broker, "cfn-topics-create.json", OrderTopic=topic, Partitions="2"
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
        assert app.lambda_handler(event, LambdaContext()) == {"Status": "FAILED"}
    body = json.loads(received[0].body)
    assert body["Status"] == "FAILED"
    assert "BootstrapServers" in body["Reason"]
