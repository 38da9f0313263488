"""The `order-placed` event and its Kafka wire format.

Wire format (schema version 1): key = order_id as UTF-8, so one order's events stay in one
partition; value = the event as compact JSON; headers carry the event type, schema version,
correlation id and content type so a consumer can route without parsing the value.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from aws_lambda_powertools.utilities.kafka import SchemaConfig
from aws_lambda_powertools.utilities.kafka.exceptions import KafkaConsumerDeserializationError
from pydantic import AfterValidator, AwareDatetime, Field, ValidationError

from orderstream.models import Order, StrictModel

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.kafka.consumer_records import ConsumerRecordRecords

EVENT_TYPE: Final = "order-placed"
SCHEMA_VERSION: Final = 1
CONTENT_TYPE: Final = "application/json"

HEADER_EVENT_TYPE: Final = "event-type"
HEADER_SCHEMA_VERSION: Final = "schema-version"
HEADER_CORRELATION_ID: Final = "correlation-id"
HEADER_CONTENT_TYPE: Final = "content-type"

#: How consumers ask Powertools to decode our records: JSON values, UTF-8 keys.
ORDER_EVENTS: Final = SchemaConfig(value_schema_type="JSON")


def _in_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


CorrelationId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]


class OrderPlaced(StrictModel):
    """An order was accepted by the API and must now be confirmed and archived."""

    event_id: uuid.UUID
    event_type: Literal["order-placed"] = EVENT_TYPE
    schema_version: Literal[1] = SCHEMA_VERSION
    occurred_at: Annotated[AwareDatetime, AfterValidator(_in_utc)]
    correlation_id: CorrelationId
    order: Order

    @classmethod
    def new(
        cls, order: Order, correlation_id: str, occurred_at: datetime | None = None
    ) -> OrderPlaced:
        return cls(
            event_id=uuid.uuid4(),
            occurred_at=occurred_at or datetime.now(UTC),
            correlation_id=correlation_id,
            order=order,
        )

    @property
    def order_id(self) -> str:
        return str(self.order.order_id)


@dataclass(frozen=True, slots=True)
class KafkaMessage:
    """What a producer sends: kafka-python's `send(topic, key=, value=, headers=)` arguments."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


class InvalidEventError(ValueError):
    """A record that is not a valid `order-placed` event; `reason` says why, for the dead letter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def to_message(event: OrderPlaced) -> KafkaMessage:
    return KafkaMessage(
        key=event.order_id.encode(),
        value=event.model_dump_json().encode(),
        headers=[
            (HEADER_EVENT_TYPE, EVENT_TYPE.encode()),
            (HEADER_SCHEMA_VERSION, str(SCHEMA_VERSION).encode()),
            (HEADER_CORRELATION_ID, event.correlation_id.encode()),
            (HEADER_CONTENT_TYPE, CONTENT_TYPE.encode()),
        ],
    )


def from_record(record: ConsumerRecordRecords) -> OrderPlaced:
    """Turn a Powertools-decoded MSK record (schema `ORDER_EVENTS`) back into the event."""
    try:
        payload = record.value
    except KafkaConsumerDeserializationError as exc:
        raise InvalidEventError(f"value is not UTF-8 JSON: {exc.__cause__ or exc}") from exc
    try:
        key = record.key
    except ValueError as exc:  # bad base64 or not UTF-8
        raise InvalidEventError(f"key is not UTF-8 text: {exc}") from exc
    return _validated(payload, key)


def from_bytes(value: bytes | None, key: bytes | None) -> OrderPlaced:
    """Same as `from_record`, for raw bytes read by a plain Kafka consumer."""
    if value is None:
        raise InvalidEventError("value is null (a tombstone), not an event")
    try:
        payload = json.loads(value)
        key_text = key.decode() if key else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEventError(f"not UTF-8 JSON: {exc}") from exc
    return _validated(payload, key_text)


def _validated(payload: Any, key: str | None) -> OrderPlaced:
    # plain_events builds on this module, so it is imported here, not at the top.
    from orderstream.plain_events import plain_event

    # Our producer's events without the model's Python validators; everything else in full.
    event = plain_event(payload)
    if event is None:
        try:
            event = OrderPlaced.model_validate(payload)
        except ValidationError as exc:
            raise InvalidEventError(f"not a valid {EVENT_TYPE} event: {describe(exc)}") from exc
    # A null key is tolerated (the value is authoritative); a wrong one means a broken producer
    # whose records may be spread over partitions, so per-order ordering is already lost.
    if key is not None and key != event.order_id:
        raise InvalidEventError(f"key {key[:64]!r} does not match order_id {event.order_id}")
    return event


def describe(exc: ValidationError, limit: int = 5) -> str:
    """One line naming each failing field, short enough for a log line or a dead letter."""
    errors = exc.errors(include_url=False, include_input=False)
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errors]
    more = f" (+{len(parts) - limit} more)" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


def json_schema() -> dict[str, Any]:
    """The checked-in `schemas/order-placed.v1.json`, as the model defines it."""
    schema = OrderPlaced.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://orderstream.example/schemas/{EVENT_TYPE}.v{SCHEMA_VERSION}.json",
        **schema,
    }
