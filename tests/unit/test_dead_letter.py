"""Dead letters keep a poison record byte-exact, under a key its redelivery overwrites."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aws_lambda_powertools.utilities.kafka import ConsumerRecords
from aws_lambda_powertools.utilities.kafka.consumer_records import ConsumerRecordRecords
from hypothesis import given
from hypothesis import strategies as st

from orderstream.dead_letter import (
    CONTENT_TYPE,
    MAX_REASON_CHARS,
    dead_letter,
    dead_letter_key,
    lambda_record,
)
from orderstream.events import ORDER_EVENTS
from orderstream.text import clip
from tests.samples import load_event


def records(name: str) -> list[ConsumerRecordRecords]:
    return list(ConsumerRecords(load_event(name), schema_config=ORDER_EVENTS).records)


def raw_record(**fields: Any) -> ConsumerRecordRecords:
    record = {
        "topic": "order-placed",
        "partition": 3,
        "offset": 9,
        "timestamp": 1795615330000,
        "timestampType": "LOG_APPEND_TIME",
        "headers": [],
        **fields,
    }
    return ConsumerRecordRecords(record, schema_config=ORDER_EVENTS)


def test_the_poison_sample_is_kept_byte_exact_with_its_reason() -> None:
    poison = records("msk-poison.json")[1]
    letter = dead_letter(poison, reason="value is not UTF-8 JSON", consumer="email-notifier")

    assert letter.key == "dead-letters/email-notifier/order-placed/2/00000000000000000241.json"
    assert (letter.topic, letter.partition, letter.offset) == ("order-placed", 2, 241)
    document = json.loads(letter.body)
    assert document == {
        "version": 1,
        "consumer": "email-notifier",
        "reason": "value is not UTF-8 JSON",
        "topic": "order-placed",
        "partition": 2,
        "offset": 241,
        "timestamp": 1795615330000,
        "timestamp_type": "CREATE_TIME",
        "key": "NWIwYzRkMWUtOGYyYS00YzNiLTlkN2UtMDAwMDAwMDBmZmZm",
        "value": "iVBORw0KIG5vdCBqc29uIHs=",
        "headers": [{"content-type": list(b"application/json")}],
    }
    assert base64.b64decode(document["value"]) == b"\x89PNG\r\n not json {"
    assert CONTENT_TYPE == "application/json"


def test_a_null_key_and_a_tombstone_are_null_not_empty() -> None:
    without_value = dead_letter(raw_record(), reason="tombstone", consumer="email-notifier")
    null_value = dead_letter(raw_record(value=None), reason="tombstone", consumer="c")

    for letter in (without_value, null_value):
        document = json.loads(letter.body)
        assert document["key"] is None
        assert document["value"] is None
        assert document["timestamp_type"] == "LOG_APPEND_TIME"


def test_headers_stay_raw_in_order_with_repeats_and_nulls() -> None:
    headers = [{"trace": [1, 2]}, {"trace": [3]}, {"empty": None}, {"a": [], "b": [255]}]
    letter = dead_letter(raw_record(headers=headers, value=""), reason="r", consumer="c")

    assert json.loads(letter.body)["headers"] == [
        {"trace": [1, 2]},
        {"trace": [3]},
        {"empty": None},
        {"a": []},
        {"b": [255]},
    ]


def test_the_same_record_and_reason_always_give_the_same_bytes() -> None:
    poison = records("msk-poison.json")[1]
    first = dead_letter(poison, reason="r", consumer="email-notifier")
    again = dead_letter(records("msk-poison.json")[1], reason="r", consumer="email-notifier")

    assert first == again
    assert (
        first.body
        == json.dumps(json.loads(first.body), sort_keys=True, separators=(",", ":")).encode()
    )


def test_keys_sort_by_offset_and_are_separate_per_consumer() -> None:
    keys = [dead_letter_key("email-notifier", "order-placed", 0, offset) for offset in (9, 10, 100)]

    assert keys == sorted(keys)
    assert dead_letter_key("s3-archiver", "order-placed", 0, 9) != keys[0]
    assert (
        dead_letter_key("c", "odd/topic name", 1, 2)
        == "dead-letters/c/odd%2Ftopic%20name/1/00000000000000000002.json"
    )


@pytest.mark.parametrize("consumer", ["", "Email", "email/notifier", "../x", "a" * 64])
def test_a_consumer_name_that_could_break_the_key_is_refused(consumer: str) -> None:
    with pytest.raises(ValueError, match="consumer name"):
        dead_letter_key(consumer, "order-placed", 0, 0)


def test_a_long_reason_is_clipped_and_an_empty_one_replaced() -> None:
    long = dead_letter(raw_record(value=""), reason="x" * 10_000, consumer="c")
    empty = dead_letter(raw_record(value=""), reason="  ", consumer="c")

    assert len(long.reason) == MAX_REASON_CHARS
    assert long.reason.endswith("...")
    assert empty.reason == "no reason given"


@given(
    key=st.none() | st.binary(max_size=64),
    value=st.none() | st.binary(max_size=256),
    offset=st.integers(0, 2**63 - 1),
    reason=st.text(max_size=100),
)
def test_any_record_gets_a_dead_letter_that_gives_its_bytes_back(
    key: bytes | None, value: bytes | None, offset: int, reason: str
) -> None:
    fields: dict[str, Any] = {"offset": offset}
    if key is not None:
        fields["key"] = base64.b64encode(key).decode()
    if value is not None:
        fields["value"] = base64.b64encode(value).decode()
    letter = dead_letter(raw_record(**fields), reason=reason, consumer="email-notifier")

    document = json.loads(letter.body)
    for raw, kept in ((key, document["key"]), (value, document["value"])):
        assert kept is None if raw is None else base64.b64decode(kept) == raw
    assert letter.key.endswith(f"/3/{offset:020d}.json")


def test_a_dead_letter_gives_back_the_record_lambda_sent_key_and_all() -> None:
    poison = records("msk-poison.json")[1]
    document = json.loads(dead_letter(poison, reason="r", consumer="email-notifier").body)
    assert lambda_record(document) == {
        "topic": "order-placed",
        "partition": 2,
        "offset": 241,
        "timestamp": 1795615330000,
        "timestampType": "CREATE_TIME",
        "key": "NWIwYzRkMWUtOGYyYS00YzNiLTlkN2UtMDAwMDAwMDBmZmZm",
        "value": "iVBORw0KIG5vdCBqc29uIHs=",
        "headers": [{"content-type": list(b"application/json")}],
    }
    keyless = lambda_record({**document, "key": None})
    assert "key" not in keyless  # as Lambda sends a record without a key


def test_clip_keeps_text_of_exactly_the_limit_and_cuts_one_more() -> None:
    assert clip("abcde", 5) == "abcde"
    assert clip("abcdef", 5) == "ab..."
