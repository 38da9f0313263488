"""The order-placed event: Kafka wire format, the way back from an MSK record, and rejections."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from aws_lambda_powertools.utilities.kafka import ConsumerRecords
from aws_lambda_powertools.utilities.kafka.consumer_records import ConsumerRecordRecords
from aws_lambda_powertools.utilities.kafka.exceptions import KafkaConsumerDeserializationError
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from devstack.msk_event import msk_event
from orderstream import events
from orderstream.events import (
    InvalidEventError,
    OrderPlaced,
    describe,
    from_bytes,
    from_record,
    to_message,
)
from orderstream.models import OrderRequest
from tests.strategies import order_bodies
from tests.unit.test_models import VALID


class Record:
    """Just the fields of a kafka-python ConsumerRecord that Lambda's event carries."""

    def __init__(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self.topic, self.partition, self.offset = "order-placed", 3, 1234
        self.timestamp, self.timestamp_type = 1_795_615_328_000, 0
        self.key, self.value, self.headers = key, value, headers


def through_lambda(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> Any:
    """The record as a consumer Lambda sees it: MSK event JSON, decoded by Powertools."""
    event = json.loads(json.dumps(msk_event([Record(key, value, headers)], "arn", "b:9098")))
    return next(ConsumerRecords(event, schema_config=events.ORDER_EVENTS).records)


def placed(body: dict[str, Any] = VALID, correlation_id: str = "req-1") -> OrderPlaced:
    return OrderPlaced.new(OrderRequest.model_validate(body).to_order(), correlation_id)


def test_message_has_key_compact_value_and_headers() -> None:
    event = placed(correlation_id="abc-123")
    message = to_message(event)
    assert message.key == str(event.order.order_id).encode()
    assert b" " not in message.value.replace(b"Ada Lovelace", b"").replace(
        b"Analytical Engine notes", b""
    )
    assert json.loads(message.value)["event_type"] == "order-placed"
    assert dict(message.headers) == {
        "event-type": b"order-placed",
        "schema-version": b"1",
        "correlation-id": b"abc-123",
        "content-type": b"application/json",
    }


@pytest.fixture(params=["UTC", "America/New_York"])
def local_zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The machine's own zone: Lambda's is UTC, a developer's laptop's often is not."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def test_occurred_at_is_normalised_to_utc(local_zone: str) -> None:
    local = datetime(2026, 11, 25, 15, 0, tzinfo=timezone(timedelta(hours=1)))
    event = OrderPlaced.new(OrderRequest.model_validate(VALID).to_order(), "c", occurred_at=local)
    assert event.occurred_at.tzinfo == UTC
    assert json.loads(to_message(event).value)["occurred_at"] == "2026-11-25T14:00:00Z"


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        OrderPlaced.new(
            OrderRequest.model_validate(VALID).to_order(), "c", occurred_at=datetime(2026, 1, 1)
        )


@given(order_bodies(max_items=5), st.from_regex(r"[\x21-\x7e]{1,128}", fullmatch=True))
def test_round_trip_through_an_msk_event(body: dict[str, Any], correlation_id: str) -> None:
    event = placed(body, correlation_id)
    message = to_message(event)
    assert from_record(through_lambda(message.key, message.value, message.headers)) == event
    assert from_bytes(message.value, message.key) == event


def test_a_null_key_is_tolerated() -> None:
    event = placed()
    message = to_message(event)
    assert from_record(through_lambda(None, message.value, message.headers)) == event


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"k", b"\x89PNG\r\n not json", "value is not UTF-8 JSON"),
        (b"k", b"\xff\xfe{}", "value is not UTF-8 JSON"),
        (b"k", b"[1, 2]", "not a valid order-placed event"),
        (b"k", b'{"event_type": "order-cancelled"}', "event_type"),
        (b"\xff\xfe", None, "key is not UTF-8"),
        (b"some-other-order", None, "does not match order_id"),
    ],
)
def test_records_that_are_not_events_are_rejected_with_a_reason(
    key: bytes, value: bytes | None, reason: str
) -> None:
    good = to_message(placed())
    record = through_lambda(key, value if value is not None else good.value, good.headers)
    with pytest.raises(InvalidEventError) as info:
        from_record(record)
    assert reason in info.value.reason


def test_a_tampered_total_is_rejected() -> None:
    payload = json.loads(to_message(placed()).value)
    payload["order"]["total"] = "0.00"
    with pytest.raises(InvalidEventError, match=r"order\.total|does not equal"):
        from_bytes(json.dumps(payload).encode(), None)


@given(st.binary(max_size=200), st.one_of(st.none(), st.binary(max_size=60)))
def test_arbitrary_bytes_never_escape_as_another_exception(value: bytes, key: bytes | None) -> None:
    with pytest.raises(InvalidEventError):
        from_record(through_lambda(key, value, [("x", b"\x00\xff")]))


def test_event_ids_are_unique() -> None:
    assert len({placed().event_id for _ in range(5)}) == 5
    assert isinstance(placed().event_id, uuid.UUID)


def test_msk_event_shape_matches_lambda() -> None:
    event = msk_event([Record(None, b"{}", [("h", b"ab")])], "arn:x", "b1:9098,b2:9098")
    record = event["records"]["order-placed-3"][0]
    assert event["eventSource"] == "aws:kafka"
    assert event["bootstrapServers"] == "b1:9098,b2:9098"
    assert "key" not in record  # Lambda omits the key when it is null
    assert record["headers"] == [{"h": [97, 98]}]
    assert base64.b64decode(record["value"]) == b"{}"
    assert record["timestampType"] == "CREATE_TIME"


def test_raw_bytes_are_held_to_the_same_rules_with_exact_reasons() -> None:
    """`from_bytes` (operator tools and integration tests read the topic with it)."""
    event = placed()
    message = to_message(event)
    with pytest.raises(InvalidEventError) as tombstone:
        from_bytes(None, message.key)
    assert tombstone.value.reason == "value is null (a tombstone), not an event"
    with pytest.raises(InvalidEventError) as wrong_key:
        from_bytes(message.value, b"another-order")
    assert wrong_key.value.reason == f"key 'another-order' does not match order_id {event.order_id}"
    with pytest.raises(InvalidEventError) as not_json:
        from_bytes(b"{oops", message.key)
    assert not_json.value.reason.startswith("not UTF-8 JSON: Expecting property name")
    assert from_bytes(message.value, None) == event  # a null key is tolerated here too
    with pytest.raises(InvalidEventError) as long_key:
        from_bytes(message.value, b"k" * 100)
    quoted = repr("k" * 64)  # a key is named by its first 64 characters
    assert long_key.value.reason == f"key {quoted} does not match order_id {event.order_id}"
    assert from_bytes(message.value, b"") == event  # and so is an empty one


def _validation_error(adapter: TypeAdapter[Any], value: object) -> ValidationError:
    with pytest.raises(ValidationError) as failed:
        adapter.validate_python(value)
    return failed.value


NOT_AN_INT = "Input should be a valid integer, unable to parse string as an integer"


def test_describe_names_each_failing_field_by_its_dotted_path_or_the_root() -> None:
    nested = TypeAdapter(dict[str, list[int]])
    assert describe(_validation_error(nested, {"items": [1, "x"], "more": ["y"]})) == (
        f"items.1: {NOT_AN_INT}; more.0: {NOT_AN_INT}"
    )
    assert describe(_validation_error(TypeAdapter(int), "x")) == f"(root): {NOT_AN_INT}"


@pytest.mark.parametrize(("count", "more"), [(5, ""), (6, " (+1 more)"), (8, " (+3 more)")])
def test_describe_names_five_fields_at_most_and_counts_the_rest(count: int, more: str) -> None:
    error = _validation_error(TypeAdapter(list[int]), ["x"] * count)
    shown = "; ".join(f"{i}: {NOT_AN_INT}" for i in range(min(count, 5)))
    assert describe(error) == shown + more


def test_a_decoding_error_without_a_cause_is_named_by_itself() -> None:
    """Powertools chains the JSON error it met; when it has none, its own message stands."""

    class Undecodable:
        @property
        def value(self) -> Any:
            raise KafkaConsumerDeserializationError("Error trying to deserialize json data")

    with pytest.raises(InvalidEventError) as failed:
        from_record(cast(ConsumerRecordRecords, Undecodable()))
    assert failed.value.reason == "value is not UTF-8 JSON: Error trying to deserialize json data"
