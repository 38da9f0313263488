"""The archive's domain: lines, object names, gzip bytes, failure semantics. No AWS here."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from aws_lambda_powertools.utilities.kafka import ConsumerRecords
from aws_lambda_powertools.utilities.kafka.consumer_records import ConsumerRecordRecords
from hypothesis import given
from hypothesis import strategies as st

from devstack.msk_event import PlainRecord, msk_record
from orderstream.archive import (
    ArchiveOutcome,
    archive_batch,
    archive_line,
    object_key,
)
from orderstream.events import ORDER_EVENTS
from tests.samples import load_event

HOUR_14 = "topics/order-placed/year=2026/month=11/day=25/hour=14"
SAMPLE_KEYS = {
    f"{HOUR_14}/order-placed+0+00000000000000000040.jsonl.gz",
    f"{HOUR_14}/order-placed+1+00000000000000000140.jsonl.gz",
    f"{HOUR_14}/order-placed+2+00000000000000000240.jsonl.gz",
}


class MemoryStore:
    """An ArchiveStore that keeps objects in a dict and can be told to fail on its n-th put."""

    def __init__(self, fail_on_put: int | None = None) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.puts = 0
        self.fail_on_put = fail_on_put

    def put(self, key: str, body: bytes, metadata: Mapping[str, str]) -> None:
        self.puts += 1
        if self.puts == self.fail_on_put:
            raise ConnectionError("injected: S3 unreachable")
        self.objects[key] = (body, dict(metadata))


def consumer_record(raw: dict[str, Any]) -> ConsumerRecordRecords:
    return ConsumerRecordRecords(raw, schema_config=ORDER_EVENTS)


def three_partition_event() -> dict[str, Any]:
    """msk-orders.json (partitions 0 and 1) plus msk-poison.json (partition 2)."""
    event = load_event("msk-orders.json")
    event["records"] |= load_event("msk-poison.json")["records"]
    return event


def records_of(event: dict[str, Any]) -> list[ConsumerRecordRecords]:
    return list(ConsumerRecords(event, schema_config=ORDER_EVENTS).records)


def lines_of(body: bytes) -> list[dict[str, Any]]:
    text = gzip.decompress(body).decode("utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def from_text(text: str | None, encoding: str | None) -> bytes | None:
    """Independent reader of the archive's `value` + `encoding` pairs."""
    if text is None:
        assert encoding is None
        return None
    assert encoding in {"utf-8", "base64"}
    return text.encode() if encoding == "utf-8" else base64.b64decode(text, validate=True)


def header_bytes(octets: Sequence[int] | None) -> bytes | None:
    return None if octets is None else bytes(o & 0xFF for o in octets)


def assert_line_is_record(line: dict[str, Any], raw: dict[str, Any]) -> None:
    """The line holds everything Lambda sent for the record, recoverable byte for byte."""
    for field_name, raw_name in [
        ("topic", "topic"),
        ("partition", "partition"),
        ("offset", "offset"),
        ("timestamp", "timestamp"),
        ("timestamp_type", "timestampType"),
    ]:
        assert line[field_name] == raw[raw_name]

    raw_key = raw.get("key")
    assert from_text(line["key"], line["key_encoding"]) == (
        None if raw_key is None else base64.b64decode(raw_key)
    )

    expected_headers = [
        (name, header_bytes(octets)) for chunk in raw["headers"] for name, octets in chunk.items()
    ]
    assert [(h["name"], from_text(h["value"], h["encoding"])) for h in line["headers"]] == (
        expected_headers
    )

    raw_value = raw.get("value")
    if raw_value is None:
        assert line["value"] is None
        assert line["value_base64"] is None
        assert "tombstone" in line["error"]
    elif line["value_base64"] is not None:
        assert line["value"] is None
        assert base64.b64decode(line["value_base64"]) == base64.b64decode(raw_value)
        assert line["error"]
    else:
        assert line["value"] == json.loads(base64.b64decode(raw_value))
        assert isinstance(line["value"], dict)


# --- batches -----------------------------------------------------------------------------------


def test_three_partitions_give_three_objects_whose_lines_are_the_records() -> None:
    event = three_partition_event()
    store = MemoryStore()

    outcome = archive_batch(records_of(event), store=store)

    assert set(store.objects) == SAMPLE_KEYS
    assert outcome.summary() == {
        "archived": 8,
        "poison": 1,
        "objects": 3,
        "bytes": sum(len(body) for body, _ in store.objects.values()),
    }
    for group in event["records"].values():
        first = group[0]
        key = f"{HOUR_14}/order-placed+{first['partition']}+{first['offset']:020d}.jsonl.gz"
        body, metadata = store.objects[key]
        lines = lines_of(body)
        assert len(lines) == len(group)
        for line, raw in zip(lines, group, strict=True):
            assert_line_is_record(line, raw)
        assert metadata == {
            "record-count": str(len(group)),
            "first-offset": str(group[0]["offset"]),
            "last-offset": str(group[-1]["offset"]),
            "poison-count": str(sum(line["error"] is not None for line in lines)),
        }


def test_same_batch_twice_gives_the_same_keys_and_bytes() -> None:
    store = MemoryStore()
    archive_batch(records_of(three_partition_event()), store=store)
    first = dict(store.objects)

    archive_batch(records_of(three_partition_event()), store=store)

    assert store.objects == first
    assert store.puts == 6


def test_gzip_header_carries_no_time_or_name() -> None:
    store = MemoryStore()
    archive_batch(records_of(load_event("msk-null-key.json")), store=store)
    [(body, _)] = store.objects.values()
    magic, method, flags, mtime = body[:2], body[2], body[3], body[4:8]
    assert (magic, method, flags, mtime) == (b"\x1f\x8b", 8, 0, b"\0\0\0\0")


def test_poison_record_is_archived_raw_with_its_error_between_good_ones() -> None:
    event = load_event("msk-poison.json")
    store = MemoryStore()

    outcome = archive_batch(records_of(event), store=store)

    [archived] = outcome.objects
    assert (archived.records, archived.poison) == (3, 1)
    [(offset, error)] = archived.poison_samples
    assert offset == 241
    assert error.startswith("value is not UTF-8 JSON: UnicodeDecodeError")
    good, poison, good_again = lines_of(store.objects[archived.key][0])
    assert poison["value"] is None
    assert poison["value_base64"] == event["records"]["order-placed-2"][1]["value"]
    assert poison["error"] == error
    assert good["error"] is None
    assert good["value"]["order"]["order_id"] == good["key"]
    assert good_again["error"] is None


def test_null_key_is_kept_as_null() -> None:
    event = load_event("msk-null-key.json")
    store = MemoryStore()

    archive_batch(records_of(event), store=store)

    [(body, _)] = store.objects.values()
    [line] = lines_of(body)
    assert (line["key"], line["key_encoding"]) == (None, None)
    assert line["error"] is None
    assert_line_is_record(line, event["records"]["order-placed-0"][0])


def test_empty_batch_writes_nothing() -> None:
    store = MemoryStore()
    outcome = archive_batch([], store=store)
    assert outcome == ArchiveOutcome(())
    assert outcome.summary() == {"archived": 0, "poison": 0, "objects": 0, "bytes": 0}
    assert store.puts == 0


def test_failed_put_raises_and_a_retry_rewrites_the_same_bytes() -> None:
    failing = MemoryStore(fail_on_put=2)
    with pytest.raises(ConnectionError):
        archive_batch(records_of(three_partition_event()), store=failing)
    # Objects go out in topic-partition order: partition 0 was written, 1 failed, 2 never ran.
    assert set(failing.objects) == {min(SAMPLE_KEYS)}

    healthy = MemoryStore()
    archive_batch(records_of(three_partition_event()), store=healthy)
    assert set(healthy.objects) == SAMPLE_KEYS
    assert healthy.objects[min(SAMPLE_KEYS)] == failing.objects[min(SAMPLE_KEYS)]


def test_redelivery_with_more_records_replaces_the_object_rather_than_adding_one() -> None:
    first = [PlainRecord(b"k", b"{}", offset=o, timestamp=1_000 * o) for o in (7, 8)]
    more = [*first, PlainRecord(b"k", b"{}", offset=9, timestamp=9_000)]
    store = MemoryStore()

    archive_batch([consumer_record(msk_record(r)) for r in first], store=store)
    archive_batch([consumer_record(msk_record(r)) for r in more], store=store)

    [(key, (body, metadata))] = store.objects.items()
    assert key.endswith("/order-placed+0+00000000000000000007.jsonl.gz")
    assert [line["offset"] for line in lines_of(body)] == [7, 8, 9]
    assert metadata["last-offset"] == "9"


# --- object names ------------------------------------------------------------------------------


def test_a_batch_across_an_hour_is_filed_under_its_first_records_hour() -> None:
    before = 1795615199999  # 2026-11-25T13:59:59.999Z
    records = [
        PlainRecord(b"k", b"{}", offset=12, timestamp=before),
        PlainRecord(b"k", b"{}", offset=13, timestamp=before + 1),
    ]
    store = MemoryStore()
    archive_batch([consumer_record(msk_record(r)) for r in records], store=store)
    assert set(store.objects) == {
        "topics/order-placed/year=2026/month=11/day=25/hour=13/"
        "order-placed+0+00000000000000000012.jsonl.gz"
    }


def test_object_key_pads_like_kafka_connect() -> None:
    assert object_key("orders", 3, 5, 0) == (
        "topics/orders/year=1970/month=01/day=01/hour=00/orders+3+00000000000000000005.jsonl.gz"
    )
    assert object_key("orders", 0, 2**63 - 1, 0).endswith("+09223372036854775807.jsonl.gz")


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_object_key_is_well_formed_for_any_timestamp(timestamp: int) -> None:
    key = object_key("order-placed", 1, 42, timestamp)
    parts = key.split("/")
    assert [p.split("=")[0] for p in parts[2:6]] == ["year", "month", "day", "hour"]
    assert [len(p.split("=")[1]) for p in parts[2:6]] == [4, 2, 2, 2]


# --- lines -------------------------------------------------------------------------------------


def test_non_utf8_key_and_header_are_base64_and_signed_header_bytes_are_read_unsigned() -> None:
    raw = msk_record(PlainRecord(b"\xff\xfe", b"{}", headers=[("trace", b"\x80abc")]))
    raw["headers"].append({"java-signed": [-1, 104, 105]})
    line = json.loads(archive_line(consumer_record(raw)).data)
    assert (line["key"], line["key_encoding"]) == ("//4=", "base64")
    assert line["headers"] == [
        {"name": "trace", "value": "gGFiYw==", "encoding": "base64"},
        {"name": "java-signed", "value": "/2hp", "encoding": "base64"},
    ]
    assert_line_is_record(line, raw)


def test_repeated_header_names_and_null_header_values_are_kept_in_order() -> None:
    raw = msk_record(PlainRecord(b"k", b"{}", headers=[("a", b"1"), ("a", b"2")]))
    raw["headers"].append({"gone": None})
    line = json.loads(archive_line(consumer_record(raw)).data)
    assert line["headers"] == [
        {"name": "a", "value": "1", "encoding": "utf-8"},
        {"name": "a", "value": "2", "encoding": "utf-8"},
        {"name": "gone", "value": None, "encoding": None},
    ]


def test_empty_key_is_not_a_null_key() -> None:
    line = json.loads(archive_line(consumer_record(msk_record(PlainRecord(b"", b"{}")))).data)
    assert (line["key"], line["key_encoding"]) == ("", "utf-8")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "value is not UTF-8 JSON: JSONDecodeError"),
        (b"not json {", "value is not UTF-8 JSON: JSONDecodeError"),
        (b"\x89PNG", "value is not UTF-8 JSON: UnicodeDecodeError"),
        (b'"just a string"', "value is JSON but a string, not an event object"),
        (b"[1, 2]", "value is JSON but an array, not an event object"),
        (b"null", "value is JSON but null, not an event object"),
        (b'{"total": NaN}', "value is not portable JSON: ValueError"),
        (b'{"total": 1e999}', "value is not portable JSON: ValueError"),
    ],
)
def test_values_that_are_not_event_objects_are_kept_raw(value: bytes, reason: str) -> None:
    raw = msk_record(PlainRecord(b"k", value))
    archived = archive_line(consumer_record(raw))
    line = json.loads(archived.data)
    assert archived.error is not None
    assert archived.error.startswith(reason)
    assert line["error"] == archived.error
    assert (line["value"], line["value_base64"]) == (None, base64.b64encode(value).decode())


@pytest.mark.parametrize("absent", [True, False])
def test_tombstone_has_no_value_and_says_so(absent: bool) -> None:
    raw = msk_record(PlainRecord(b"k", None))
    if absent:
        del raw["value"]
    else:
        raw["value"] = None
    line = json.loads(archive_line(consumer_record(raw)).data)
    assert (line["value"], line["value_base64"]) == (None, None)
    assert line["error"] == "value is null (a tombstone), not an event"


def test_line_is_compact_sorted_ascii_json() -> None:
    raw = msk_record(PlainRecord("ключ".encode(), json.dumps({"b": "ü", "a": 1}).encode()))
    data = archive_line(consumer_record(raw)).data
    assert data.isascii()
    assert b"\n" not in data
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
    assert json.loads(data)["key"] == "ключ"


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_objects = st.dictionaries(
    st.text(),
    st.recursive(
        json_scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=10,
    ),
    max_size=5,
)


@given(
    key=st.none() | st.binary(max_size=64),
    value=st.binary(max_size=256) | json_objects.map(lambda o: json.dumps(o).encode()),
    headers=st.lists(
        st.tuples(st.text(min_size=1, max_size=16), st.none() | st.binary(max_size=32)),
        max_size=4,
    ),
    java_signed_headers=st.booleans(),
    timestamp=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_any_bytes_make_a_line_that_round_trips(
    key: bytes | None,
    value: bytes,
    headers: list[tuple[str, bytes | None]],
    java_signed_headers: bool,
    timestamp: int,
) -> None:
    raw = msk_record(PlainRecord(key, value, headers=headers, timestamp=timestamp))
    raw["headers"] = [{name: None if octets is None else list(octets)} for name, octets in headers]
    if java_signed_headers:
        for chunk in raw["headers"]:
            for name, octets in chunk.items():
                chunk[name] = octets and [o - 256 if o > 127 else o for o in octets]

    archived = archive_line(consumer_record(raw))

    line = json.loads(archived.data)
    assert b"\n" not in archived.data
    assert line["error"] == archived.error
    assert_line_is_record(line, raw)
    store = MemoryStore()
    archive_batch([consumer_record(raw)], store=store)
    [(body, _)] = store.objects.values()
    assert lines_of(body) == [line]
