"""Dead letters: a Kafka record a consumer could not use, kept byte-exact with the reason.

One JSON document per record at `dead-letters/<consumer>/<topic>/<partition>/<offset:020>.json`,
so a redelivery overwrites its own letter. Pure: consumers store `DeadLetter.body` under
`DeadLetter.key`. The document's fields: docs/design.md, "Dead letters".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import quote

from orderstream.text import clip

PREFIX: Final = "dead-letters"
VERSION: Final = 1
CONTENT_TYPE: Final = "application/json"
# Enough for any decoding or validation message; a reason never grows with the record.
MAX_REASON_CHARS: Final = 2000

_CONSUMER: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class DeadLetterSource(Protocol):
    """Lambda's raw fields of an MSK record: Powertools' `ConsumerRecordRecords` fits it.

    `original_*` are base64 as Lambda sent them; `original_value` raises KeyError when Lambda
    left the value out (a tombstone). The archiver's records are these plus a decoded `value`.
    """

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def timestamp_type(self) -> str: ...
    @property
    def original_key(self) -> str | None: ...
    @property
    def original_value(self) -> str | None: ...
    @property
    def original_headers(self) -> Sequence[Mapping[str, Sequence[int] | None]]: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: str
    body: bytes
    topic: str
    partition: int
    offset: int
    reason: str


def dead_letter_key(consumer: str, topic: str, partition: int, offset: int) -> str:
    """Where the dead letter of one record goes; the same record always maps to the same key."""
    if not _CONSUMER.fullmatch(consumer):
        raise ValueError(f"consumer name {consumer!r} must be lowercase letters, digits and -")
    # Kafka topic names are [A-Za-z0-9._-] already; quoting only guards the key's shape.
    return f"{PREFIX}/{consumer}/{quote(topic, safe='._-')}/{partition}/{offset:020d}.json"


def dead_letter(record: DeadLetterSource, *, reason: str, consumer: str) -> DeadLetter:
    """The record's dead letter; never raises for any key, value or headers Lambda can send."""
    reason = clip(reason.strip() or "no reason given", MAX_REASON_CHARS)
    document: dict[str, Any] = {
        "version": VERSION,
        "consumer": consumer,
        "reason": reason,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "timestamp_type": record.timestamp_type,
        "key": record.original_key,
        "value": original_value(record),
        "headers": _raw_headers(record.original_headers),
    }
    body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return DeadLetter(
        key=dead_letter_key(consumer, record.topic, record.partition, record.offset),
        body=body,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reason=reason,
    )


def lambda_record(document: Mapping[str, Any]) -> dict[str, Any]:
    """The record as Lambda's MSK event held it, from its dead letter (a redrive sends it)."""
    record: dict[str, Any] = {
        "topic": document["topic"],
        "partition": document["partition"],
        "offset": document["offset"],
        "timestamp": document["timestamp"],
        "timestampType": document["timestamp_type"],
    }
    if document.get("key") is not None:
        record["key"] = document["key"]
    record["value"] = document.get("value")
    record["headers"] = list(document.get("headers") or [])
    return record


def original_value(record: DeadLetterSource) -> str | None:
    """The record's value as Lambda sent it (base64), None for a tombstone however sent."""
    try:
        return record.original_value
    except KeyError:  # Powertools' accessor when Lambda left a tombstone's value out
        return None


def _raw_headers(
    original: Sequence[Mapping[str, Sequence[int] | None]],
) -> list[dict[str, list[int] | None]]:
    return [
        {name: None if octets is None else list(octets)}
        for chunk in original
        for name, octets in chunk.items()
    ]
