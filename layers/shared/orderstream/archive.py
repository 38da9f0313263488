"""The S3 archive of Kafka records: one gzip JSON Lines object per topic-partition per batch.

The archive is the system of record, so it keeps every record, poison ones included, as exactly
as JSON allows. Object names follow Kafka Connect's S3 sink (`topics.dir=topics`, hourly
TimeBasedPartitioner in UTC, start offset in the file name), so tools and Athena tables built
for a Connect archive read this one unchanged:

    topics/<topic>/year=YYYY/month=MM/day=DD/hour=HH/<topic>+<partition>+<first offset:020>.jsonl.gz

One line per record, compact JSON with sorted keys (line breaks added here for reading):

    {"error":null,
     "headers":[{"encoding":"utf-8","name":"correlation-id","value":"req-0000"}],
     "key":"5b0c4d1e-8f2a-4c3b-9d7e-000000000000","key_encoding":"utf-8",
     "offset":140,"partition":1,"timestamp":1795615328000,"timestamp_type":"CREATE_TIME",
     "topic":"order-placed","value":{"event_id":"...","order":{...},...},"value_base64":null}

- `key` and each header `value` are UTF-8 text when the bytes are valid UTF-8, else base64;
  `key_encoding` / `encoding` says which (`utf-8` or `base64`), and is null when the bytes are
  null (a null key, a null header value). Powertools' own `key` and `headers` are not used: they
  fold an empty key into null and merge repeated header names.
- `value` is the record's value when it is a JSON object (the event). Anything else is kept
  byte-exact in `value_base64`, with `error` saying why it is not an event. `value` is never a
  string or number, so a Glue struct column over it never meets a row of another type.
- A tombstone (null value) has `value` and `value_base64` both null and an `error`.

Nothing here calls AWS: the handler passes a store (S3 in Lambda, a dict in tests).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, NamedTuple, Protocol

from aws_lambda_powertools.utilities.kafka.exceptions import (
    KafkaConsumerDeserializationError,
    KafkaConsumerDeserializationFormatMismatch,
)

from orderstream.dead_letter import DeadLetterSource

TOPICS_DIR: Final = "topics"
SUFFIX: Final = ".jsonl.gz"
# The object is JSON Lines, stored gzip-encoded: S3 serves it with Content-Encoding: gzip, so an
# HTTP client sees the lines; Athena and `aws s3 cp` go by the .gz suffix and see the bytes.
CONTENT_TYPE: Final = "application/x-ndjson"
CONTENT_ENCODING: Final = "gzip"
# zlib's own default: level 9 costs far more CPU for a few percent on JSON, and the archive
# is written on every batch but read rarely.
COMPRESS_LEVEL: Final = 6
# Per-object samples of poison records, for the log line; the archive itself keeps them all.
POISON_SAMPLES: Final = 5
MAX_ERROR_CHARS: Final = 300

Encoding = Literal["utf-8", "base64"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_JSON_TYPE_NAMES: Final = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


class ArchivableRecord(DeadLetterSource, Protocol):
    """Lambda's raw record fields plus Powertools' decoded `value` (`ConsumerRecordRecords`).

    `value` raises `KafkaConsumerDeserializationError` for a value that is not UTF-8 JSON.
    """

    @property
    def value(self) -> Any: ...


class ArchiveStore(Protocol):
    """Where archive objects go. A put must be atomic: the object appears whole or not at all."""

    def put(self, key: str, body: bytes, metadata: Mapping[str, str]) -> None: ...


class ArchiveLine(NamedTuple):
    """One record's JSON line (no trailing newline) and, for a poison record, why."""

    data: bytes
    error: str | None


@dataclass(frozen=True, slots=True)
class ArchivedObject:
    key: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    records: int
    poison: int
    size: int
    poison_samples: tuple[tuple[int, str], ...]  # (offset, error), the first few

    @property
    def metadata(self) -> dict[str, str]:
        return {
            "record-count": str(self.records),
            "first-offset": str(self.first_offset),
            "last-offset": str(self.last_offset),
            "poison-count": str(self.poison),
        }


@dataclass(frozen=True, slots=True)
class ArchiveOutcome:
    objects: tuple[ArchivedObject, ...]

    @property
    def archived(self) -> int:
        return sum(o.records for o in self.objects)

    @property
    def poison(self) -> int:
        return sum(o.poison for o in self.objects)

    @property
    def bytes_written(self) -> int:
        return sum(o.size for o in self.objects)

    def summary(self) -> dict[str, int]:
        return {
            "archived": self.archived,
            "poison": self.poison,
            "objects": len(self.objects),
            "bytes": self.bytes_written,
        }


def archive_batch(records: Iterable[ArchivableRecord], store: ArchiveStore) -> ArchiveOutcome:
    """Write one object per topic-partition of the batch; raise if any write fails.

    Exactly-once effect: an object's key and bytes are a pure function of its records, and the
    mapping commits no offset until the whole batch succeeds. So when partition A's object was
    written and partition B's write then fails, the error fails the batch, the mapping
    redelivers it from the same offsets, and the retry rewrites A under the same key with the
    same bytes (a no-op to readers) before writing B. A redelivery that holds more or fewer of
    a partition's records (a later, bigger batch, or the mapping bisecting a failed one) still
    starts at the same uncommitted offset: it replaces the object with a superset or a subset,
    and the rest goes to the object named after its own first offset. Never a second copy.

    Memory stays bounded by the compressed batch: each record is decoded, written to its
    partition's gzip stream and dropped; objects are uploaded and released one at a time.
    """
    files: dict[tuple[str, int], _ObjectFile] = {}
    written: list[ArchivedObject] = []
    try:
        for record in records:
            topic_partition = (record.topic, record.partition)
            file = files.get(topic_partition)
            if file is None:
                file = files[topic_partition] = _ObjectFile(*topic_partition)
            file.add(record, archive_line(record))

        for topic_partition in sorted(files):  # a fixed order makes failures reproducible
            body, archived = files.pop(topic_partition).finish()
            store.put(archived.key, body, archived.metadata)
            written.append(archived)
    finally:
        for file in files.values():  # left over only when a put failed
            file.discard()
    return ArchiveOutcome(tuple(written))


def object_key(topic: str, partition: int, first_offset: int, first_timestamp_ms: int) -> str:
    """Kafka Connect's name for the object that starts at `first_offset`.

    The hour comes from the object's first record (lowest offset), as in Connect, where a file
    is named by its first record. That keeps the key a function of the first record alone, so
    a redelivered batch (which restarts at the same offset) lands on the same key even if it
    now holds more records. The price: a batch that crosses an hour boundary is filed under
    the earlier hour, so a query for hour H should read partitions H-1 and H and filter on
    `timestamp`.
    """
    at = _utc(first_timestamp_ms)
    return (
        f"{TOPICS_DIR}/{topic}/year={at.year:04d}/month={at.month:02d}/day={at.day:02d}"
        f"/hour={at.hour:02d}/{topic}+{partition}+{first_offset:020d}{SUFFIX}"
    )


def archive_line(record: ArchivableRecord) -> ArchiveLine:
    """The record as one deterministic JSON line; never raises for any key, value or headers."""
    key, key_encoding, key_error = _key(record.original_key)
    value, value_base64, error = _value(record)
    line: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "timestamp_type": record.timestamp_type,
        "key": key,
        "key_encoding": key_encoding,
        "headers": _headers(record.original_headers),
        "value": value,
        "value_base64": value_base64,
        "error": _join(error, key_error),
    }
    try:
        return ArchiveLine(_dumps(line), line["error"])
    except (ValueError, RecursionError) as exc:
        # Python's json reads NaN, Infinity and numbers too big for a double; no other JSON
        # reader would read them back, so such a value is kept raw like any other non-event.
        error = _join(f"value is not portable JSON: {type(exc).__name__}: {exc}", key_error)
        line |= {"value": None, "value_base64": record.original_value, "error": error}
        return ArchiveLine(_dumps(line), error)


def _dumps(line: dict[str, Any]) -> bytes:
    # Sorted keys and fixed separators make the bytes a function of the record alone; ASCII
    # escapes keep every line valid UTF-8 even for a value that held lone surrogates.
    return json.dumps(line, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _key(original: str | None) -> tuple[str | None, Encoding | None, str | None]:
    if original is None:
        return None, None, None
    try:
        raw = base64.b64decode(original, validate=True)
    except (binascii.Error, ValueError) as exc:
        # Lambda always sends base64; keep what came so nothing is lost, and say so.
        return original, "base64", _clip(f"key is not valid base64: {exc}")
    text, encoding = _text_or_base64(raw)
    return text, encoding, None


def _value(record: ArchivableRecord) -> tuple[dict[str, Any] | None, str | None, str | None]:
    original = _original_value(record)
    if original is None:
        return None, None, "value is null (a tombstone), not an event"
    try:
        parsed = record.value
    except (KafkaConsumerDeserializationError, KafkaConsumerDeserializationFormatMismatch) as exc:
        cause = exc.__cause__ or exc
        return None, original, _clip(f"value is not UTF-8 JSON: {type(cause).__name__}: {cause}")
    if not isinstance(parsed, dict):
        kind = _JSON_TYPE_NAMES.get(type(parsed), type(parsed).__name__)
        return None, original, f"value is JSON but {kind}, not an event object"
    return parsed, None, None


def _original_value(record: ArchivableRecord) -> str | None:
    # Lambda sends a tombstone's value as null or leaves the field out; Powertools' accessor
    # answers the second with KeyError.
    try:
        return record.original_value
    except KeyError:
        return None


def _headers(
    original: Sequence[Mapping[str, Sequence[int] | None]],
) -> list[dict[str, str | None]]:
    # A list, not a map: Kafka headers are ordered and a name may repeat.
    headers: list[dict[str, str | None]] = []
    for chunk in original:
        for name, octets in chunk.items():
            if octets is None:
                headers.append({"name": name, "value": None, "encoding": None})
                continue
            try:
                raw = bytes(octets)
            except ValueError:  # Java's signed bytes: -128..-1 stand for 128..255
                raw = bytes(octet & 0xFF for octet in octets)
            text, encoding = _text_or_base64(raw)
            headers.append({"name": name, "value": text, "encoding": encoding})
    return headers


def _text_or_base64(raw: bytes) -> tuple[str, Encoding]:
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def _utc(timestamp_ms: int) -> datetime:
    try:
        return _EPOCH + timedelta(milliseconds=timestamp_ms)
    except OverflowError:
        # Beyond year 9999 only a broken producer clock; epoch keeps the key well-formed.
        return _EPOCH


def _join(*errors: str | None) -> str | None:
    present = [e for e in errors if e]
    return "; ".join(present) if present else None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


class _ObjectFile:
    """One topic-partition's object while the batch is read: a gzip stream and its facts."""

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self._buffer = io.BytesIO()
        # mtime=0 and an empty file name keep the gzip header free of anything but the
        # content, so the same records always give the same bytes.
        self._gzip = gzip.GzipFile(
            filename="", mode="wb", fileobj=self._buffer, compresslevel=COMPRESS_LEVEL, mtime=0
        )
        self._records = 0
        self._poison = 0
        self._samples: list[tuple[int, str]] = []
        self._first_offset = 0
        self._first_timestamp = 0
        self._last_offset = 0

    def add(self, record: ArchivableRecord, line: ArchiveLine) -> None:
        offset = record.offset
        if self._records == 0 or offset < self._first_offset:
            self._first_offset, self._first_timestamp = offset, record.timestamp
        if self._records == 0 or offset > self._last_offset:
            self._last_offset = offset
        self._records += 1
        if line.error is not None:
            self._poison += 1
            if len(self._samples) < POISON_SAMPLES:
                self._samples.append((offset, line.error))
        self._gzip.write(line.data + b"\n")

    def discard(self) -> None:
        self._gzip.close()

    def finish(self) -> tuple[bytes, ArchivedObject]:
        self._gzip.close()
        body = self._buffer.getvalue()
        return body, ArchivedObject(
            key=object_key(self.topic, self.partition, self._first_offset, self._first_timestamp),
            topic=self.topic,
            partition=self.partition,
            first_offset=self._first_offset,
            last_offset=self._last_offset,
            records=self._records,
            poison=self._poison,
            size=len(body),
            poison_samples=tuple(self._samples),
        )
