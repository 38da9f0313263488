"""The S3 archive of Kafka records: gzip JSON Lines per partition, hour and offset block.

Every record once, byte for byte, whatever the mapping redelivers: an object's name and content
are functions of the records, merged in with conditional writes. Nothing here calls AWS; the
handler passes a store. Line format, naming and reasoning: docs/design.md, "The archive".
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any, Final, Literal, NamedTuple, Protocol

from pydantic import ValidationError

from orderstream.dead_letter import DeadLetterSource, original_value
from orderstream.events import EVENT_TYPE, OrderPlaced, describe
from orderstream.plain_events import plainly_valid
from orderstream.text import clip

TOPICS_DIR: Final = "topics"
SUFFIX: Final = ".jsonl.gz"
# The object is JSON Lines, stored gzip-encoded: S3 serves it with Content-Encoding: gzip, so an
# HTTP client sees the lines; Athena and `aws s3 cp` go by the .gz suffix and see the bytes.
CONTENT_TYPE: Final = "application/x-ndjson"
CONTENT_ENCODING: Final = "gzip"
# zlib's own default: level 9 costs far more CPU for a few percent on JSON, and the archive
# is written on every batch but read rarely.
COMPRESS_LEVEL: Final = 6
# Offsets per object: with ~1 KB orders an object holds at most ~1 MB of lines (~150 KB
# compressed), which a merge rereads and rewrites whole; Athena reads such objects well.
OFFSETS_PER_OBJECT: Final = 1000
# Each conflict means another writer added records; a few rounds settle any rebalance overlap.
MAX_WRITE_ATTEMPTS: Final = 8
# Per-object samples of poison records, for the log line; the archive itself keeps them all.
POISON_SAMPLES: Final = 5
MAX_ERROR_CHARS: Final = 300

Encoding = Literal["utf-8", "base64"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_HOUR_MS: Final = 3_600_000
_VALUE_FIELD: Final = b',"value":'
# An archive line as this module writes it: what a merge reads without parsing the value.
_LINE_HEAD: Final = re.compile(rb'\{"topic":"(?:[^"\\]|\\.)*","partition":-?\d+,"offset":(\d+),')
_ERROR_FIELD: Final = b',"error":'
_NO_ERROR: Final = b'null,"value_base64":'
# Characters some line readers (Python's str.splitlines, JavaScript) take for line ends: in
# valid JSON text \n and \r stand only between tokens, the others only inside strings.
_LINE_BREAKS: Final = re.compile("[\n\r\u2028\u2029\x85]")
_JSON_TYPE_NAMES: Final = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


class WriteConflict(Exception):
    """The object is no longer what was read (written, created or deleted meanwhile)."""


class ArchiveConflictError(RuntimeError):
    """Writers kept racing for one object; failing the batch makes the mapping retry it."""


class ForeignObjectError(RuntimeError):
    """An object at an archive key holds lines this module did not write: merging into it could
    corrupt it, so the batch fails (and, after its retries, reaches the on-failure
    destination) until someone looks."""


class StoredObject(NamedTuple):
    body: bytes
    etag: str


class ArchiveStore(Protocol):
    """Where archive objects go. Writes are atomic and conditional, as S3's are."""

    def get(self, key: str) -> StoredObject | None:
        """The object's bytes and ETag, or None when there is no such object."""
        ...

    def put(
        self, key: str, body: bytes, metadata: Mapping[str, str], *, replaces: str | None
    ) -> None:
        """Write if the object is still the one read: the one with ETag `replaces`, or none at
        all when `replaces` is None. Raise `WriteConflict` otherwise."""
        ...


@dataclass(frozen=True, slots=True)
class Years:
    """The years the Glue table projects (its `projection.year.range`): every key lands inside."""

    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> Years:
        """`"2024,2099"`, as the template's mapping writes it for the table and the function."""
        try:
            first, last = (int(part) for part in text.split(","))
        except ValueError:
            raise ValueError(f"archive years must read 'first,last', not {text!r}") from None
        if not 1970 <= first <= last <= 9999:
            raise ValueError(f"archive years {text!r} are not an ascending range of 1970..9999")
        return cls(first, last)

    def hour_of(self, timestamp_ms: int) -> datetime:
        lowest = datetime(self.first, 1, 1, tzinfo=UTC)
        highest = datetime(self.last, 12, 31, 23, tzinfo=UTC)
        try:
            at = _EPOCH + timedelta(milliseconds=timestamp_ms)
        except OverflowError:
            return lowest if timestamp_ms < 0 else highest
        return min(max(at, lowest), highest)


class ArchivableRecord(DeadLetterSource, Protocol):
    """Lambda's raw record fields (Powertools' `ConsumerRecordRecords` fits it)."""


class ArchiveLine(NamedTuple):
    """One record's JSON line (no trailing newline) and, for a poison record, why."""

    offset: int
    data: bytes
    error: str | None


@dataclass(frozen=True, slots=True)
class ArchivedObject:
    key: str
    first_offset: int  # of the object as it now stands
    last_offset: int
    records: int
    poison: int
    delivered: int  # this batch's records that belong here
    added: int  # of those, how many the object lacked
    size: int  # bytes written; 0 when nothing was new
    conflicts: int  # writes another writer beat (a create that found the object is not one)
    poison_added: int
    poison_samples: tuple[tuple[int, str], ...]  # (offset, error) among the added, the first few

    @property
    def written(self) -> bool:
        return self.added > 0


@dataclass(frozen=True, slots=True)
class ArchivedBatch:
    objects: tuple[ArchivedObject, ...]

    @property
    def archived(self) -> int:
        """The batch's records, all now in the archive."""
        return sum(o.delivered for o in self.objects)

    @property
    def added(self) -> int:
        return sum(o.added for o in self.objects)

    @property
    def poison(self) -> int:
        """Poison records this batch added (a redelivered one was counted the first time)."""
        return sum(o.poison_added for o in self.objects)

    @property
    def bytes_written(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def written(self) -> tuple[ArchivedObject, ...]:
        return tuple(o for o in self.objects if o.written)

    @property
    def conflicts(self) -> int:
        return sum(o.conflicts for o in self.objects)

    def summary(self) -> dict[str, int]:
        return {
            "archived": self.archived,
            "added": self.added,
            "poison": self.poison,
            "objects": len(self.written),
            "bytes": self.bytes_written,
            "conflicts": self.conflicts,
        }


def archive_batch(
    records: Iterable[ArchivableRecord],
    store: ArchiveStore,
    years: Years,
    pause: Callable[[float], None] = time.sleep,
) -> ArchivedBatch:
    """Merge the batch's records into their objects; raise if any write fails for good.

    Objects are settled one at a time in key order, so a failure is reproducible; a failed
    batch is redelivered and the merge finds what the first attempt already wrote. `pause`
    waits between rounds of a contested object (S3: "On a 409 failure you should retry").
    """
    objects: dict[str, _Pending] = {}
    # A batch's records share a few hours: each hour's prefix is worked out once. Every record
    # of one clock hour lands in one hour (the projection's bounds are whole hours too).
    prefixes: dict[tuple[str, int], str] = {}
    for record in records:
        line = archive_line(record)
        topic, timestamp = record.topic, record.timestamp
        clock_hour = (topic, timestamp // _HOUR_MS)
        prefix = prefixes.get(clock_hour)
        if prefix is None:
            prefix = prefixes[clock_hour] = hour_prefix(topic, years.hour_of(timestamp))
        key = _object_name(prefix, topic, record.partition, record.offset)
        pending = objects.get(key)
        if pending is None:
            pending = objects[key] = _Pending(key, {})
        pending.lines.setdefault(line.offset, line)
    return ArchivedBatch(tuple(_settle(store, objects.pop(key), pause) for key in sorted(objects)))


class _Pending(NamedTuple):
    """The batch's lines for one object, by offset."""

    key: str
    lines: dict[int, ArchiveLine]


def object_key(topic: str, partition: int, offset: int, hour: datetime) -> str:
    """The name of the object that holds the record at `offset` stamped within `hour`."""
    return _object_name(hour_prefix(topic, hour), topic, partition, offset)


def _object_name(prefix: str, topic: str, partition: int, offset: int) -> str:
    block = offset - offset % OFFSETS_PER_OBJECT
    return f"{prefix}{topic}+{partition}+{block:020d}{SUFFIX}"


def hour_prefix(topic: str, hour: datetime) -> str:
    """Where the objects of `topic` filed under `hour` are (a Glue partition's location)."""
    return (
        f"{TOPICS_DIR}/{topic}/year={hour.year:04d}/month={hour.month:02d}/day={hour.day:02d}"
        f"/hour={hour.hour:02d}/"
    )


def object_partition_and_block(key: str) -> tuple[int, int]:
    """The partition and the first offset of the block an object named by `object_key` holds."""
    _, partition, block = key.rsplit("/", 1)[-1].removesuffix(SUFFIX).rsplit("+", 2)
    return int(partition), int(block)


def archive_line(record: ArchivableRecord) -> ArchiveLine:
    """The record as one deterministic JSON line; never raises for any key, value or headers."""
    key, key_encoding, key_error = _key(record.original_key)
    value = _value(original_value(record))
    error = _join(value.error, key_error)
    # What `_head` makes of these fields in this order, without json.dumps' generic walk:
    # tests/unit/test_archive.py holds the two to the same bytes.
    head = "".join(
        (
            '{"topic":',
            _json(record.topic),
            ',"partition":',
            _json(record.partition),
            ',"offset":',
            _json(record.offset),
            ',"timestamp":',
            _json(record.timestamp),
            ',"timestamp_type":',
            _json(record.timestamp_type),
            ',"key":',
            _json(key),
            ',"key_encoding":',
            _json(key_encoding),
            ',"headers":[',
            ",".join(
                f'{{"name":{_json(name)},"value":{_json(text)},"encoding":{_json(encoding)}}}'
                for name, text, encoding in _header_fields(record.original_headers)
            ),
            '],"error":',
            _json(error),
            ',"value_base64":',
            _json(value.base64),
        )
    ).encode()
    data = head + _VALUE_FIELD + (b"null" if value.text is None else value.text) + b"}"
    return ArchiveLine(record.offset, data, error)


def _json(value: object) -> str:
    """`value` as json.dumps writes it in `_head` (ASCII, no NaN)."""
    if value is None:
        return "null"
    if type(value) is str:
        return _json_string(value)
    if type(value) is int:
        return int.__repr__(value)
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def value_bytes(line: bytes) -> bytes | None:
    """The record's value, byte for byte, from its archive line (None for a tombstone)."""
    return _value_bytes(line, json.loads(line))


def lambda_record(line: bytes) -> dict[str, Any]:
    """The record as Lambda's MSK event held it, rebuilt from its archive line: the same
    coordinates, timestamp, key, headers and value bytes (a replay hands this to a consumer).

    Text Lambda sent that was not base64 at all (kept as it came, with an error) goes back as
    it came; base64 of the same bytes is written canonically.
    """
    fields = json.loads(line)
    record: dict[str, Any] = {
        "topic": fields["topic"],
        "partition": fields["partition"],
        "offset": fields["offset"],
        "timestamp": fields["timestamp"],
        "timestampType": fields["timestamp_type"],
    }
    if fields["key"] is not None:
        record["key"] = _as_base64(fields["key"], fields["key_encoding"])
    if fields.get("value_base64") is not None:
        record["value"] = fields["value_base64"]  # as Lambda sent it, valid base64 or not
    else:
        value = _value_bytes(line, fields)
        record["value"] = None if value is None else base64.b64encode(value).decode("ascii")
    record["headers"] = [
        {
            header["name"]: None
            if header["value"] is None
            else list(_from_text(header["value"], header["encoding"]))
        }
        for header in fields["headers"]
    ]
    return record


def _value_bytes(line: bytes, fields: Mapping[str, Any]) -> bytes | None:
    if fields.get("value_base64") is not None:
        return base64.b64decode(fields["value_base64"])
    if fields.get("value") is None:
        return None
    head = {name: v for name, v in fields.items() if name != "value"}
    prefix = _head(head) + _VALUE_FIELD
    if not (line.startswith(prefix) and line.endswith(b"}")):
        raise ValueError("not an archive line: the value is not its last field")
    return line[len(prefix) : -1]


def _from_text(text: str, encoding: str | None) -> bytes:
    return text.encode("utf-8") if encoding == "utf-8" else base64.b64decode(text)


def _as_base64(text: str, encoding: str | None) -> str:
    if encoding == "utf-8":
        return base64.b64encode(text.encode("utf-8")).decode("ascii")
    try:
        return base64.b64encode(base64.b64decode(text, validate=True)).decode("ascii")
    except (binascii.Error, ValueError):
        return text  # Lambda sent it so; the line kept it as it came


def read_lines(body: bytes) -> Iterator[bytes]:
    """An archive object's lines, without their newlines."""
    for line in gzip.decompress(body).split(b"\n"):
        if line:
            yield line


def _settle(
    store: ArchiveStore, pending: _Pending, pause: Callable[[float], None]
) -> ArchivedObject:
    """Merge the pending lines into their object until a conditional write holds."""
    key, lines = pending.key, pending.lines
    block_start = min(lines) - min(lines) % OFFSETS_PER_OBJECT
    # A batch holding the block's first offset usually opens the object: try to create it
    # before paying for a read. A redelivery meets a 412 and reads like everyone else.
    current: StoredObject | None = None
    read = block_start not in lines
    conflicts = 0
    for attempt in range(MAX_WRITE_ATTEMPTS):
        if read:
            current = store.get(key)
        # A write whose answer was lost and whose retry met a 412 is read back here like any
        # other: its records are found archived. S3 cannot tell it from an identical write by
        # another poller, so the outcome counts them as already there (the metrics may
        # undercount such a write; the archive is exact either way).
        merged, added = _merge(key, current, lines)
        if not added:
            return _archived(pending, merged, [], 0, conflicts)
        body = gzip.compress(
            b"".join(data + b"\n" for data, _ in merged.values()),
            compresslevel=COMPRESS_LEVEL,
            mtime=0,  # no time in the gzip header: the same records give the same bytes
        )
        archived = _archived(pending, merged, added, len(body), conflicts)
        try:
            store.put(key, body, _metadata(archived), replaces=current.etag if current else None)
        except WriteConflict:
            if read:  # a create-first guess that met the object is no race
                conflicts += 1
                pause(random.uniform(0, min(1.0, 0.05 * 2**attempt)))  # noqa: S311 -- jitter
            read = True
            continue
        return archived
    raise ArchiveConflictError(
        f"{key}: {MAX_WRITE_ATTEMPTS} conditional writes in a row lost to other writers"
    )


def _merge(
    key: str, current: StoredObject | None, lines: dict[int, ArchiveLine]
) -> tuple[dict[int, tuple[bytes, bool]], list[ArchiveLine]]:
    """The object's lines by offset (data, poison) with the batch's added, and what was added.

    Existing lines are read by their fixed head, never by parsing their values: a line this
    module wrote once stays readable whatever its value holds.
    """
    merged: dict[int, tuple[bytes, bool]] = {}
    if current is not None:
        try:
            existing = list(read_lines(current.body))
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise ForeignObjectError(f"{key}: not a gzip archive object ({exc})") from exc
        for data in existing:
            offset, poison = line_facts(key, data)
            merged[offset] = (data, poison)
    added = [line for offset, line in lines.items() if offset not in merged]
    if added:
        for line in added:
            merged[line.offset] = (line.data, line.error is not None)
        merged = dict(sorted(merged.items()))
    return merged, added


def line_facts(key: str, data: bytes) -> tuple[int, bool]:
    """A stored line's offset and whether it is poison, from its head alone (its value is
    never parsed); `key` names its object in the error for a line this module did not write."""
    head = _LINE_HEAD.match(data)
    error_at = data.find(_ERROR_FIELD)  # the head's own: no string holds an unescaped quote
    if head is None or error_at < 0 or not data.endswith(b"}"):
        raise ForeignObjectError(f"{key}: a line this archive did not write: {data[:80]!r}")
    return int(head[1]), not data.startswith(_NO_ERROR, error_at + len(_ERROR_FIELD))


def _archived(
    pending: _Pending,
    merged: Mapping[int, tuple[bytes, bool]],
    added: Sequence[ArchiveLine],
    size: int,
    conflicts: int,
) -> ArchivedObject:
    poison_added = [(line.offset, line.error) for line in added if line.error is not None]
    return ArchivedObject(
        key=pending.key,
        first_offset=min(merged),
        last_offset=max(merged),
        records=len(merged),
        poison=sum(poison for _, poison in merged.values()),
        delivered=len(pending.lines),
        added=len(added),
        size=size,
        conflicts=conflicts,
        poison_added=len(poison_added),
        poison_samples=tuple((o, e) for o, e in poison_added[:POISON_SAMPLES] if e is not None),
    )


def _metadata(archived: ArchivedObject) -> dict[str, str]:
    return {
        "record-count": str(archived.records),
        "first-offset": str(archived.first_offset),
        "last-offset": str(archived.last_offset),
        "poison-count": str(archived.poison),
    }


def _head(fields: Mapping[str, Any]) -> bytes:
    """Every field but the value, compact ASCII JSON without its closing brace."""
    return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode()[:-1]


def _key(original: str | None) -> tuple[str | None, Encoding | None, str | None]:
    if original is None:
        return None, None, None
    try:
        raw = base64.b64decode(original, validate=True)
    except (binascii.Error, ValueError) as exc:
        # Lambda always sends base64; keep what came so nothing is lost, and say so.
        return original, "base64", clip(f"key is not valid base64: {exc}", MAX_ERROR_CHARS)
    text, encoding = _text_or_base64(raw)
    return text, encoding, None


class _Value(NamedTuple):
    text: bytes | None  # what the line's "value" holds, as JSON text
    base64: str | None  # the value's bytes when `text` is not them
    error: str | None


def _value(original: str | None) -> _Value:
    if original is None:
        return _Value(None, None, "value is null (a tombstone), not an event")
    try:
        raw = base64.b64decode(original, validate=True)
    except (binascii.Error, ValueError) as exc:
        return _Value(None, original, clip(f"value is not valid base64: {exc}", MAX_ERROR_CHARS))
    # Parsed here rather than by Powertools' JSON deserializer: that one keeps the last of a
    # repeated key and reads NaN, and the archive must keep such a value raw instead.
    try:
        text = raw.decode("utf-8")
        if plainly_valid(text) and not _has_line_break(text):
            # The common case, our producer's own events, decided without the model's Python
            # validators; anything else is validated in full below (plain_events.py says why).
            return _Value(raw, None, None)
        parsed = json.loads(
            text,
            object_pairs_hook=_object_without_repeats,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = f"value is not UTF-8 JSON: {type(exc).__name__}: {exc}"
        return _Value(None, original, clip(reason, MAX_ERROR_CHARS))
    except ValueError as exc:  # ours, or Python's cap on an integer's digits
        return _Value(None, original, clip(f"value is not portable JSON: {exc}", MAX_ERROR_CHARS))
    except RecursionError:
        return _Value(None, original, "value is not portable JSON: nested too deeply")
    if not isinstance(parsed, dict):
        kind = _JSON_TYPE_NAMES[type(parsed)]  # json.loads makes no other type
        return _Value(None, original, f"value is JSON but {kind}, not an event object")
    try:
        OrderPlaced.model_validate(parsed)
    except ValidationError as exc:
        reason = f"value is not a valid {EVENT_TYPE} event: {describe(exc)}"
        return _Value(None, original, clip(reason, MAX_ERROR_CHARS))
    if _has_line_break(text):
        # A JSON line cannot hold a line break between tokens: embed the object re-serialised
        # (ASCII, so lone surrogates stay valid) and keep the bytes beside it.
        canonical = json.dumps(parsed, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return _Value(canonical.encode(), original, None)
    return _Value(raw, None, None)


def _has_line_break(text: str) -> bool:
    if text.isascii():  # the other three are not ASCII
        return "\n" in text or "\r" in text
    return _LINE_BREAKS.search(text) is not None


class _NotPortable(ValueError):
    pass


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        repeated = next(name for name, _ in pairs if name in seen or seen.add(name))  # type: ignore[func-returns-value]
        raise _NotPortable(f"repeated key {repeated!r}: readers disagree on which value counts")
    return result


def _refuse_constant(name: str) -> Any:
    raise _NotPortable(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotPortable(f"{text[:40]} does not fit a double")
    return number


def _header_fields(
    original: Sequence[Mapping[str, Sequence[int] | None]],
) -> Iterator[tuple[str, str | None, Encoding | None]]:
    for chunk in original:
        for name, octets in chunk.items():
            if octets is None:
                yield name, None, None
                continue
            try:
                raw = bytes(octets)
            except ValueError:  # Java's signed bytes: -128..-1 stand for 128..255
                raw = bytes(octet & 0xFF for octet in octets)
            text, encoding = _text_or_base64(raw)
            yield name, text, encoding


def _text_or_base64(raw: bytes) -> tuple[str, Encoding]:
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def _join(*errors: str | None) -> str | None:
    present = [e for e in errors if e]
    return "; ".join(present) if present else None
