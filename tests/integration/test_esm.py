"""The event-source-mapping emulator against the real broker, with a recording function."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from devstack.broker import EmbeddedBroker
from devstack.esm import MAX_PAYLOAD_BYTES, EventSourceMapping, MappingSpec, passes_filters
from devstack.functions import Invocation
from orderstream.topics import TopicSpec, reconcile_topics

pytestmark = pytest.mark.integration


class Function:
    """Records every event it is invoked with; `behaviour` decides each answer."""

    def __init__(
        self, behaviour: Callable[[dict[str, Any], int], Invocation | None] | None = None
    ) -> None:
        self.events: list[dict[str, Any]] = []
        self.behaviour = behaviour
        self.lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> Invocation:
        with self.lock:
            self.events.append(event)
            call = len(self.events)
        answer = self.behaviour(event, call) if self.behaviour else None
        return answer or Invocation("r", True, None, None, 1.0, 0.0)

    def offsets(self) -> list[tuple[int, int]]:
        with self.lock:
            return [
                (r["partition"], r["offset"])
                for e in self.events
                for rs in e["records"].values()
                for r in rs
            ]


def failure(message: str = "boom") -> Invocation:
    return Invocation(
        "r", False, None, {"errorType": "RuntimeError", "errorMessage": message}, 1.0, 0.0
    )


@pytest.fixture
def topic(kafka_broker: EmbeddedBroker) -> str:
    name = f"esm-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
    try:
        reconcile_topics(admin, [TopicSpec(name, 3)])
    finally:
        admin.close()
    return name


def produce(
    broker: EmbeddedBroker, topic: str, values: list[bytes], partition: int | None = None
) -> None:
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, max_request_size=8 * 1024 * 1024
    )
    try:
        for i, value in enumerate(values):
            producer.send(
                topic,
                value=value,
                key=f"k{i}".encode(),
                partition=partition if partition is not None else i % 3,
            )
        producer.flush(10)
    finally:
        producer.close()


def spec(topic: str, **overrides: Any) -> MappingSpec:
    base: dict[str, Any] = {
        "function": "Fn",
        "name": "OrderPlaced",
        "event_source_arn": "arn:aws:kafka:eu-west-1:123456789012:cluster/local/x",
        "topics": [topic],
        "group_id": f"group-{uuid.uuid4().hex[:6]}",
        "starting_position": "TRIM_HORIZON",
        "batch_size": 10,
        "batching_window_s": 0.2,
    }
    return MappingSpec(**(base | overrides))


@pytest.fixture
def run_mapping(kafka_broker: EmbeddedBroker) -> Iterator[Callable[..., EventSourceMapping]]:
    started: list[EventSourceMapping] = []

    def start(mapping_spec: MappingSpec, function: Function, **kwargs: Any) -> EventSourceMapping:
        mapping = EventSourceMapping(
            mapping_spec,
            kafka_broker.bootstrap_servers,
            function,
            log=lambda _: None,
            retry_backoff_s=0.01,
            **kwargs,
        )
        started.append(mapping.start())
        return mapping

    yield start
    for mapping in started:
        mapping.stop()


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_every_record_is_delivered_once_in_lambdas_shape_and_committed(
    kafka_broker: EmbeddedBroker, topic: str, run_mapping: Callable[..., EventSourceMapping]
) -> None:
    produce(kafka_broker, topic, [json.dumps({"n": i}).encode() for i in range(25)])
    function = Function()
    mapping_spec = spec(topic)
    mapping = run_mapping(mapping_spec, function)
    wait_for(lambda: len(function.offsets()) >= 25)
    mapping.stop()
    assert sorted(function.offsets()) == sorted({*function.offsets()})  # no record twice
    assert len(function.offsets()) == 25
    for event in function.events:
        assert event["eventSource"] == "aws:kafka"
        assert sum(len(rs) for rs in event["records"].values()) <= 10  # BatchSize
        for group, records in event["records"].items():
            assert all(group == f"{r['topic']}-{r['partition']}" for r in records)
    # Committed: the same group starting again gets nothing.
    again = Function()
    run_mapping(mapping_spec, again)
    time.sleep(3)  # several batching windows of empty polls
    assert again.events == []


def test_failures_are_retried_then_sent_to_the_destination(
    kafka_broker: EmbeddedBroker, topic: str, run_mapping: Callable[..., EventSourceMapping]
) -> None:
    produce(kafka_broker, topic, [b'{"poison": true}'], partition=1)
    function = Function(lambda event, call: failure())
    written: list[tuple[str, str, bytes]] = []
    mapping_spec = spec(topic, maximum_retry_attempts=2, on_failure_bucket="dead-letters")
    mapping = run_mapping(
        mapping_spec, function, put_object=lambda b, k, body: written.append((b, k, body))
    )
    wait_for(lambda: bool(written))
    mapping.stop()
    assert len(function.events) == 3  # the first attempt and 2 retries
    [(bucket, key, body)] = written
    assert bucket == "dead-letters"
    assert key.startswith(f"aws/lambda/Fn-OrderPlaced/{topic}-1/")
    record = json.loads(body)
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert record["KafkaBatchInfo"]["partition"] == 1
    [[raw]] = record["payload"]["records"].values()
    assert base64.b64decode(raw["value"]) == b'{"poison": true}'
    assert mapping.totals.failed_to_destination == 1


def test_reported_item_failures_retry_from_the_failed_offset(
    kafka_broker: EmbeddedBroker, topic: str, run_mapping: Callable[..., EventSourceMapping]
) -> None:
    produce(kafka_broker, topic, [json.dumps({"n": i}).encode() for i in range(6)], partition=0)

    def fail_third_once(event: dict[str, Any], call: int) -> Invocation | None:
        if call == 1:
            [records] = event["records"].values()
            third = records[2]
            failures = [
                {"itemIdentifier": {"partition": f"{third['topic']}-0", "offset": third["offset"]}}
            ]
            return Invocation("r", True, {"batchItemFailures": failures}, None, 1.0, 0.0)
        return None

    function = Function(fail_third_once)
    run_mapping(spec(topic, report_batch_item_failures=True, batching_window_s=1.0), function)
    wait_for(lambda: len(function.events) >= 2)
    first, second = (
        [r["offset"] for rs in e["records"].values() for r in rs] for e in function.events[:2]
    )
    assert len(first) == 6
    assert second == first[2:]  # resumes at the reported offset, not before


def test_bisect_isolates_the_record_that_fails(
    kafka_broker: EmbeddedBroker, topic: str, run_mapping: Callable[..., EventSourceMapping]
) -> None:
    produce(
        kafka_broker, topic, [b'{"ok": 1}', b'{"ok": 2}', b'{"bad": 3}', b'{"ok": 4}'], partition=2
    )

    def fails_with_bad(event: dict[str, Any], call: int) -> Invocation | None:
        values = [base64.b64decode(r["value"]) for rs in event["records"].values() for r in rs]
        return failure() if any(b"bad" in v for v in values) else None

    function = Function(fails_with_bad)
    written: list[bytes] = []
    run_mapping(
        spec(
            topic,
            bisect_on_error=True,
            maximum_retry_attempts=0,
            batching_window_s=1.0,
            on_failure_bucket="dlq",
        ),
        function,
        put_object=lambda b, k, body: written.append(body),
    )
    wait_for(lambda: bool(written))
    [dead] = written
    [[raw]] = json.loads(dead)["payload"]["records"].values()
    assert base64.b64decode(raw["value"]) == b'{"bad": 3}'


def test_a_mapping_stopped_mid_invocation_commits_nothing(
    kafka_broker: EmbeddedBroker, topic: str, run_mapping: Callable[..., EventSourceMapping]
) -> None:
    produce(kafka_broker, topic, [b'{"n": 1}', b'{"n": 2}'], partition=0)
    invoked, release = threading.Event(), threading.Event()

    def hang(event: dict[str, Any], call: int) -> Invocation | None:
        invoked.set()
        release.wait(10)
        return failure("interrupted")

    mapping_spec = spec(topic)
    first = run_mapping(mapping_spec, Function(hang))
    assert invoked.wait(30)
    threading.Timer(0.2, release.set).start()  # the invocation ends while the mapping stops
    first.stop()
    again = Function()
    run_mapping(mapping_spec, again)
    wait_for(lambda: len(again.offsets()) >= 2)
    assert sorted(o for _, o in again.offsets()) == [0, 1]


def test_batches_stay_under_the_payload_cap(
    kafka_broker: EmbeddedBroker, topic: str, run_mapping: Callable[..., EventSourceMapping]
) -> None:
    produce(kafka_broker, topic, [b"x" * 1_500_000 for _ in range(6)], partition=0)
    function = Function()
    run_mapping(spec(topic, batch_size=100, batching_window_s=1.0), function)
    wait_for(lambda: len(function.offsets()) >= 6)
    assert len(function.events) >= 2
    for event in function.events:
        assert len(json.dumps(event)) <= MAX_PAYLOAD_BYTES
    assert sorted(o for _, o in function.offsets()) == list(range(6))


def test_filter_patterns_follow_lambdas_rules() -> None:
    def record(value: Any) -> dict[str, Any]:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return {"topic": "t", "partition": 0, "offset": 1, "value": base64.b64encode(raw).decode()}

    eur = [{"value": {"order": {"currency": ["EUR"]}}}]
    assert passes_filters(eur, record({"order": {"currency": "EUR"}}))
    assert not passes_filters(eur, record({"order": {"currency": "USD"}}))
    assert not passes_filters(eur, record(b"not json"))
    assert passes_filters([], record(b"not json"))
    assert passes_filters([{"value": {"total": [{"numeric": [">", 100]}]}}], record({"total": 150}))
    assert not passes_filters(
        [{"value": {"total": [{"numeric": [">", 100]}]}}], record({"total": 50})
    )
    assert passes_filters([{"value": {"x": [{"exists": False}]}}], record({"y": 1}))
    assert passes_filters([{"value": {"id": [{"prefix": "ord-"}]}}], record({"id": "ord-7"}))
    assert passes_filters([{"value": {"t": [{"anything-but": ["test"]}]}}], record({"t": "prod"}))
    assert passes_filters([{"partition": [0]}], record({}))


def test_mapping_spec_reads_the_templates_event() -> None:
    props = {
        "Stream": "arn:c",
        "Topics": ["order-placed"],
        "ConsumerGroupId": "g",
        "StartingPosition": "TRIM_HORIZON",
        "BatchSize": 100,
        "MaximumBatchingWindowInSeconds": 1,
        "MaximumRetryAttempts": 10,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "DestinationConfig": {
            "OnFailure": {"Type": "S3", "Destination": "arn:aws:s3:::dead-letters"}
        },
        "FilterCriteria": {"Filters": [{"Pattern": '{"value": {"a": [1]}}'}]},
    }
    parsed = MappingSpec.from_event("Fn", "OrderPlaced", props)
    assert parsed.on_failure_bucket == "dead-letters"
    assert parsed.report_batch_item_failures is True
    assert parsed.filters == [{"value": {"a": [1]}}]
    assert (parsed.batch_size, parsed.batching_window_s, parsed.maximum_retry_attempts) == (
        100,
        1.0,
        10,
    )
