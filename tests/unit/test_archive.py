"""The archive's domain: lines, object names, gzip bytes, failure semantics. No AWS here."""

from __future__ import annotations

import base64
import contextlib
import gzip
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from unittest.mock import patch

import pytest
from aws_lambda_powertools.utilities.kafka import ConsumerRecords
from aws_lambda_powertools.utilities.kafka.consumer_records import ConsumerRecordRecords
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.msk_event import PlainRecord, msk_record, sample_order_records
from orderstream import archive
from orderstream.archive import (
    OFFSETS_PER_OBJECT,
    ArchivableRecord,
    ArchiveConflictError,
    ArchivedBatch,
    ArchiveStore,
    ForeignObjectError,
    WriteConflict,
    Years,
    archive_line,
    lambda_record,
    object_key,
    object_partition_and_block,
    read_lines,
    value_bytes,
)
from orderstream.events import ORDER_EVENTS
from tests.fakes import ConditionalStore
from tests.samples import load_event
from tests.strategies import examples

HOUR_14 = "topics/order-placed/year=2026/month=11/day=25/hour=14"
SAMPLE_KEYS = {
    f"{HOUR_14}/order-placed+0+00000000000000000000.jsonl.gz",
    f"{HOUR_14}/order-placed+1+00000000000000000000.jsonl.gz",
    f"{HOUR_14}/order-placed+2+00000000000000000000.jsonl.gz",
}


YEARS = Years(2024, 2099)
HOUR_13_MS = 1795611600000  # 2026-11-25T13:00:00Z
# One valid order-placed event, compact as the producer writes it.
EVENT_TEXT = sample_order_records(1, partitions=1)[0].value or b""


def archive_batch(
    records: Iterable[ArchivableRecord],
    store: ArchiveStore,
    years: Years,
    pause: Callable[[float], None] = lambda seconds: None,  # no real waits between rounds
) -> ArchivedBatch:
    return archive.archive_batch(records, store=store, years=years, pause=pause)


def consumer_record(raw: dict[str, Any]) -> ConsumerRecordRecords:
    return ConsumerRecordRecords(raw, schema_config=ORDER_EVENTS)


def three_partition_event() -> dict[str, Any]:
    """msk-orders.json (partitions 0 and 1) plus msk-poison.json (partition 2)."""
    event = load_event("msk-orders.json")
    event["records"] |= load_event("msk-poison.json")["records"]
    return event


def records_of(event: dict[str, Any]) -> list[ConsumerRecordRecords]:
    return list(ConsumerRecords(event, schema_config=ORDER_EVENTS).records)


def plain_records(offsets: Iterable[int], hours: int = 1) -> list[PlainRecord]:
    """Orders-like records at `offsets`, spread over `hours` hours from 13:00."""
    spread = 3_600_000 * hours
    return [
        PlainRecord(
            b"k",
            json.dumps({"offset": o, "note": "an event"}).encode(),
            offset=o,
            timestamp=HOUR_13_MS + (o * 7_919_000) % spread,
        )
        for o in offsets
    ]


def as_lambda(records: Iterable[PlainRecord]) -> list[ConsumerRecordRecords]:
    return [consumer_record(msk_record(r)) for r in records]


def clean_archive(records: Sequence[PlainRecord]) -> dict[str, tuple[bytes, dict[str, str]]]:
    """The archive one delivery of `records` in a single batch writes to an empty bucket."""
    store = ConditionalStore()
    archive_batch(as_lambda(records), store=store, years=YEARS)
    return store.contents()


def archived_offsets(store: ConditionalStore) -> list[int]:
    """Every offset in the archive, as often as it is there."""
    return sorted(
        json.loads(line)["offset"]
        for body, _ in store.contents().values()
        for line in read_lines(body)
    )


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
        assert base64.b64decode(line["value_base64"]) == base64.b64decode(raw_value)
        if line["error"] is None:  # a JSON object with line breaks, embedded re-serialised
            assert line["value"] == json.loads(base64.b64decode(raw_value))
            assert b"\n" in base64.b64decode(raw_value) or b"\r" in base64.b64decode(raw_value)
        else:
            assert line["value"] is None
    else:
        assert line["value"] == json.loads(base64.b64decode(raw_value))
        assert isinstance(line["value"], dict)


def assert_rebuilds(rebuilt: dict[str, Any], raw: dict[str, Any]) -> None:
    """A record rebuilt from the archive is the one Lambda sent: same fields, same bytes."""

    def decoded(text: str | None) -> bytes | None:
        return None if text is None else base64.b64decode(text)

    assert list(rebuilt) == [k for k in LAMBDA_FIELDS if k in raw or k == "value"]
    for name in ("topic", "partition", "offset", "timestamp", "timestampType"):
        assert rebuilt[name] == raw[name]
    assert decoded(rebuilt.get("key")) == decoded(raw.get("key"))
    assert decoded(rebuilt["value"]) == decoded(raw.get("value"))
    assert [
        (name, None if octets is None else bytes(octets))
        for h in rebuilt["headers"]
        for name, octets in h.items()
    ] == [(name, header_bytes(octets)) for h in raw["headers"] for name, octets in h.items()]


LAMBDA_FIELDS = (
    "topic",
    "partition",
    "offset",
    "timestamp",
    "timestampType",
    "key",
    "value",
    "headers",
)


def test_the_guide_sample_and_our_samples_rebuild_from_their_lines() -> None:
    for name in (
        "msk-guide-sample.json",
        "msk-orders.json",
        "msk-poison.json",
        "msk-null-key.json",
    ):
        for group in load_event(name)["records"].values():
            for raw in group:
                data = archive_line(consumer_record(raw)).data
                assert_rebuilds(lambda_record(data), raw)


# --- batches -----------------------------------------------------------------------------------


def test_three_partitions_give_three_objects_whose_lines_are_the_records() -> None:
    event = three_partition_event()
    store = ConditionalStore()

    outcome = archive_batch(records_of(event), store=store, years=YEARS)

    assert set(store.objects) == SAMPLE_KEYS
    assert outcome.summary() == {
        "archived": 8,
        "added": 8,
        "poison": 1,
        "objects": 3,
        "bytes": sum(len(body) for body, _ in store.contents().values()),
        "conflicts": 0,
    }
    for group in event["records"].values():
        first = group[0]
        block = first["offset"] - first["offset"] % OFFSETS_PER_OBJECT
        key = f"{HOUR_14}/order-placed+{first['partition']}+{block:020d}.jsonl.gz"
        body, metadata = store.contents()[key]
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


def test_same_batch_twice_reads_and_writes_nothing_new() -> None:
    store = ConditionalStore()
    archive_batch(records_of(three_partition_event()), store=store, years=YEARS)
    first, puts = store.contents(), store.puts

    outcome = archive_batch(records_of(three_partition_event()), store=store, years=YEARS)

    assert store.contents() == first
    assert store.puts == puts  # nothing new: no write, so no new S3 version either
    assert (outcome.archived, outcome.added, outcome.written) == (8, 0, ())


def test_gzip_header_carries_no_time_or_name() -> None:
    store = ConditionalStore()
    archive_batch(records_of(load_event("msk-null-key.json")), store=store, years=YEARS)
    [(body, _)] = store.contents().values()
    magic, method, flags, mtime = body[:2], body[2], body[3], body[4:8]
    assert (magic, method, flags, mtime) == (b"\x1f\x8b", 8, 0, b"\0\0\0\0")


def test_objects_are_compressed_at_level_6_the_same_bytes_every_time() -> None:
    """Level 6, zlib's default, is the archive's format as much as its lines are: a batch
    archived again must give the same bytes (gzip writes XFL 2 at level 9, 4 at level 1)."""
    store = ConditionalStore()
    archive_batch(as_lambda(plain_records(range(200))), store=store, years=YEARS)
    for body, _ in store.contents().values():
        assert body[8] == 0  # XFL: neither the best nor the fastest level
        assert gzip.compress(gzip.decompress(body), compresslevel=6, mtime=0) == body


def test_poison_record_is_archived_raw_with_its_error_between_good_ones() -> None:
    event = load_event("msk-poison.json")
    store = ConditionalStore()

    outcome = archive_batch(records_of(event), store=store, years=YEARS)

    [archived] = outcome.objects
    assert (archived.records, archived.poison, archived.poison_added) == (3, 1, 1)
    [(offset, error)] = archived.poison_samples
    assert offset == 241
    assert error.startswith("value is not UTF-8 JSON: UnicodeDecodeError")
    good, poison, good_again = lines_of(store.contents()[archived.key][0])
    assert poison["value"] is None
    assert poison["value_base64"] == event["records"]["order-placed-2"][1]["value"]
    assert poison["error"] == error
    assert good["error"] is None
    assert good["value"]["order"]["order_id"] == good["key"]
    assert good_again["error"] is None


def test_null_key_is_kept_as_null() -> None:
    event = load_event("msk-null-key.json")
    store = ConditionalStore()

    archive_batch(records_of(event), store=store, years=YEARS)

    [(body, _)] = store.contents().values()
    [line] = lines_of(body)
    assert (line["key"], line["key_encoding"]) == (None, None)
    assert line["error"] is None
    assert_line_is_record(line, event["records"]["order-placed-0"][0])


def test_empty_batch_reads_and_writes_nothing() -> None:
    store = ConditionalStore()
    outcome = archive_batch([], store=store, years=YEARS)
    assert outcome == ArchivedBatch(())
    assert outcome.summary() == {
        "archived": 0,
        "added": 0,
        "poison": 0,
        "objects": 0,
        "bytes": 0,
        "conflicts": 0,
    }
    assert (store.gets, store.puts) == (0, 0)


def test_failed_put_raises_and_the_retry_completes_the_same_objects() -> None:
    failing = ConditionalStore()
    second = sorted(SAMPLE_KEYS)[1]
    failing.fail = lambda key: key == second
    with pytest.raises(ConnectionError):
        archive_batch(records_of(three_partition_event()), store=failing, years=YEARS)
    # Objects go out in key order: partition 0 was written, 1 failed, 2 never ran.
    assert set(failing.objects) == {min(SAMPLE_KEYS)}

    failing.fail = lambda key: False
    archive_batch(records_of(three_partition_event()), store=failing, years=YEARS)
    clean = ConditionalStore()
    archive_batch(records_of(three_partition_event()), store=clean, years=YEARS)
    assert failing.contents() == clean.contents()


def test_a_redelivery_that_shrinks_keeps_the_records_a_bigger_one_wrote() -> None:
    """The old layout lost 151-200 here: 100-200 then 100-150 overwrote under one name."""
    records = plain_records(range(100, 201))
    store = ConditionalStore()

    archive_batch(as_lambda(records), store=store, years=YEARS)
    archive_batch(as_lambda(records[:51]), store=store, years=YEARS)

    assert archived_offsets(store) == list(range(100, 201))
    assert store.contents() == clean_archive(records)


def test_a_redelivery_that_starts_inside_an_archived_range_adds_no_second_copy() -> None:
    records = plain_records(range(0, 60))
    store = ConditionalStore()

    archive_batch(as_lambda(records[:40]), store=store, years=YEARS)
    archive_batch(as_lambda(records[25:]), store=store, years=YEARS)

    assert archived_offsets(store) == list(range(60))
    assert store.contents() == clean_archive(records)


def test_a_batch_across_blocks_and_hours_files_each_record_by_its_own_offset_and_hour() -> None:
    before = 1795615199999  # 2026-11-25T13:59:59.999Z
    records = [
        PlainRecord(b"k", b"{}", offset=998, timestamp=before),
        PlainRecord(b"k", b"{}", offset=999, timestamp=before + 1),
        PlainRecord(b"k", b"{}", offset=1000, timestamp=before),  # producer clocks disagree
        PlainRecord(b"k", b"{}", offset=1001, timestamp=before + 2),
    ]
    store = ConditionalStore()

    archive_batch(as_lambda(records), store=store, years=YEARS)

    day = "topics/order-placed/year=2026/month=11/day=25"
    assert {
        key: [line["offset"] for line in lines_of(body)]
        for key, (body, _) in store.contents().items()
    } == {
        f"{day}/hour=13/order-placed+0+00000000000000000000.jsonl.gz": [998],
        f"{day}/hour=14/order-placed+0+00000000000000000000.jsonl.gz": [999],
        f"{day}/hour=13/order-placed+0+00000000000000001000.jsonl.gz": [1000],
        f"{day}/hour=14/order-placed+0+00000000000000001000.jsonl.gz": [1001],
    }


# --- concurrent writers --------------------------------------------------------------------------


def test_a_writer_that_slips_in_between_read_and_write_is_merged_not_overwritten() -> None:
    records = plain_records(range(0, 30))
    store = ConditionalStore()
    archive_batch(as_lambda(records[:5]), store=store, years=YEARS)

    def other_poller(key: str) -> None:
        archive_batch(as_lambda(records[10:30]), store=store, years=YEARS)

    store.before_put = other_poller
    outcome = archive_batch(as_lambda(records[1:20]), store=store, years=YEARS)  # reads first

    assert outcome.conflicts == 1
    assert archived_offsets(store) == list(range(30))
    assert store.contents() == clean_archive(records)


def test_409_conditional_request_conflicts_are_retried_and_endless_ones_fail_the_batch() -> None:
    records = plain_records(range(1, 11))  # not the block's first offset: read, then write
    store = ConditionalStore()
    answers = iter([True, True, False])
    store.conflict = lambda key: next(answers, False)
    pauses: list[float] = []
    outcome = archive.archive_batch(
        as_lambda(records), store=store, years=YEARS, pause=pauses.append
    )
    assert outcome.conflicts == 2
    assert len(pauses) == 2  # S3: on a 409, retry; after a pause, so as not to race again
    assert 0 <= pauses[0] <= 0.05
    assert 0 <= pauses[1] <= 0.1
    assert store.contents() == clean_archive(records)

    store.conflict = lambda key: True
    with pytest.raises(ArchiveConflictError, match="8 conditional writes"):
        archive_batch(as_lambda(plain_records(range(11, 20))), store=store, years=YEARS)
    assert archived_offsets(store) == list(range(1, 11))


def test_a_whole_object_delivered_again_is_found_archived_not_counted_as_written() -> None:
    """The common redelivery: the batch that created an object comes again, whole."""
    store = ConditionalStore()
    records = plain_records(range(0, 5))
    archive_batch(as_lambda(records), store=store, years=YEARS)
    contents = store.contents()
    outcome = archive_batch(as_lambda(records), store=store, years=YEARS)
    assert (outcome.archived, outcome.added, outcome.written) == (5, 0, ())
    assert [o.size for o in outcome.objects] == [0]  # nothing written, no bytes
    assert outcome.bytes_written == 0
    assert store.contents() == contents


@pytest.mark.parametrize(("first", "gets"), [(1000, 0), (1001, 1)])
def test_a_batch_holding_its_blocks_first_offset_creates_the_object_without_a_read(
    first: int, gets: int
) -> None:
    store = ConditionalStore()
    archive_batch(as_lambda(plain_records(range(first, first + 5))), store=store, years=YEARS)
    assert (store.gets, store.puts) == (gets, 1)


def test_the_pause_after_each_lost_write_doubles_from_50_ms_up_to_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each pause is drawn between 0 and its cap; drawing the cap itself shows the caps."""
    monkeypatch.setattr("orderstream.archive.random.uniform", lambda low, high: high)
    store = ConditionalStore()
    answers = iter([True] * 7)
    store.conflict = lambda key: next(answers, False)
    pauses: list[float] = []
    archive.archive_batch(
        as_lambda(plain_records(range(1, 4))), store=store, years=YEARS, pause=pauses.append
    )
    assert pauses == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_a_create_first_guess_that_meets_the_object_is_not_counted_as_a_conflict() -> None:
    store = ConditionalStore()
    archive_batch(as_lambda(plain_records(range(0, 5))), store=store, years=YEARS)
    outcome = archive_batch(as_lambda(plain_records(range(0, 9))), store=store, years=YEARS)
    assert (outcome.conflicts, outcome.added) == (0, 4)
    assert store.refused == 1  # the guess was tried, refused, then the merge read and wrote


def test_two_pollers_at_once_on_real_threads_leave_every_offset_once() -> None:
    """Real threads, whatever interleaving the scheduler gives them (the deterministic ones are
    in the property test below): no lost update, no error, every offset once."""
    records = plain_records(range(0, 3000, 1), hours=3)
    ranges = [(0, 2000), (500, 3000), (1500, 2500), (0, 3000)]
    for first, second in itertools.combinations(ranges, 2):
        store = ConditionalStore()
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def deliver(
            span: tuple[int, int],
            store: ConditionalStore = store,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                barrier.wait(30)
                archive_batch(as_lambda(records[span[0] : span[1]]), store=store, years=YEARS)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=deliver, args=(span,)) for span in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        covered = sorted({*range(*first), *range(*second)})
        assert archived_offsets(store) == covered
        assert store.contents() == clean_archive([records[i] for i in covered])


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[PlainRecord], list[Delivery]]:
    """A partition's records and a sequence of deliveries of them: any ranges, in any order,
    some failing partway (then repeated, as the mapping does), some overlapping another that
    runs in the middle of them."""
    base = draw(st.sampled_from([0, 7, 993]))
    count = draw(st.integers(1, 30))
    hours = draw(st.lists(st.integers(0, 2), min_size=count, max_size=count))
    records = [
        PlainRecord(
            b"k",
            json.dumps({"n": base + i}).encode() if i % 7 else b"\xff poison",
            offset=base + i,
            timestamp=HOUR_13_MS + hours[i] * 3_600_000 + i,
        )
        for i in range(count)
    ]
    span = st.tuples(st.integers(0, count - 1), st.integers(1, count)).map(
        lambda t: (min(t), max(t[0] + 1, t[1]))
    )
    sequence = draw(
        st.lists(
            st.builds(
                Delivery,
                span=span,
                fails_after_puts=st.none() | st.integers(0, 3),
                interleaved=st.none() | span,
                conflicts=st.integers(0, 2),
                lost=st.sampled_from([None, "412", "connection"]),
            ),
            min_size=1,
            max_size=6,
        )
    )
    return records, sequence


@dataclass(frozen=True)
class Delivery:
    span: tuple[int, int]
    fails_after_puts: int | None  # the connection drops after this many successful writes
    interleaved: tuple[int, int] | None  # another poller's delivery, run inside this one
    conflicts: int  # 409s S3 answers first
    lost: str | None  # the first write's answer is lost: botocore's retry meets a 412, or fails


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries(), st.sampled_from([3, 10, OFFSETS_PER_OBJECT]))
def test_any_sequence_of_deliveries_gives_the_archive_of_one_clean_delivery(
    case: tuple[list[PlainRecord], list[Delivery]], block: int
) -> None:
    records, sequence = case
    store = ConditionalStore()
    delivered: set[int] = set()
    with patch.object(archive, "OFFSETS_PER_OBJECT", block):
        for delivery in sequence:
            batch = records[delivery.span[0] : delivery.span[1]]
            if delivery.interleaved is not None:
                other = records[delivery.interleaved[0] : delivery.interleaved[1]]

                def other_poller(key: str, other: list[PlainRecord] = other) -> None:
                    # The other poller has its own connection: this one's drops are not its.
                    fail, store.fail = store.fail, lambda key: False
                    lost, store.lost = store.lost, lambda key: None
                    archive_batch(as_lambda(other), store=store, years=YEARS)
                    delivered.update(r.offset for r in other)
                    store.fail, store.lost = fail, lost

                store.before_put = other_poller
            refusals: Iterator[int] = iter(range(delivery.conflicts))
            store.conflict = lambda key: next(refusals, None) is not None  # noqa: B023
            losses: Iterator[Exception] = iter(
                [WriteConflict("412 on botocore's retry")]
                if delivery.lost == "412"
                else [ConnectionError("read timeout, retries spent")]
                if delivery.lost == "connection"
                else []
            )
            store.lost = lambda key: next(losses, None)  # noqa: B023
            if delivery.fails_after_puts is not None:
                writes: int = store.puts + delivery.fails_after_puts
                store.fail = lambda key: store.puts >= writes  # noqa: B023
                with contextlib.suppress(ConnectionError):
                    archive_batch(as_lambda(batch), store=store, years=YEARS)
                store.fail = lambda key: False  # the mapping redelivers the failed batch
            store.before_put = None
            with contextlib.suppress(ConnectionError):  # its write landed; the answer did not
                archive_batch(as_lambda(batch), store=store, years=YEARS)
            store.lost = lambda key: None
            archive_batch(as_lambda(batch), store=store, years=YEARS)  # the mapping's retry
            delivered.update(r.offset for r in batch)

        expected = [r for r in records if r.offset in delivered]
        assert archived_offsets(store) == sorted(delivered)
        assert store.contents() == clean_archive(expected)


# --- object names ------------------------------------------------------------------------------


def test_object_key_pads_like_kafka_connect_with_the_blocks_first_offset() -> None:
    hour = datetime(2026, 11, 25, 14, tzinfo=UTC)
    assert object_key("orders", 3, 5, hour) == (
        "topics/orders/year=2026/month=11/day=25/hour=14/orders+3+00000000000000000000.jsonl.gz"
    )
    assert object_key("orders", 3, 2005, hour).endswith("+00000000000000002000.jsonl.gz")
    assert object_key("orders", 0, 2**63 - 1, hour).endswith("+09223372036854775000.jsonl.gz")


@pytest.mark.parametrize(
    ("timestamp", "hour"),
    [
        (-1, "year=2024/month=01/day=01/hour=00"),  # "no timestamp" from an old client
        (0, "year=2024/month=01/day=01/hour=00"),
        (1704067199999, "year=2024/month=01/day=01/hour=00"),  # the last ms of 2023
        (1704067200000, "year=2024/month=01/day=01/hour=00"),
        (1795615328000, "year=2026/month=11/day=25/hour=14"),
        (4102444800000, "year=2099/month=12/day=31/hour=23"),  # 2100-01-01
        (2**63 - 1, "year=2099/month=12/day=31/hour=23"),
        (-(2**63), "year=2024/month=01/day=01/hour=00"),
    ],
)
def test_records_dated_outside_the_tables_years_are_filed_at_its_edges(
    timestamp: int, hour: str
) -> None:
    store = ConditionalStore()
    record = PlainRecord(b"k", b"{}", offset=3, timestamp=timestamp)
    archive_batch(as_lambda([record]), store=store, years=YEARS)
    [key] = store.objects
    assert f"/{hour}/" in key
    [line] = lines_of(store.contents()[key][0])
    assert line["timestamp"] == timestamp  # the record keeps its own time


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_every_key_lies_inside_the_projected_years(timestamp: int) -> None:
    key = object_key("order-placed", 1, 42, YEARS.hour_of(timestamp))
    parts = dict(p.split("=") for p in key.split("/")[2:6])
    assert YEARS.first <= int(parts["year"]) <= YEARS.last
    assert [len(v) for v in parts.values()] == [4, 2, 2, 2]


INSIDE_THE_YEARS = st.integers(
    min_value=int(datetime(YEARS.first, 1, 1, tzinfo=UTC).timestamp() * 1000),
    max_value=int(datetime(YEARS.last + 1, 1, 1, tzinfo=UTC).timestamp() * 1000) - 1,
)


@given(INSIDE_THE_YEARS, st.integers(min_value=0, max_value=2**40))
def test_an_objects_date_fields_are_its_records_utc_hour(timestamp: int, offset: int) -> None:
    """What must hold, stated directly: inside the table's years a record is filed under the
    year, month, day and hour of its own timestamp in UTC, whatever the machine's zone."""
    store = ConditionalStore()
    record = PlainRecord(b"k", b"{}", offset=offset, timestamp=timestamp)
    archive_batch(as_lambda([record]), store=store, years=YEARS)
    [key] = store.objects
    at = datetime.fromtimestamp(timestamp / 1000, tz=UTC)
    fields = dict(part.split("=") for part in key.split("/")[2:6])
    assert fields == {
        "year": f"{at.year:04d}",
        "month": f"{at.month:02d}",
        "day": f"{at.day:02d}",
        "hour": f"{at.hour:02d}",
    }
    assert object_partition_and_block(key) == (0, offset - offset % OFFSETS_PER_OBJECT)


@pytest.mark.parametrize("text", ["2024", "2099,2024", "x,y", "1969,2000", "", "2024,10000"])
def test_years_refuse_what_is_not_an_ascending_range(text: str) -> None:
    with pytest.raises(ValueError, match="archive years"):
        Years.parse(text)


def test_years_take_the_whole_range_from_1970_to_9999_and_a_single_year() -> None:
    assert Years.parse("1970,9999") == Years(1970, 9999)
    assert Years.parse("2026,2026") == Years(2026, 2026)
    with pytest.raises(ValueError, match="archive years") as refused:
        Years.parse("2024,10000")
    assert (
        str(refused.value) == "archive years '2024,10000' are not an ascending range of 1970..9999"
    )


def test_a_line_whose_value_is_not_its_last_field_is_refused() -> None:
    raw = next(iter(load_event("msk-orders.json")["records"].values()))[0]
    line = archive_line(consumer_record(raw)).data
    assert value_bytes(line) == base64.b64decode(raw["value"])  # an event: kept as JSON text
    for broken in (line + b" ", line.replace(b'"topic"', b'"topic" ', 1)):
        with pytest.raises(ValueError, match="not an archive line") as refused:
            value_bytes(broken)
        assert str(refused.value) == "not an archive line: the value is not its last field"


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
        (b'{"total": NaN}', "value is not portable JSON: NaN is not JSON"),
        (b'{"total": 1e999}', "value is not portable JSON: 1e999 does not fit a double"),
        (
            b'{"total": 1' + b"0" * 50 + b"e999}",
            "value is not portable JSON: 1" + "0" * 39 + " does not fit a double",
        ),
        (b'{"a": 1, "a": 2}', "value is not portable JSON: repeated key 'a'"),
        (b'{"o": {"a": 1, "b": {}, "a": 2}}', "value is not portable JSON: repeated key 'a'"),
        (b'{"b": 1, "a": 2, "a": 3}', "value is not portable JSON: repeated key 'a'"),
        (b"\xef\xbb\xbf{}", "value is not UTF-8 JSON: JSONDecodeError"),  # a byte-order mark
        (b"[" * 100_000, "value is not portable JSON: nested too deeply"),
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


def test_a_value_that_is_not_strict_base64_is_kept_as_it_came_not_decoded_leniently() -> None:
    """ "e30=" is {} in base64: a lenient decoder would drop the "!" and read an object."""
    raw = msk_record(PlainRecord(b"k", b"{}"))
    raw["value"] = "e30=!"
    line = json.loads(archive_line(consumer_record(raw)).data)
    assert line["error"] == "value is not valid base64: Excess data after padding"
    assert (line["value"], line["value_base64"]) == (None, "e30=!")


def test_a_key_that_is_not_base64_is_kept_as_it_came_and_named_in_the_error() -> None:
    raw = msk_record(PlainRecord(b"k", EVENT_TEXT))
    raw["key"] = "not base64!"
    archived = archive_line(consumer_record(raw))
    line = json.loads(archived.data)
    key_error = "key is not valid base64: Only base64 data is allowed"
    assert (line["key"], line["key_encoding"]) == ("not base64!", "base64")
    assert archived.error == line["error"]
    assert line["error"].startswith(key_error)

    raw["value"] = base64.b64encode(b"[]").decode()  # a bad value too: both are named
    line = json.loads(archive_line(consumer_record(raw)).data)
    assert line["error"].startswith("value is JSON but an array, not an event object; " + key_error)


def test_a_null_header_is_kept_and_the_headers_after_it_too() -> None:
    raw = msk_record(PlainRecord(b"k", EVENT_TEXT))
    raw["headers"] = [{"trace": None, "source": [104, 105]}, {"after": [33]}]
    line = json.loads(archive_line(consumer_record(raw)).data)
    assert line["headers"] == [
        {"name": "trace", "value": None, "encoding": None},
        {"name": "source", "value": "hi", "encoding": "utf-8"},
        {"name": "after", "value": "!", "encoding": "utf-8"},
    ]


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


def test_an_event_keeps_its_original_text_as_the_lines_last_field() -> None:
    event = json.loads(EVENT_TEXT)
    text = json.dumps(event, separators=(", ", ":\t"), ensure_ascii=False).encode()
    raw = msk_record(PlainRecord("ключ".encode(), text))
    data = archive_line(consumer_record(raw)).data
    line = json.loads(data)
    assert b"\n" not in data
    assert data.endswith(b',"value":' + text + b"}")
    assert value_bytes(data) == text
    assert line["value"] == event
    assert (line["value_base64"], line["error"]) == (None, None)
    assert list(line)[:5] == ["topic", "partition", "offset", "timestamp", "timestamp_type"]
    assert line["key"] == "ключ"


@pytest.mark.parametrize("indent", ["\n", "\r\n", "\u2028"])
def test_an_event_with_line_breaks_is_embedded_reserialised_with_its_bytes_beside(
    indent: str,
) -> None:
    event = json.loads(EVENT_TEXT)
    if indent == "\u2028":  # inside a string: a separator some readers split lines on
        event["correlation_id"] = "req-0"
        event["order"]["customer"]["name"] = "Ada\u2028Lovelace"
        text = json.dumps(event, ensure_ascii=False).encode()
    else:
        text = json.dumps(event, indent=2).replace("\n", indent).encode()
    data = archive_line(consumer_record(msk_record(PlainRecord(b"k", text)))).data
    line = json.loads(data)
    assert b"\n" not in data
    assert b"\r" not in data
    assert "\u2028".encode() not in data
    assert (line["value"], line["error"]) == (event, None)
    assert value_bytes(data) == text
    # One form whatever the producer's layout: sorted keys, compact, ASCII (U+2028 escaped).
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
    assert data.endswith(b',"value":' + canonical + b"}")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda e: e.pop("order"), "order: Field required"),
        (lambda e: e.__setitem__("order", []), "order: Input should be"),
        (lambda e: e.__setitem__("Order", {}), "Order: Extra inputs are not permitted"),
        (lambda e: e.__setitem__("schema_version", 2**40), "schema_version: Input should be 1"),
        (lambda e: e["order"]["items"][0].__setitem__("quantity", 10**30), "quantity"),
    ],
)
def test_json_objects_the_tables_struct_cannot_read_are_kept_raw_as_poison(
    change: Callable[[dict[str, Any]], object], reason: str
) -> None:
    """Only a valid event reaches the `value` struct column: a row of another shape (a type the
    struct does not declare, an integer beyond its int, keys differing in case) could fail
    every Athena query over its hour."""
    event = json.loads(EVENT_TEXT)
    change(event)
    text = json.dumps(event).encode()
    archived = archive_line(consumer_record(msk_record(PlainRecord(b"k", text))))
    line = json.loads(archived.data)
    assert line["value"] is None
    assert base64.b64decode(line["value_base64"]) == text
    assert archived.error is not None
    assert archived.error.startswith("value is not a valid order-placed event: ")
    assert reason in archived.error


def test_a_value_nested_too_deep_is_poison_and_its_object_stays_mergeable() -> None:
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    store = ConditionalStore()
    first = PlainRecord(b"k", deep, offset=1, timestamp=HOUR_13_MS)
    archive_batch(as_lambda([first]), store=store, years=YEARS)
    later = PlainRecord(b"k", EVENT_TEXT, offset=2, timestamp=HOUR_13_MS)
    archive_batch(as_lambda([later]), store=store, years=YEARS)
    assert archived_offsets(store) == [1, 2]


@pytest.mark.parametrize(
    "stored",
    [
        b"not gzip at all",
        gzip.compress(b'{"error":null,"offset":5,"topic":"order-placed"}\n'),  # older layout
        gzip.compress(b"[1, 2, 3]\n"),
        # Our head, but no error field; an error field, but not our head; not closed.
        gzip.compress(b'{"topic":"order-placed","partition":0,"offset":5,"value":{}}\n'),
        gzip.compress(b'{"partition":0,"topic":"order-placed","offset":5,"error":null}\n'),
        gzip.compress(b'{"topic":"order-placed","partition":0,"offset":5,"error":null,\n'),
    ],
    ids=["not-gzip", "older-layout", "not-our-lines", "no-error", "not-our-head", "not-closed"],
)
def test_an_object_this_archive_did_not_write_is_never_merged_into(stored: bytes) -> None:
    store = ConditionalStore()
    record = PlainRecord(b"k", EVENT_TEXT, offset=7, timestamp=HOUR_13_MS)
    key = object_key("order-placed", 0, 7, YEARS.hour_of(HOUR_13_MS))
    store.objects[key] = (stored, {}, '"foreign"')
    with pytest.raises(ForeignObjectError, match=re.escape(key)):
        archive_batch(as_lambda([record]), store=store, years=YEARS)
    assert store.objects[key][0] == stored


def test_a_foreign_line_is_named_by_its_first_80_bytes() -> None:
    line = b'{"topic":"order-placed","partition":0,"offset":5,"value":' + b"9" * 100 + b"}"
    with pytest.raises(ForeignObjectError) as refused:
        archive.line_facts("the/key", line)
    assert str(refused.value) == f"the/key: a line this archive did not write: {line[:80]!r}"


def test_a_tombstone_gives_back_no_value_bytes() -> None:
    data = archive_line(consumer_record(msk_record(PlainRecord(b"k", None)))).data
    assert value_bytes(data) is None


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
    assert "\u2028".encode() not in archived.data
    assert line["error"] == archived.error
    assert_line_is_record(line, raw)
    original = raw.get("value")
    assert value_bytes(archived.data) == (None if original is None else base64.b64decode(original))
    assert_rebuilds(lambda_record(archived.data), raw)
    store = ConditionalStore()
    archive_batch([consumer_record(raw)], store=store, years=YEARS)
    [(body, _)] = store.contents().values()
    assert lines_of(body) == [line]


def test_a_value_lambda_sent_as_invalid_base64_is_kept_as_it_came() -> None:
    """Lambda always sends base64; should it not, the line keeps the text rather than the
    bytes a lenient decoder would make of it."""
    assert archive._as_base64("not base64!", None) == "not base64!"
    assert archive._as_base64("aGk=!", None) == "aGk=!"  # a lenient decoder makes "hi" of it
    assert archive._as_base64("aGk=", None) == "aGk="
    assert archive._as_base64("hi", "utf-8") == "aGk="

    raw = msk_record(PlainRecord(b"k", b"x", offset=7))
    raw["value"] = "aGk=!"
    archived = archive_line(consumer_record(raw))
    assert json.loads(archived.data)["value_base64"] == "aGk=!"
    assert archived.error is not None
    assert lambda_record(archived.data)["value"] == "aGk=!"


def test_poison_and_tombstones_go_back_to_lambdas_shape_from_their_lines() -> None:
    poison = archive_line(as_lambda([PlainRecord(b"k", b"\x89PNG not json", offset=5)])[0])
    assert lambda_record(poison.data)["value"] == base64.b64encode(b"\x89PNG not json").decode()
    tombstone = archive_line(as_lambda([PlainRecord(b"k", None, offset=6)])[0])
    rebuilt = lambda_record(tombstone.data)
    assert rebuilt["value"] is None
    assert rebuilt["key"] == base64.b64encode(b"k").decode()
