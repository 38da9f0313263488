"""Lambda's MSK event, built from records read by a plain Kafka consumer.

The shape is the one Lambda's event-source mapping sends (Lambda guide, MSK event): records under
"<topic>-<partition>", key and value base64 (key absent when null, value null for a tombstone),
headers as a list of one-entry dicts of byte lists (null for a null header value). The Lambda
guide's own sample event is events/msk-guide-sample.json; tests hold these events to its shape.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, Protocol

# Lambda's synchronous invocation payload limit: what a mapping puts in one event, and what
# Invoke takes.
MAX_PAYLOAD_BYTES: Final = 6 * 1024 * 1024


class KafkaRecord(Protocol):
    """The parts of kafka-python's ConsumerRecord that Lambda's event carries."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def timestamp_type(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


@dataclass(frozen=True)
class PlainRecord:
    """A Kafka record as kafka-python reads one, made by hand (tests, benchmarks, samples)."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    topic: str = "order-placed"
    partition: int = 0
    offset: int = 0
    timestamp: int = 1795615328000  # 2026-11-25T14:02:08Z
    timestamp_type: int = 0  # CREATE_TIME


def sample_order_records(
    count: int, partitions: int, items_per_order: int = 6
) -> list[PlainRecord]:
    """`count` order-placed records (~1 KB with 6 items), round-robin over partitions, one a
    second from 2026-11-25T14:00Z, order_ids 0, 1, 2... as UUIDs: benchmarks and tests."""
    from orderstream.events import OrderPlaced, to_message
    from orderstream.models import Customer, LineItem, Order, compute_total

    start = datetime(2026, 11, 25, 14, tzinfo=UTC)
    records = []
    for i in range(count):
        items = [
            LineItem(
                sku=f"SKU-{i:05d}-{j}",
                name=f"Espresso beans, dark roast, 250 g ({j})",
                quantity=1 + j,
                unit_price=Decimal("12.50"),
            )
            for j in range(items_per_order)
        ]
        order = Order(
            order_id=uuid.UUID(int=i),
            customer=Customer(id=f"c-{i}", email=f"customer{i}@example.com", name="Ada Lovelace"),
            items=items,
            currency="EUR",
            total=compute_total(items),
        )
        message = to_message(OrderPlaced.new(order, f"req-{i}", occurred_at=start))
        records.append(
            PlainRecord(
                key=message.key,
                value=message.value,
                headers=list(message.headers),
                partition=i % partitions,
                offset=i // partitions,
                timestamp=int(start.timestamp() * 1000) + i * 1000,
            )
        )
    return records


def msk_record(record: KafkaRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "timestampType": "LOG_APPEND_TIME" if record.timestamp_type == 1 else "CREATE_TIME",
    }
    if record.key is not None:
        entry["key"] = base64.b64encode(record.key).decode()
    # A tombstone's value and a null header value are null, never "" or []: an empty value is
    # a record of its own, and consumers must be able to tell the two apart.
    entry["value"] = None if record.value is None else base64.b64encode(record.value).decode()
    entry["headers"] = [
        {name: None if value is None else list(value)} for name, value in record.headers
    ]
    return entry


def msk_event(
    records: Iterable[KafkaRecord], event_source_arn: str, bootstrap_servers: str
) -> dict[str, Any]:
    return lambda_event((msk_record(r) for r in records), event_source_arn, bootstrap_servers)


def lambda_event(
    records: Iterable[dict[str, Any]], event_source_arn: str, bootstrap_servers: str
) -> dict[str, Any]:
    """Lambda's MSK event for records already in the event's record shape."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(f"{record['topic']}-{record['partition']}", []).append(record)
    return {
        "eventSource": "aws:kafka",
        "eventSourceArn": event_source_arn,
        "bootstrapServers": bootstrap_servers,
        "records": grouped,
    }


def reported_failures(payload: Any, present: set[tuple[str, int]]) -> dict[str, int] | None:
    """A partial batch response read as Lambda reads it: each reported "<topic>-<partition>"
    with its lowest reported offset; None when the response names a record the event did not
    hold (`present`: each record's "<topic>-<partition>" and offset), or cannot be read."""
    if payload is None or not isinstance(payload, dict):
        return {}  # "an empty valid JSON or null": the batch succeeded
    failures = payload.get("batchItemFailures")
    if failures is None:
        return {}
    if not isinstance(failures, list):
        return None
    lowest: dict[str, int] = {}
    for failure in failures:
        item = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not isinstance(item, dict):
            return None
        # The guide's key and Powertools' disagree: either is read; both must then agree.
        names = [item[key] for key in ("partition", "topic-partition") if key in item]
        offset = item.get("offset")
        if not names or not all(isinstance(name, str) for name in names):
            return None
        if len(set(names)) != 1 or isinstance(offset, bool) or not isinstance(offset, int):
            return None
        name = names[0]
        if (name, offset) not in present:
            return None
        lowest[name] = min(offset, lowest.get(name, offset))
    return lowest


def offset_spans(positions: Iterable[tuple[str, int, int]]) -> dict[str, tuple[int, int, int]]:
    """(topic, partition, offset) of records -> each "<topic>-<partition>"'s first and last
    offset and record count, by name."""
    found: dict[str, list[int]] = {}
    for topic, partition, offset in positions:
        found.setdefault(f"{topic}-{partition}", []).append(offset)
    return {name: (min(o), max(o), len(o)) for name, o in sorted(found.items())}
