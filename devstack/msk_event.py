"""Lambda's MSK event, built from records read by a plain Kafka consumer.

The shape is the one Lambda's event-source mapping sends (see DESIGN.md): records grouped under
"<topic>-<partition>", key and value base64 (key absent when null), headers as a list of
one-entry dicts of byte lists.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


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
    entry["value"] = base64.b64encode(record.value or b"").decode()
    entry["headers"] = [{name: list(value or b"")} for name, value in record.headers]
    return entry


def msk_event(
    records: Iterable[KafkaRecord], event_source_arn: str, bootstrap_servers: str
) -> dict[str, Any]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(f"{record.topic}-{record.partition}", []).append(msk_record(record))
    return {
        "eventSource": "aws:kafka",
        "eventSourceArn": event_source_arn,
        "bootstrapServers": bootstrap_servers,
        "records": grouped,
    }
