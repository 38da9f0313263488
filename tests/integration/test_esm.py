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
from devstack.esm import (
    EventSourceMapping,
    MappingConfigError,
    MappingSpec,
    passes_filters,
)
from devstack.functions import Invocation
from devstack.msk_event import MAX_PAYLOAD_BYTES
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


def bisecting(
    run_mapping: Callable[..., EventSourceMapping], topic: str, retries: int
) -> tuple[Function, list[bytes]]:
    """A bisecting mapping whose function fails any batch holding a value with `bad` in it;
    the on-failure objects' bodies are collected."""

    def fails_with_bad(event: dict[str, Any], call: int) -> Invocation | None:
        values = [base64.b64decode(r["value"]) for rs in event["records"].values() for r in rs]
        return failure() if any(b"bad" in v for v in values) else None

    function = Function(fails_with_bad)
    written: list[bytes] = []
    run_mapping(
        spec(
            topic,
            bisect_on_error=True,
            maximum_retry_attempts=retries,
            batching_window_s=1.0,
            on_failure_bucket="dlq",
        ),
        function,
        put_object=lambda b, k, body: written.append(body),
    )
    return function, written


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
    # Committed: the same group starting again gets only what arrives after. The record sent
    # now is the signal that it joined and polled; nothing of the first 25 may come with it.
    before = set(function.offsets())
    again = Function()
    run_mapping(mapping_spec, again)
    produce(kafka_broker, topic, [json.dumps({"n": 25}).encode()], partition=0)
    wait_for(lambda: len(again.offsets()) >= 1)
    [(partition, offset)] = again.offsets()
    assert partition == 0
    assert (partition, offset) not in before
    values = [r["value"] for e in again.events for rs in e["records"].values() for r in rs]
    assert [json.loads(base64.b64decode(v)) for v in values] == [{"n": 25}]


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
    assert key.startswith(f"aws/lambda/{mapping_spec.uuid}/{topic}-1/")
    record = json.loads(body)
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["KafkaBatchInfo"]["recordsInfo"][f"{topic}-1"]["firstRecordOffset"] == "0"
    [[raw]] = json.loads(record["payload"])["records"].values()
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

    _, written = bisecting(run_mapping, topic, retries=0)
    wait_for(lambda: bool(written))
    [dead] = written
    [[raw]] = json.loads(json.loads(dead)["payload"])["records"].values()
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


def test_records_that_arrive_within_the_window_are_one_batch(
    kafka_broker: EmbeddedBroker, topic: str, run_mapping: Callable[..., EventSourceMapping]
) -> None:
    """The window is honoured whole, though a poller waits for records in short slices (to see
    a stop quickly): records sent one by one inside it reach the function in one batch."""
    function = Function()
    run_mapping(spec(topic, batch_size=100, batching_window_s=8.0), function)
    for n in range(4):  # spread over about a second: many poll slices, well inside the window
        produce(kafka_broker, topic, [f"r{n}".encode()], partition=0)
        time.sleep(0.3)
    wait_for(lambda: len(function.offsets()) >= 4)
    assert len(function.events) == 1
    assert sorted(o for _, o in function.offsets()) == list(range(4))


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
        "ProvisionedPollerConfig": {"MinimumPollers": 1, "MaximumPollers": 3},
    }
    parsed = MappingSpec.from_event("Fn", "OrderPlaced", props)
    assert parsed.maximum_pollers == 3
    assert parsed.on_failure_bucket == "dead-letters"
    assert parsed.report_batch_item_failures is True
    assert parsed.filters == [{"value": {"a": [1]}}]
    assert (parsed.batch_size, parsed.batching_window_s, parsed.maximum_retry_attempts) == (
        100,
        1.0,
        10,
    )


BASE_PROPS: dict[str, Any] = {"Stream": "arn:c", "Topics": ["t"]}


@pytest.mark.parametrize(
    ("props", "refusal"),
    [
        ({"MaximumRetryAttempts": 3}, "MaximumRetryAttempts need provisioned mode"),
        ({"BisectBatchOnFunctionError": True}, "BisectBatchOnFunctionError need provisioned"),
        ({"FunctionResponseTypes": ["ReportBatchItemFailures"]}, "FunctionResponseTypes need"),
        ({"BatchSize": 10_001}, "BatchSize must be 1-10000"),
        ({"MaximumRecordAgeInSeconds": 59}, "MaximumRecordAgeInSeconds must be 60-604800 or -1"),
        ({"MaximumRetryAttempts": -2}, "MaximumRetryAttempts must be 0-10000 or -1"),
        ({"ProvisionedPollerConfig": {"MinimumPollers": 3, "MaximumPollers": 2}}, "pollers"),
    ],
)
def test_mappings_lambda_would_refuse_are_refused(props: dict[str, Any], refusal: str) -> None:
    with pytest.raises(MappingConfigError, match=refusal):
        MappingSpec.from_event("Fn", "E", BASE_PROPS | props)


def test_infinite_retries_with_a_destination_mean_ten() -> None:
    provisioned = {"ProvisionedPollerConfig": {"MinimumPollers": 1, "MaximumPollers": 1}}
    destination = {"DestinationConfig": {"OnFailure": {"Destination": "arn:aws:s3:::dlq"}}}
    assert MappingSpec.from_event("Fn", "E", BASE_PROPS | provisioned).retries == -1
    assert MappingSpec.from_event("Fn", "E", BASE_PROPS | provisioned | destination).retries == 10


@pytest.mark.parametrize(
    "answer",
    [
        ["not a dict"],
        [{"itemIdentifier": "order-placed-0:1"}],
        [{"itemIdentifier": {"partition": "{topic}-0"}}],  # no offset
        [{"itemIdentifier": {"partition": "{topic}-0", "offset": True}}],
        [{"itemIdentifier": {"partition": "{topic}-0", "offset": 99}}],  # not in the event
        [{"itemIdentifier": {"partition": "{topic}-2", "offset": 0}}],  # nor this partition
        [{"itemIdentifier": {"partition": "{topic}-0", "topic-partition": "x-0", "offset": 0}}],
        [{"itemIdentifier": {"partition": ["{topic}-0"], "offset": 0}}],  # unhashable
        [{"itemIdentifier": {"topic-partition": {"t": 0}, "offset": 0}}],
        "batchItemFailures is not a list",
    ],
)
def test_a_response_naming_what_the_event_did_not_hold_fails_the_whole_batch(
    kafka_broker: EmbeddedBroker,
    topic: str,
    run_mapping: Callable[..., EventSourceMapping],
    answer: Any,
) -> None:
    """The guide: an identifier not present in the invoked event is a failure of the entire
    batch; each such answer counts against MaximumRetryAttempts, then the destination."""
    produce(kafka_broker, topic, [b'{"n": 0}', b'{"n": 1}'], partition=0)
    failures = json.loads(json.dumps(answer).replace("{topic}", topic))
    function = Function(
        lambda event, call: Invocation("r", True, {"batchItemFailures": failures}, None, 1.0, 0.0)
    )
    written: list[bytes] = []
    run_mapping(
        spec(
            topic,
            report_batch_item_failures=True,
            maximum_retry_attempts=2,
            batching_window_s=1.0,
            on_failure_bucket="dlq",
        ),
        function,
        put_object=lambda b, k, body: written.append(body),
    )
    wait_for(lambda: bool(written))
    assert len(function.events) == 3  # whole batch each time: the first try and 2 retries
    assert all(len(e["records"][f"{topic}-0"]) == 2 for e in function.events)
    assert json.loads(written[0])["KafkaBatchInfo"]["batchSize"] == 2


@pytest.mark.parametrize("key", ["partition", "topic-partition"])
def test_either_identifier_key_retries_only_from_the_reported_offset(
    kafka_broker: EmbeddedBroker,
    topic: str,
    run_mapping: Callable[..., EventSourceMapping],
    key: str,
) -> None:
    produce(kafka_broker, topic, [json.dumps({"n": i}).encode() for i in range(4)], partition=1)

    def fail_offset_2_once(event: dict[str, Any], call: int) -> Invocation | None:
        if call > 1:
            return None
        item = {key: f"{topic}-1", "offset": 2}
        return Invocation("r", True, {"batchItemFailures": [{"itemIdentifier": item}]}, None, 1, 0)

    function = Function(fail_offset_2_once)
    run_mapping(spec(topic, report_batch_item_failures=True, batching_window_s=1.0), function)
    wait_for(lambda: len(function.events) >= 2)
    assert [r["offset"] for r in function.events[1]["records"][f"{topic}-1"]] == [2, 3]


def test_records_older_than_the_maximum_age_skip_the_function_for_the_destination(
    kafka_broker: EmbeddedBroker, topic: str, run_mapping: Callable[..., EventSourceMapping]
) -> None:
    produce(kafka_broker, topic, [b'{"old": 1}', b'{"old": 2}'], partition=0)
    function = Function()
    written: list[bytes] = []
    run_mapping(
        spec(topic, maximum_record_age_s=60, on_failure_bucket="dlq", batching_window_s=1.0),
        function,
        put_object=lambda b, k, body: written.append(body),
        clock=lambda: time.time() + 3600,  # an hour later: every record is past 60 s
    )
    wait_for(lambda: bool(written))
    assert function.events == []
    record = json.loads(written[0])
    assert record["requestContext"]["condition"] == "RecordAgeExceeded"
    assert record["responseContext"] is None
    assert record["KafkaBatchInfo"]["batchSize"] == 2


def test_bisecting_does_not_count_against_the_retries(
    kafka_broker: EmbeddedBroker, topic: str, run_mapping: Callable[..., EventSourceMapping]
) -> None:
    values = [b'{"ok": 1}', b'{"ok": 2}', b'{"ok": 3}', b'{"bad": 4}']
    produce(kafka_broker, topic, values, partition=0)

    function, written = bisecting(run_mapping, topic, retries=1)
    wait_for(lambda: bool(written))
    sizes = [sum(len(rs) for rs in e["records"].values()) for e in function.events]
    # 4 fails, splits to 2+2 (no retry used); the bad half splits to 1+1; the bad record then
    # gets its one retry. A split that counted would have exhausted it at the first half.
    assert sizes == [4, 2, 2, 1, 1, 1]
    [[raw]] = json.loads(json.loads(written[0])["payload"])["records"].values()
    assert base64.b64decode(raw["value"]) == b'{"bad": 4}'


def test_pollers_share_the_partitions_and_partitions_that_appear_later_are_picked_up(
    kafka_broker: EmbeddedBroker, run_mapping: Callable[..., EventSourceMapping]
) -> None:
    """Partitions that appear in the metadata later are assigned and polled. Tansu does not
    implement CreatePartitions, so they appear here as a second topic of the mapping's, created
    once it runs; the coordinator sees both the same way: the partition list changed."""
    first, second = (f"esm-grow-{uuid.uuid4().hex[:8]}" for _ in range(2))
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
    try:
        reconcile_topics(admin, [TopicSpec(first, 1)])
        function = Function()
        mapping = run_mapping(
            spec(first, topics=[first, second], maximum_pollers=2), function, refresh_s=0.2
        )
        wait_for(lambda: sum(map(len, mapping.assignment().values())) == 1)
        assert len(mapping.assignment()) == 1  # capped at the partition count
        reconcile_topics(admin, [TopicSpec(second, 2)])
    finally:
        admin.close()
    wait_for(lambda: sum(map(len, mapping.assignment().values())) == 3)
    owners = mapping.assignment()
    assert len(owners) == 2
    assert all(owners.values())
    produce(kafka_broker, first, [b'{"n": 0}'], partition=0)
    produce(kafka_broker, second, [b'{"n": 1}', b'{"n": 2}'])
    wait_for(lambda: len(function.offsets()) >= 3)
    delivered = sorted(
        (r["topic"], r["partition"])
        for e in function.events
        for rs in e["records"].values()
        for r in rs
    )
    assert delivered == sorted([(first, 0), (second, 0), (second, 1)])


def test_a_rebalance_mid_invocation_gives_two_invocations_the_same_records(
    kafka_broker: EmbeddedBroker, topic: str, run_mapping: Callable[..., EventSourceMapping]
) -> None:
    """As in AWS: the new owner starts from the committed offset while the old one is still
    invoking; the old owner's commit is refused; nothing is lost, records come twice."""
    produce(kafka_broker, topic, [json.dumps({"n": i}).encode() for i in range(3)], partition=0)
    release = threading.Event()
    in_flight = threading.Semaphore(0)

    def first_call_hangs(event: dict[str, Any], call: int) -> Invocation | None:
        if call == 1:
            in_flight.release()
            release.wait(20)
        return None

    function = Function(first_call_hangs)
    mapping = run_mapping(
        spec(topic, maximum_pollers=3, batching_window_s=0.5), function, refresh_s=0.2
    )
    assert in_flight.acquire(timeout=30)
    mapping.rebalance()
    wait_for(lambda: len([e for e in function.events if f"{topic}-0" in e["records"]]) >= 2)
    release.set()
    wait_for(lambda: mapping.totals.refused_commits >= 1)
    first, second = [
        [r["offset"] for r in e["records"][f"{topic}-0"]]
        for e in function.events
        if f"{topic}-0" in e["records"]
    ][:2]
    assert first == second == [0, 1, 2]
    mapping.stop()
    again = Function()
    run_mapping(spec(topic, group_id=mapping.spec.group_id), again)
    produce(kafka_broker, topic, [b'{"n": 3}'], partition=0)
    wait_for(lambda: bool(again.offsets()))
    assert again.offsets() == [(0, 3)]  # committed past 2 by the new owner, never behind
