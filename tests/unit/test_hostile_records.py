"""Hostile Kafka records: random bytes as key, value and headers, through both consumers.

Each example is one MSK event in Lambda's exact shape (devstack.msk_event) fed in-process to the
S3 archiver and to the email notifier, against moto S3, DynamoDB and SES (the confirmation
template from template.yaml). Whatever the records hold, neither handler may raise; the archive
keeps every record, byte-exact, as one line at its offset; every record that is not a usable
`order-placed` event gets exactly one dead letter, byte-exact, and every one that is gets its
email (or is recognised as already sent).
"""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from types import ModuleType
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.msk_event import msk_event
from orderstream.archive import value_bytes
from orderstream.dead_letter import dead_letter_key
from orderstream.events import InvalidEventError, OrderPlaced, from_bytes, to_message
from orderstream.models import Customer, LineItem, Order, compute_total
from tests.fakes import LambdaContext
from tests.strategies import examples
from tests.unit.conftest import ARCHIVE_BUCKET, DEAD_LETTER_BUCKET, objects

TOPIC = "order-placed"
CLUSTER_ARN = "arn:aws:kafka:eu-west-1:123456789012:cluster/orderstream/6f1a2b3c-s1"
BOOTSTRAP = "b-1.orderstream.kafka.eu-west-1.amazonaws.com:9098"
PLACED_AT = datetime(2026, 11, 25, 14, 2, 8, tzinfo=UTC)


# ------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class HostileRecord:
    """A record as kafka-python reads it (what devstack.msk_event takes), plus how Lambda
    presents it: a tombstone's value as null or left out, header bytes signed (Java's)."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    event: OrderPlaced | None = None  # the event the value holds, when it is one
    tombstone: str = "empty"  # for value None: "null", "absent" or "empty" ("", as a lax source)
    signed_headers: bool = False
    topic: str = TOPIC
    partition: int = 0
    offset: int = 0
    timestamp: int = 0
    timestamp_type: int = 0

    @property
    def is_event(self) -> bool:
        """Usable by the notifier: a valid event whose key is absent, empty or its order_id."""
        if self.event is None:
            return False
        return self.key in (None, b"", self.event.order_id.encode())


names = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    str.strip
)


@st.composite
def order_events(draw: st.DrawFn) -> OrderPlaced:
    """A valid event; names hold anything the API accepts, markup and bidi controls included."""
    n = draw(st.integers(min_value=0, max_value=2**40))
    items = [
        LineItem(
            sku=f"SKU-{n}-{i}",
            name=draw(names),
            quantity=draw(st.integers(min_value=1, max_value=1000)),
            unit_price=draw(st.sampled_from(["0", "0.01", "19.95", "9999999.99"])),
        )
        for i in range(draw(st.integers(min_value=1, max_value=3)))
    ]
    order = Order(
        order_id=uuid.UUID(int=n),
        customer=Customer(id=f"c-{n}", email=f"customer{n}@example.com", name=draw(names)),
        items=items,
        currency=draw(st.sampled_from(["EUR", "USD", "JPY"])),
        total=compute_total(items),
    )
    return OrderPlaced.new(order, f"hostile-{n}", occurred_at=PLACED_AT)


json_documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and ±Infinity included: Python writes them, no other reader reads them
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)

MALFORMED = [
    b"",
    b"NaN",
    b'{"a": Infinity}',
    b'{"a": 1, "a": 2}',
    b"[" * 100_000,  # deeper than any JSON reader recurses
    b"[" * 5_000 + b"]" * 5_000,
    b"9" * 5_000,  # longer than Python turns into an int
    b"1e400",
    b"\xef\xbb\xbf{}",  # UTF-8 byte order mark
    '{"order": "caf\u00e9"}'.encode("latin-1"),
    b'"\\ud800"',  # a lone surrogate, escaped
    b"\x00\xff\xfe",
]


@st.composite
def near_miss(draw: st.DrawFn) -> tuple[bytes, None]:
    """A valid event with one thing wrong: JSON, but not an event."""
    document = json.loads(to_message(draw(order_events())).value)
    mutation = draw(st.sampled_from(["total", "money", "extra", "missing", "type", "order_id"]))
    if mutation == "total":
        document["order"]["total"] = str(Decimal(document["order"]["total"]) + 1)
    elif mutation == "money":  # more digits than Decimal's context: once an uncaught error
        huge = draw(st.integers(min_value=10**26, max_value=10**60))
        field = draw(st.sampled_from(["total", "unit_price"]))
        target = document["order"] if field == "total" else document["order"]["items"][0]
        target[field] = draw(st.sampled_from([huge, -huge]))
    elif mutation == "extra":
        document[draw(st.text(max_size=10).filter(lambda k: k not in document))] = 1
    elif mutation == "missing":
        # event_type and schema_version have defaults: a reader may leave them out
        del document[draw(st.sampled_from(["event_id", "occurred_at", "correlation_id", "order"]))]
    elif mutation == "type":
        document["event_type"] = draw(st.text(max_size=12).filter(lambda t: t != "order-placed"))
    else:
        document["order"]["order_id"] = draw(st.text(max_size=40))
    return json.dumps(document).encode(), None


@st.composite
def values(draw: st.DrawFn) -> tuple[bytes | None, OrderPlaced | None]:
    kind = draw(st.sampled_from(["bytes", "json", "malformed", "near-miss", "event", "null"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300)), None
    if kind == "json":
        return json.dumps(draw(json_documents)).encode(), None
    if kind == "malformed":
        return draw(st.sampled_from(MALFORMED)), None
    if kind == "near-miss":
        return draw(near_miss())
    if kind == "event":
        event = draw(order_events())
        return to_message(event).value, event
    return None, None


header_names = st.text(st.characters(codec="utf-8"), max_size=20)
headers = st.lists(st.tuples(header_names, st.none() | st.binary(max_size=40)), max_size=4)


@st.composite
def records(draw: st.DrawFn) -> HostileRecord:
    value, event = draw(values())
    key_choices = [st.none(), st.binary(max_size=60)]
    if event is not None:
        key_choices.append(st.just(event.order_id.encode()))
    return HostileRecord(
        key=draw(st.one_of(key_choices)),
        value=value,
        event=event,
        headers=draw(headers),
        tombstone=draw(st.sampled_from(["null", "absent", "empty"])),
        signed_headers=draw(st.booleans()),
        partition=draw(st.integers(min_value=0, max_value=2)),
        timestamp=draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        timestamp_type=draw(st.sampled_from([0, 1])),
    )


@st.composite
def batches(draw: st.DrawFn) -> list[HostileRecord]:
    """A few records over up to three partitions, offsets increasing in each from anywhere.

    No two usable events share an order_id: two different orders under one order_id are a
    conflict the notifier dead-letters on purpose (test_email_notifier covers it), which this
    test's model of "usable" does not describe."""
    drawn = draw(
        st.lists(
            records(),
            min_size=1,
            max_size=8,
            unique_by=lambda r: r.event.order_id if r.is_event and r.event else object(),
        )
    )
    next_offset = {p: draw(st.integers(min_value=0, max_value=2**62)) for p in range(3)}
    batch = []
    for record in drawn:
        offset = next_offset[record.partition]
        next_offset[record.partition] += 1
        batch.append(replace(record, offset=offset))
    return batch


def lambda_event(batch: list[HostileRecord]) -> dict[str, Any]:
    """Lambda's MSK event: msk_event's, with tombstones, null header values and signed header
    bytes as Lambda may present them."""
    event = msk_event(batch, CLUSTER_ARN, BOOTSTRAP)
    chunks = {name: iter(entries) for name, entries in event["records"].items()}
    for record in batch:
        entry = next(chunks[f"{record.topic}-{record.partition}"])
        if record.value is None and record.tombstone == "null":
            entry["value"] = None
        elif record.value is None and record.tombstone == "absent":
            del entry["value"]
        elif record.value is None and record.tombstone == "empty":
            entry["value"] = ""  # indistinguishable from an empty value: archived as one
        entry["headers"] = [
            {name: None if value is None else _octets(value, signed=record.signed_headers)}
            for name, value in record.headers
        ]
    return event


def _octets(value: bytes, *, signed: bool) -> list[int]:
    return [b - 256 if signed and b > 127 else b for b in value]


# ------------------------------------------------------------------------------ regressions


@pytest.mark.parametrize("field", ["total", "unit_price"])
@pytest.mark.parametrize("amount", [10**40, -(10**40), 10**27])
def test_money_with_more_digits_than_decimal_holds_is_an_invalid_event(
    field: str, amount: int
) -> None:
    """Quantizing 10**40 to cents raised decimal.InvalidOperation, which pydantic does not turn
    into a validation error: the order API answered 500, `from_bytes` raised it raw."""
    item = LineItem(sku="BOOK-001", name="Notes", quantity=2, unit_price="19.95")
    order = Order(
        order_id=uuid.UUID(int=7),
        customer=Customer(id="c-7", email="customer7@example.com", name="Ada"),
        items=[item],
        currency="EUR",
        total=compute_total([item]),
    )
    document = json.loads(to_message(OrderPlaced.new(order, "regression")).value)
    target = document["order"] if field == "total" else document["order"]["items"][0]
    target[field] = amount
    with pytest.raises(InvalidEventError, match=field):
        from_bytes(json.dumps(document).encode(), None)


# ------------------------------------------------------------------------------ the handlers


def emptied(bucket: str) -> None:
    s3 = boto3.client("s3")
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=item["Key"])


def forgotten(table: str) -> None:
    """Each example starts with no confirmation sent: examples reuse order_ids (UUID(int=0)...)
    with other content, which the notifier rightly dead-letters as a reused order_id."""
    dynamodb = boto3.client("dynamodb")
    for item in dynamodb.scan(TableName=table, ProjectionExpression="id")["Items"]:
        dynamodb.delete_item(TableName=table, Key={"id": item["id"]})


def emailed_order_ids() -> set[str]:
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    backend = ses_backends[DEFAULT_ACCOUNT_ID]["eu-west-1"]
    return {
        json.loads(destination["ReplacementTemplateData"])["order_id"]
        for message in backend.sent_messages
        for destination in getattr(message, "destinations", [])
    }


def unsigned(octets: list[int] | None) -> bytes | None:
    return None if octets is None else bytes(o & 0xFF for o in octets)


def decoded(text: str | None, encoding: str | None) -> bytes | None:
    if encoding is None:
        return None
    text = text or ""
    return text.encode() if encoding == "utf-8" else base64.b64decode(text)


@settings(
    max_examples=examples(50),
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # moto, buckets and table serve every example
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(batch=batches())
def test_hostile_records_are_archived_and_dead_lettered_never_raised(
    handlers: tuple[ModuleType, ModuleType], idempotency_table: str, batch: list[HostileRecord]
) -> None:
    archiver, notifier = handlers
    emptied(ARCHIVE_BUCKET)
    emptied(DEAD_LETTER_BUCKET)
    forgotten(idempotency_table)
    event = lambda_event(batch)
    entries = {(r["partition"], r["offset"]): r for c in event["records"].values() for r in c}

    summary = archiver.lambda_handler(json.loads(json.dumps(event)), LambdaContext())
    answer = notifier.lambda_handler(
        json.loads(json.dumps(event)), LambdaContext(timeout_ms=60_000)
    )

    # The archive: every record once, at its offset, byte-exact.
    assert summary["archived"] == len(batch)
    raw_lines = [
        line
        for body in objects(ARCHIVE_BUCKET).values()
        for line in gzip.decompress(body).splitlines()
    ]
    lines = [json.loads(line) for line in raw_lines]
    for raw_line, line in zip(raw_lines, lines, strict=True):  # the value's bytes, exactly
        original = entries[line["partition"], line["offset"]].get("value")
        assert value_bytes(raw_line) == (None if original is None else base64.b64decode(original))
    assert sorted((line["partition"], line["offset"]) for line in lines) == sorted(entries)
    usable = {(r.partition, r.offset) for r in batch if r.is_event}
    for line in lines:
        entry = entries[line["partition"], line["offset"]]
        original_key = entry.get("key")
        assert decoded(line["key"], line["key_encoding"]) == (
            None if original_key is None else base64.b64decode(original_key)
        )
        original_value = entry.get("value")
        if line["value"] is not None:
            assert isinstance(line["value"], dict)
            assert line["value"] == json.loads(base64.b64decode(original_value))
        else:
            assert line["value_base64"] == original_value
            assert line["error"]
        if (line["partition"], line["offset"]) in usable:
            assert line["error"] is None
        assert [(h["name"], decoded(h["value"], h["encoding"])) for h in line["headers"]] == [
            (name, unsigned(octets)) for h in entry["headers"] for name, octets in h.items()
        ]

    # The dead letters: one per record that is not a usable event, byte-exact; the rest mailed.
    assert answer == {"batchItemFailures": []}
    letters = objects(DEAD_LETTER_BUCKET)
    expected = {
        dead_letter_key(notifier.CONSUMER, TOPIC, p, o): entries[p, o]
        for p, o in entries
        if (p, o) not in usable
    }
    assert sorted(letters) == sorted(expected)
    for key, body in letters.items():
        letter, entry = json.loads(body), expected[key]
        assert (letter["partition"], letter["offset"]) == (entry["partition"], entry["offset"])
        assert letter["key"] == entry.get("key")
        assert letter["value"] == entry.get("value")
        assert letter["headers"] == entry["headers"]
        assert letter["reason"]
    assert {r.event.order_id for r in batch if r.is_event and r.event} <= emailed_order_ids()
