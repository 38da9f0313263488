"""POST /orders against the real embedded broker: what is accepted is on the topic, once.

DynamoDB is moto in-process; Kafka is Tansu. Messages are counted by reading them with a
group-less consumer (Tansu's end offsets are not reliable, and a group join costs seconds).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext as PowertoolsLambdaContext
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from devstack.broker import EmbeddedBroker
from devstack.ports import free_port
from functions.order_api import app
from orderstream import events, kafka_client, settings
from orderstream.models import OrderRequest
from orderstream.publishing import IntakeResult, OrderInProgressError
from orderstream.topics import TopicSpec, reconcile_topics
from tests.fakes import LambdaContext
from tests.unit.test_order_api import SAMPLE_BODY, Answer, api_event, invoke, order_body

pytestmark = pytest.mark.integration

PARTITIONS = 3
# Tansu waits for open connections on SIGTERM (our producer holds one); the data is in memory
# and thrown away, so a short grace period before SIGKILL loses nothing.
BROKER_STOP_S = 0.5


def create_topic(bootstrap_servers: str) -> str:
    name = f"order-placed-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        reconcile_topics(admin, [TopicSpec(name, partitions=PARTITIONS)])
    finally:
        admin.close()
    return name


def read_all(bootstrap_servers: str, topic: str, expected: int) -> list[Any]:
    """Every record on the topic: read until `expected` arrived, then a little longer so
    that a surplus record (a duplicate) would be seen too."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        consumer.seek_to_beginning()
        records: list[Any] = []
        quiet_polls = 0
        for _ in range(100):
            batch = [r for rs in consumer.poll(timeout_ms=200).values() for r in rs]
            records.extend(batch)
            quiet_polls = 0 if batch else quiet_polls + 1
            if len(records) >= expected and quiet_polls >= 3:
                break
        return records
    finally:
        consumer.close()


@pytest.fixture
def broker_env(idempotency_table: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(settings.KAFKA_SECURITY, "plaintext")
    monkeypatch.setenv(settings.KAFKA_SEND_TIMEOUT_MS, "1500")
    kafka_client.discard_producer()
    yield
    kafka_client.discard_producer()


@pytest.fixture
def topic(kafka_broker: EmbeddedBroker, broker_env: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh topic per test on the session's broker, so counts never see other tests."""
    monkeypatch.setenv(settings.KAFKA_BOOTSTRAP_SERVERS, kafka_broker.bootstrap_servers)
    name = create_topic(kafka_broker.bootstrap_servers)
    monkeypatch.setenv(settings.ORDER_TOPIC, name)
    return name


def context() -> PowertoolsLambdaContext:
    return cast("PowertoolsLambdaContext", LambdaContext())


def new_order() -> dict[str, Any]:
    return order_body(order_id=str(uuid.uuid4()))


def test_an_accepted_order_is_on_the_topic_with_key_headers_and_value(
    kafka_broker: EmbeddedBroker, topic: str
) -> None:
    body = new_order()
    answer = invoke(api_event(body, headers={"X-Correlation-Id": "checkout-7"}))

    assert answer.status == 202
    [record] = read_all(kafka_broker.bootstrap_servers, topic, expected=1)
    assert answer.body == {
        "order_id": body["order_id"],
        "status": "accepted",
        "topic": topic,
        "partition": record.partition,
        "offset": record.offset,
    }
    assert record.key == body["order_id"].encode()
    assert dict(record.headers) == {
        events.HEADER_EVENT_TYPE: b"order-placed",
        events.HEADER_SCHEMA_VERSION: b"1",
        events.HEADER_CORRELATION_ID: b"checkout-7",
        events.HEADER_CONTENT_TYPE: b"application/json",
    }
    event = events.from_bytes(record.value, record.key)
    assert event.correlation_id == "checkout-7"
    assert event.order == OrderRequest.model_validate(body).to_order()
    assert json.loads(record.value)["order"]["total"] == "52.40"


def test_unreachable_broker_is_a_503_and_the_retry_is_published_once(
    broker_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nothing listens here yet
    monkeypatch.setenv(settings.KAFKA_BOOTSTRAP_SERVERS, f"127.0.0.1:{port}")
    body = new_order()

    refused = invoke(api_event(body))
    assert refused.status == 503
    assert refused.body["error"] == "unavailable"
    assert int(refused.headers["retry-after"]) > 0

    broker = EmbeddedBroker(port=port).start()
    try:
        monkeypatch.setenv(settings.ORDER_TOPIC, create_topic(broker.bootstrap_servers))
        retried = invoke(api_event(body))
        replayed = invoke(api_event(body))
        records = read_all(broker.bootstrap_servers, retried.body["topic"], expected=1)
    finally:
        broker.stop(timeout_s=BROKER_STOP_S)

    assert retried.status == 202  # no idempotency record was left behind by the 503
    assert replayed.body == retried.body
    assert [r.key for r in records] == [body["order_id"].encode()]


def test_a_broker_lost_after_connecting_is_a_503_and_a_new_producer_recovers(
    broker_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = EmbeddedBroker().start()
    try:
        monkeypatch.setenv(settings.KAFKA_BOOTSTRAP_SERVERS, broker.bootstrap_servers)
        monkeypatch.setenv(settings.ORDER_TOPIC, create_topic(broker.bootstrap_servers))
        assert invoke(api_event(new_order())).status == 202
        port = broker.port
        broker.stop(timeout_s=BROKER_STOP_S)

        body = new_order()
        assert invoke(api_event(body)).status == 503  # delivery timed out on a known topic

        broker = EmbeddedBroker(port=port).start()  # memory storage: the topic must be remade
        monkeypatch.setenv(settings.ORDER_TOPIC, create_topic(broker.bootstrap_servers))
        retried = invoke(api_event(body))
        records = read_all(broker.bootstrap_servers, retried.body["topic"], expected=1)
    finally:
        broker.stop(timeout_s=BROKER_STOP_S)

    assert retried.status == 202
    assert [r.key for r in records] == [body["order_id"].encode()]


_one_request_at_a_time = threading.Lock()


def invoke_in_turn(body: dict[str, Any]) -> Answer:
    """The handler called from many client threads, one request at a time, as a container
    takes them: it must not run concurrently in one process, which Lambda never does."""
    with _one_request_at_a_time:
        return invoke(api_event(body))


def test_fifty_concurrent_orders_are_fifty_messages(
    kafka_broker: EmbeddedBroker, topic: str
) -> None:
    bodies = [new_order() for _ in range(50)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(invoke_in_turn, bodies))

    assert [a.status for a in answers] == [202] * 50
    records = read_all(kafka_broker.bootstrap_servers, topic, expected=50)
    assert len(records) == 50
    where = {r.key.decode(): (r.partition, r.offset) for r in records}
    assert set(where) == {b["order_id"] for b in bodies}
    for answer in answers:  # each answer names its own order's place, not a neighbour's
        assert where[answer.body["order_id"]] == (answer.body["partition"], answer.body["offset"])


def test_fifty_orders_published_in_parallel_share_one_producer(
    kafka_broker: EmbeddedBroker, topic: str
) -> None:
    """Below the handler (which takes one request at a time) the publish path is truly
    concurrent: one lazily built producer, shared by every thread, loses nothing."""
    orders = [OrderRequest.model_validate(new_order()) for _ in range(50)]
    intake = app.order_intake()
    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(
            pool.map(
                lambda o: intake.accept(
                    o, correlation_id=f"load-{o.order_id}", lambda_context=context()
                ),
                orders,
            )
        )

    assert not any(o.replayed for o in outcomes)
    records = read_all(kafka_broker.bootstrap_servers, topic, expected=50)
    assert sorted(r.key.decode() for r in records) == sorted(str(o.order_id) for o in orders)
    assert kafka_client.get_producer() is kafka_client.get_producer()


def test_the_same_order_sent_five_times_is_one_message(
    kafka_broker: EmbeddedBroker, topic: str
) -> None:
    body = new_order()
    with ThreadPoolExecutor(max_workers=5) as pool:
        answers: list[Answer] = list(pool.map(lambda _: invoke_in_turn(body), range(5)))

    assert [a.status for a in answers] == [202] * 5
    assert all(a.body == answers[0].body for a in answers)
    records = read_all(kafka_broker.bootstrap_servers, topic, expected=1)
    assert [r.key for r in records] == [body["order_id"].encode()]


def test_the_same_order_racing_itself_is_published_once(
    kafka_broker: EmbeddedBroker, topic: str
) -> None:
    """Five simultaneous publishes of one order: one wins, the rest replay or are told the
    order is in progress; never a second message."""
    order = OrderRequest.model_validate({**SAMPLE_BODY, "order_id": str(uuid.uuid4())})
    intake = app.order_intake()

    def attempt(_: int) -> IntakeResult | Exception:
        try:
            return intake.accept(order, correlation_id="race", lambda_context=context())
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(attempt, range(5)))

    published = [r for r in results if isinstance(r, IntakeResult) and not r.replayed]
    assert len(published) == 1
    others = [r for r in results if r not in published]
    assert all(
        (isinstance(r, IntakeResult) and r.accepted == published[0].accepted)
        or isinstance(r, OrderInProgressError)
        for r in others
    )
    records = read_all(kafka_broker.bootstrap_servers, topic, expected=1)
    assert [r.key for r in records] == [str(order.order_id).encode()]
