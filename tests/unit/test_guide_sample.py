"""The Lambda developer guide's own MSK event (events/msk-guide-sample.json) as the yardstick.

The sample is the "Example event" of "Using Lambda with Amazon MSK"
(https://docs.aws.amazon.com/lambda/latest/dg/with-msk.html), copied unchanged. Two things are
held to it:

- the events our emulator builds (`devstack.msk_event`): the same top-level keys, records grouped
  under "<topic>-<partition>", and each record with the guide record's keys and JSON types; where
  the guide shows no case (a null key, a tombstone, a null header value) our choices are asserted
  one by one;
- both consumers: the guide's record (topic "mytopic", a plain-text value, a 2018 timestamp, a
  key that is not UTF-8) goes through the S3 archiver and the email notifier without raising,
  archived as poison and dead-lettered, byte-exact.
"""

from __future__ import annotations

import base64
import json
from types import ModuleType
from typing import Any

import pytest

from devstack.msk_event import PlainRecord, msk_event
from orderstream.archive import read_lines, value_bytes
from orderstream.dead_letter import dead_letter_key
from tests.fakes import LambdaContext
from tests.samples import load_event
from tests.unit.conftest import ARCHIVE_BUCKET, DEAD_LETTER_BUCKET, objects

GUIDE = "msk-guide-sample.json"
ARN = "arn:aws:kafka:eu-west-1:123456789012:cluster/orderstream/6f1a2b3c-s1"
BOOTSTRAP = (
    "b-1.orderstream.kafka.eu-west-1.amazonaws.com:9098,"
    "b-2.orderstream.kafka.eu-west-1.amazonaws.com:9098"
)


def guide() -> dict[str, Any]:
    return load_event(GUIDE)


def guide_record() -> dict[str, Any]:
    [[record]] = guide()["records"].values()
    found: dict[str, Any] = record
    return found


def json_type(value: Any) -> str:
    """The JSON type of a decoded JSON value (bool is not a number here, as in JSON)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    for kind, name in ((float, "number"), (str, "string"), (list, "array"), (dict, "object")):
        if isinstance(value, kind):
            return name
    raise TypeError(f"not a JSON value: {value!r}")


def assert_header_shape(headers: Any, *, allow_null: bool) -> None:
    """A list of one-entry objects, each mapping a string to an array of byte values."""
    assert isinstance(headers, list)
    for header in headers:
        assert isinstance(header, dict)
        assert len(header) == 1
        [(name, octets)] = header.items()
        assert isinstance(name, str)
        if octets is None and allow_null:
            continue
        assert isinstance(octets, list)
        assert all(json_type(o) == "integer" and 0 <= o <= 255 for o in octets)


# ------------------------------------------------------------------------------ the emulator


def emulated() -> dict[str, Any]:
    """Our emulator's event for four records over two partitions of the guide's topic (one with
    headers, one with a null key, a tombstone, one with a null header value), through JSON as
    Lambda delivers it."""
    records = [
        PlainRecord(
            key=b"recordKey",
            value=b"Hello, this is a test.",
            headers=[("headerKey", b"headerValue"), ("binary", b"\x00\xff\x80")],
            topic="mytopic",
            partition=0,
            offset=15,
            timestamp=1545084650987,
        ),
        PlainRecord(key=None, value=b'{"k":"v"}', topic="mytopic", partition=0, offset=16),
        PlainRecord(
            key=b"gone", value=None, topic="mytopic", partition=1, offset=3, timestamp_type=1
        ),
        PlainRecord(
            key=b"k",
            value=b"",
            headers=[("traceparent", None)],
            topic="mytopic",
            partition=1,
            offset=4,
        ),
    ]
    event = msk_event(records, ARN, BOOTSTRAP)
    decoded: dict[str, Any] = json.loads(json.dumps(event))
    return decoded


def by_offset(event: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {r["offset"]: r for chunk in event["records"].values() for r in chunk}


def test_emulated_event_has_the_guide_samples_top_level_shape() -> None:
    sample = guide()
    event = emulated()

    assert list(event) == list(sample)
    assert event["eventSource"] == sample["eventSource"] == "aws:kafka"
    for field in ("eventSourceArn", "bootstrapServers"):
        assert json_type(event[field]) == json_type(sample[field]) == "string"
    # Both give the brokers as one comma-separated string, not a list.
    assert event["bootstrapServers"].split(",") == BOOTSTRAP.split(",")
    assert event["eventSourceArn"].startswith("arn:aws:kafka:")
    assert json_type(event["records"]) == json_type(sample["records"]) == "object"


def test_emulated_records_are_grouped_by_topic_and_partition_as_in_the_guide() -> None:
    sample = guide()
    event = emulated()

    for grouped in (sample, event):
        for group, chunk in grouped["records"].items():
            assert json_type(chunk) == "array"
            assert chunk
            assert all(group == f"{r['topic']}-{r['partition']}" for r in chunk)
    assert list(sample["records"]) == ["mytopic-0"]
    assert list(event["records"]) == ["mytopic-0", "mytopic-1"]
    # Within a partition, in offset order, as read.
    assert [r["offset"] for r in event["records"]["mytopic-0"]] == [15, 16]
    assert [r["offset"] for r in event["records"]["mytopic-1"]] == [3, 4]


def test_emulated_record_with_key_value_and_headers_matches_the_guides_record() -> None:
    reference = guide_record()
    record = by_offset(emulated())[15]

    assert set(record) == set(reference)
    assert {k: json_type(v) for k, v in record.items()} == {
        k: json_type(v) for k, v in reference.items()
    }
    assert {k: json_type(v) for k, v in reference.items()} == {
        "topic": "string",
        "partition": "integer",
        "offset": "integer",
        "timestamp": "integer",
        "timestampType": "string",
        "key": "string",
        "value": "string",
        "headers": "array",
    }
    assert_header_shape(reference["headers"], allow_null=False)
    assert_header_shape(record["headers"], allow_null=False)
    assert record["timestampType"] == reference["timestampType"] == "CREATE_TIME"
    # Same bytes, same encodings: the guide's value and header are what ours carry here.
    assert record["value"] == reference["value"]
    assert record["headers"][0] == reference["headers"][0]
    assert record["headers"][1] == {"binary": [0, 255, 128]}  # unsigned, as the guide's
    assert base64.b64decode(record["key"], validate=True) == b"recordKey"


def test_emulated_null_key_tombstone_and_null_header_are_our_documented_choices() -> None:
    reference = guide_record()
    records = by_offset(emulated())
    null_key, tombstone, null_header = records[16], records[3], records[4]

    # A null key: our emulator leaves "key" out (the guide's sample always has one). Every other
    # field is there, with the guide's JSON type.
    assert "key" not in null_key
    assert set(null_key) == set(reference) - {"key"}
    assert all(json_type(null_key[k]) == json_type(reference[k]) for k in null_key)

    # A tombstone: our emulator keeps "value" as JSON null, never "" (an empty value is a record
    # of its own) and never absent. Every other field has the guide's JSON type.
    assert "value" in tombstone
    assert tombstone["value"] is None
    assert set(tombstone) == set(reference)
    assert all(
        json_type(tombstone[k]) == json_type(reference[k]) for k in tombstone if k != "value"
    )
    assert tombstone["timestampType"] == "LOG_APPEND_TIME"

    # A null header value: our emulator writes the header's entry as JSON null, not [].
    assert null_header["headers"] == [{"traceparent": None}]
    assert_header_shape(null_header["headers"], allow_null=True)
    # ...while an empty value stays an empty string, like any value: base64 of no bytes.
    assert null_header["value"] == ""
    assert set(null_header) == set(reference)


def test_emulator_rebuilds_the_guide_sample_from_its_bytes() -> None:
    """The guide's record, read as bytes by a consumer and rebuilt by our emulator, gives the
    guide's event back. One difference: the guide's key text is not canonical base64 (its last
    character carries bits the 22 bytes do not have), so a re-encoding of the same bytes differs
    in that character."""
    sample = guide()
    reference = guide_record()
    key = base64.b64decode(reference["key"], validate=True)
    rebuilt = msk_event(
        [
            PlainRecord(
                key=key,
                value=base64.b64decode(reference["value"], validate=True),
                headers=[(n, bytes(v)) for h in reference["headers"] for n, v in h.items()],
                topic=reference["topic"],
                partition=reference["partition"],
                offset=reference["offset"],
                timestamp=reference["timestamp"],
                timestamp_type=0,
            )
        ],
        sample["eventSourceArn"],
        sample["bootstrapServers"],
    )

    [[record]] = rebuilt["records"].values()
    assert base64.b64decode(record["key"]) == key
    assert record["key"] != reference["key"]
    assert record["key"] == base64.b64encode(key).decode()
    assert rebuilt == sample | {
        "records": {"mytopic-0": [reference | {"key": record["key"]}]},
    }


# ------------------------------------------------------------------------------ the consumers


def test_archiver_archives_the_guide_record_as_poison_byte_exact(
    handlers: tuple[ModuleType, ModuleType],
) -> None:
    archiver, _ = handlers
    reference = guide_record()

    summary = archiver.lambda_handler(guide(), LambdaContext())

    assert summary["archived"] == 1
    assert summary["poison"] == 1
    stored = objects(ARCHIVE_BUCKET)
    # 1545084650987 is 2018-12-17T22:10:50.987Z, before the Glue table's projected years
    # (template.yaml's Archive/Projection/Years start at 2024): the record is filed under the
    # first hour of the first year, where Athena can see it, and keeps its own timestamp.
    assert list(stored) == [
        "topics/mytopic/year=2024/month=01/day=01/hour=00/mytopic+0+00000000000000000000.jsonl.gz"
    ]
    [line] = list(read_lines(stored[next(iter(stored))]))
    fields = json.loads(line)

    assert (fields["topic"], fields["partition"], fields["offset"]) == ("mytopic", 0, 15)
    assert fields["timestamp"] == 1545084650987
    assert fields["timestamp_type"] == "CREATE_TIME"
    # "Hello, this is a test." is not JSON: poison, kept raw.
    assert fields["error"].startswith("value is not UTF-8 JSON")
    assert fields["value"] is None
    assert fields["value_base64"] == reference["value"]
    assert value_bytes(line) == base64.b64decode(reference["value"]) == b"Hello, this is a test."
    # The key's 22 bytes are not UTF-8, so the archive keeps them as base64 and says so.
    key = base64.b64decode(reference["key"])
    with pytest.raises(UnicodeDecodeError):
        key.decode("utf-8")
    assert fields["key_encoding"] == "base64"
    assert base64.b64decode(fields["key"], validate=True) == key
    assert fields["headers"] == [{"name": "headerKey", "value": "headerValue", "encoding": "utf-8"}]


def test_notifier_dead_letters_the_guide_record_and_fails_nothing(
    handlers: tuple[ModuleType, ModuleType],
) -> None:
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    _, notifier = handlers
    reference = guide_record()

    answer = notifier.lambda_handler(guide(), LambdaContext(timeout_ms=60_000))

    assert answer == {"batchItemFailures": []}
    letters = objects(DEAD_LETTER_BUCKET)
    assert list(letters) == [dead_letter_key(notifier.CONSUMER, "mytopic", 0, 15)]
    letter = json.loads(letters[next(iter(letters))])
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("mytopic", 0, 15)
    assert letter["timestamp"] == 1545084650987
    # Exactly what Lambda delivered: the raw base64 texts and header octets.
    assert letter["value"] == reference["value"]
    assert letter["key"] == reference["key"]
    assert letter["headers"] == reference["headers"]
    assert letter["reason"].startswith("value is not UTF-8 JSON")
    assert letter["consumer"] == notifier.CONSUMER
    assert ses_backends[DEFAULT_ACCOUNT_ID]["eu-west-1"].sent_messages == []
