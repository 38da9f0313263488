"""An OrderPlaced through a real broker: produced by our producer, read by a consumer group."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from aws_lambda_powertools.utilities.kafka import ConsumerRecords
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from devstack.broker import BrokerError, EmbeddedBroker
from devstack.msk_event import msk_event
from orderstream import events, kafka_client
from orderstream.events import OrderPlaced, from_record, to_message
from orderstream.models import OrderRequest
from orderstream.topics import TopicSpec, reconcile_topics
from tests.unit.test_models import VALID

pytestmark = pytest.mark.integration

# Tansu joins a group after about half the session timeout: keep it short locally.
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


@pytest.fixture
def topic(kafka_broker: EmbeddedBroker) -> str:
    name = f"order-placed-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
    try:
        assert reconcile_topics(admin, [TopicSpec(name, partitions=3)]).created == [name]
        again = reconcile_topics(admin, [TopicSpec(name, partitions=3)])  # idempotent
        assert (again.created, again.grown) == ([], {})
        [described] = admin.describe_topics([name])
        assert len(described["partitions"]) == 3
    finally:
        admin.close()
    return name


@pytest.fixture
def producer_env(kafka_broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_broker.bootstrap_servers)
    monkeypatch.setenv("KAFKA_SECURITY", "plaintext")
    kafka_client.discard_producer()
    yield
    kafka_client.discard_producer()


@pytest.mark.usefixtures("producer_env")
def test_order_placed_round_trip_through_a_consumer_group(
    kafka_broker: EmbeddedBroker, topic: str
) -> None:
    orders = [OrderRequest.model_validate(VALID).to_order() for _ in range(3)]
    # Two events for the first order: the key must keep them in one partition, in order.
    sent = [OrderPlaced.new(order, f"corr-{i}") for i, order in enumerate([*orders, orders[0]])]
    producer = kafka_client.get_producer()
    assert kafka_client.get_producer() is producer  # one producer per container
    acks = []
    for event in sent:
        message = to_message(event)
        acks.append(
            producer.send(topic, key=message.key, value=message.value, headers=message.headers).get(
                10
            )
        )
    assert all(ack.topic == topic for ack in acks)

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap_servers,
        group_id=f"test-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **FAST_GROUP,
    )
    try:
        received = []
        for _ in range(60):
            for batch in consumer.poll(timeout_ms=500).values():
                received.extend(batch)
            if len(received) >= len(sent):
                break
        consumer.commit()
        committed = {
            p: consumer.committed(TopicPartition(topic, p)) for p in {r.partition for r in received}
        }
    finally:
        consumer.close()

    assert len(received) == len(sent)
    # The way a consumer Lambda sees them: Lambda's MSK event, decoded by Powertools.
    lambda_event = json.loads(
        json.dumps(msk_event(received, "arn:local", kafka_broker.bootstrap_servers))
    )
    decoded = [from_record(r) for r in ConsumerRecords(lambda_event, events.ORDER_EVENTS).records]
    assert sorted(decoded, key=lambda e: e.correlation_id) == sent
    for record in received:
        headers = dict(record.headers)
        assert record.key.decode() == json.loads(record.value)["order"]["order_id"]
        assert headers["event-type"] == b"order-placed"
        assert headers["content-type"] == b"application/json"
    first_order = [r for r in received if r.key == str(orders[0].order_id).encode()]
    assert len(first_order) == 2
    assert first_order[0].partition == first_order[1].partition
    assert first_order[0].offset < first_order[1].offset
    assert [dict(r.headers)["correlation-id"] for r in first_order] == [b"corr-0", b"corr-3"]
    for partition, offset in committed.items():
        last = max(r.offset for r in received if r.partition == partition)
        assert offset == last + 1


def test_a_busy_port_is_a_clear_error(kafka_broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerError, match="already in use"):
        EmbeddedBroker(port=kafka_broker.port).start()
