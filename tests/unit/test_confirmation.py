"""The confirmation protocol with in-memory ports: one email per order, whatever is redelivered.

The handler tests (test_email_notifier.py) run the same protocol against moto; these pin down
each rule, fast, with fakes whose behaviour is obvious.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.kafka import ConsumerRecords
from aws_lambda_powertools.utilities.kafka.consumer_records import ConsumerRecordRecords
from hypothesis import given
from hypothesis import strategies as st

from devstack.msk_event import PlainRecord, msk_event
from orderstream.confirmation import (
    MAX_SETTLE_ATTEMPTS,
    Claim,
    ConfirmationReport,
    DeadLetterError,
    LedgerError,
    MailerError,
    RecordRef,
    TimeBudget,
    confirm_batch,
    order_fingerprint,
)
from orderstream.dead_letter import DeadLetter
from orderstream.email_content import (
    ESCAPED_BY_RENDERERS,
    Confirmation,
    confirmation_for,
    inert,
    template_data,
)
from orderstream.events import ORDER_EVENTS, OrderPlaced, to_message
from orderstream.models import Customer, LineItem, Order, compute_total
from orderstream.ses_bulk import (
    MAX_DESTINATIONS_PER_CALL,
    Delivery,
    bulk_request,
    deliveries,
)
from tests.strategies import text

CLUSTER_ARN = "arn:aws:kafka:eu-west-1:123456789012:cluster/orderstream/6f1a2b3c-s1"
BOOTSTRAP = "boot-abcd1234.c1.kafka-serverless.eu-west-1.amazonaws.com:9098"
PLACED_AT = datetime(2026, 11, 25, 14, tzinfo=UTC)

# Handlebars' escapeExpression, which SES applies to every {{value}}.
HANDLEBARS_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&#x27;",
    "`": "&#x60;",
    "=": "&#x3D;",
}


def handlebars_escape(value: str) -> str:
    return "".join(HANDLEBARS_ESCAPES.get(c, c) for c in value)


# ------------------------------------------------------------------ building batches


def order_placed(
    n: int,
    *,
    name: str = "Ada Lovelace",
    email: str | None = None,
    items: list[LineItem] | None = None,
    currency: str = "EUR",
) -> OrderPlaced:
    """Order number `n`: order_id UUID(int=n), customer<n>@example.com, one or two items."""
    items = items or [
        LineItem(sku=f"SKU-{n:04d}", name=f"Item {n}", quantity=1 + n % 3, unit_price="12.50"),
        *([LineItem(sku="GIFT-WRAP", name="Gift wrap", quantity=1, unit_price=2)] * (n % 2)),
    ]
    order = Order(
        order_id=uuid.UUID(int=n),
        customer=Customer(id=f"c-{n}", email=email or f"customer{n}@example.com", name=name),
        items=items,
        currency=currency,
        total=compute_total(items),
    )
    return OrderPlaced.new(order, f"req-{n:04d}", occurred_at=PLACED_AT)


def kafka_records(
    events: Sequence[OrderPlaced], *, partitions: int = 3, first_offset: int = 100
) -> list[PlainRecord]:
    """The events as a producer keyed by order_id spreads them: round-robin here, in order."""
    offsets = dict.fromkeys(range(partitions), first_offset)
    records = []
    for i, event in enumerate(events):
        message = to_message(event)
        partition = i % partitions
        records.append(
            PlainRecord(
                key=message.key,
                value=message.value,
                headers=list(message.headers),
                partition=partition,
                offset=offsets[partition],
            )
        )
        offsets[partition] += 1
    return records


def raw_record(value: bytes | None, *, partition: int = 0, offset: int = 0) -> PlainRecord:
    return PlainRecord(key=None, value=value, partition=partition, offset=offset)


def msk_batch(records: Sequence[PlainRecord]) -> dict[str, Any]:
    return msk_event(records, CLUSTER_ARN, BOOTSTRAP)


def consumer_records(batch: dict[str, Any]) -> list[ConsumerRecordRecords]:
    return list(ConsumerRecords(batch, schema_config=ORDER_EVENTS).records)


# ------------------------------------------------------------------ in-memory ports


class MemoryLedger:
    def __init__(self) -> None:
        self.state: dict[str, str] = {}  # order_id -> "in-progress" | message id
        self.fingerprints: dict[str, str] = {}  # order_id -> fingerprint, once confirmed
        self.failing: set[str] = set()  # operations that raise LedgerError
        #: operation -> how many more calls fail before it works again
        self.failures_left: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []

    def claim(self, order_id: str, fingerprint: str) -> Claim:
        self._call("claim", order_id)
        if order_id not in self.state:
            self.state[order_id] = "in-progress"
            return Claim.CLAIMED
        if self.state[order_id] == "in-progress":
            return Claim.IN_PROGRESS
        return Claim.SENT if self.fingerprints.get(order_id) == fingerprint else Claim.CONFLICT

    def confirm(self, order_id: str, message_id: str, fingerprint: str) -> None:
        self._call("confirm", order_id)
        self.state[order_id] = message_id
        self.fingerprints[order_id] = fingerprint

    def release(self, order_id: str) -> None:
        self._call("release", order_id)
        del self.state[order_id]

    def _call(self, operation: str, order_id: str) -> None:
        self.calls.append((operation, order_id))
        if self.failures_left.get(operation, 0) > 0:
            self.failures_left[operation] -= 1
            raise LedgerError(f"{operation} failed: table unavailable for a moment")
        if operation in self.failing:
            raise LedgerError(f"{operation} failed: table unavailable")


Script = Callable[[int, Sequence[Confirmation]], Sequence[Delivery]]


class MemoryMailer:
    """Delivers everything, unless `script(call_number, confirmations)` answers otherwise;
    `inbox` holds what was actually delivered."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script
        self.calls: list[list[Confirmation]] = []
        self.inbox: list[Confirmation] = []

    def send(self, confirmations: Sequence[Confirmation]) -> Sequence[Delivery]:
        self.calls.append(list(confirmations))
        answers = (
            self.script(len(self.calls), confirmations)
            if self.script
            else [Delivery(message_id=f"m-{c.order_id}") for c in confirmations]
        )
        self.inbox += [c for c, a in zip(confirmations, answers, strict=False) if a.sent]
        return answers


class MemoryDeadLetters:
    def __init__(self, *, failing: bool = False) -> None:
        self.letters: dict[str, DeadLetter] = {}
        self.failing = failing

    def put(self, letter: DeadLetter) -> None:
        if self.failing:
            raise DeadLetterError("bucket unavailable")
        self.letters[letter.key] = letter


@dataclass
class Ports:
    ledger: MemoryLedger = field(default_factory=MemoryLedger)
    mailer: MemoryMailer = field(default_factory=MemoryMailer)
    dead_letters: MemoryDeadLetters = field(default_factory=MemoryDeadLetters)

    slept: list[float] = field(default_factory=list)

    def deliver(self, batch: dict[str, Any], **options: Any) -> ConfirmationReport:
        return confirm_batch(
            consumer_records(batch),
            ledger=self.ledger,
            mailer=self.mailer,
            dead_letters=self.dead_letters,
            consumer="email-notifier",
            **{"sleep": self.slept.append, **options},
        )

    def emails_per_order(self) -> Counter[str]:
        return Counter(c.order_id for c in self.mailer.inbox)


def failed_offsets(outcome: ConfirmationReport) -> set[tuple[int, int]]:
    return {(ref.partition, ref.offset) for ref in outcome.failed}


def position(order_id: str) -> tuple[int, int]:
    """(partition, offset) of order `n` in `kafka_records(...)` with its defaults."""
    n = uuid.UUID(order_id).int
    return n % 3, 100 + n // 3


# ------------------------------------------------------------------ the content


def test_template_data_holds_the_whole_order_as_strings() -> None:
    event = order_placed(1)

    assert template_data(event) == {
        "customer_name": "Ada Lovelace",
        "order_id": "00000000-0000-0000-0000-000000000001",
        "currency": "EUR",
        "total": "27.00",
        "items": [
            {
                "name": "Item 1",
                "sku": "SKU-0001",
                "quantity": "2",
                "unit_price": "12.50",
                "line_total": "25.00",
                "currency": "EUR",
            },
            {
                "name": "Gift wrap",
                "sku": "GIFT-WRAP",
                "quantity": "1",
                "unit_price": "2.00",
                "line_total": "2.00",
                "currency": "EUR",
            },
        ],
    }


def test_markup_in_customer_text_is_made_inert() -> None:
    evil = "<script>alert(\"x\")</script> & <img src=x onerror='y'>`"
    item = LineItem(sku="SKU-1", name=evil, quantity=1, unit_price="1.00")
    data = template_data(order_placed(1, name=evil, items=[item]))

    for value in (data["customer_name"], data["items"][0]["name"]):
        assert not set(value) & ESCAPED_BY_RENDERERS
        assert value == (
            "\uff1cscript\uff1ealert(\uff02x\uff02)\uff1c/script\uff1e \uff06 "
            "\uff1cimg src\uff1dx onerror\uff1d\u2019y\u2019\uff1e\uff40"
        )
    assert inert("O'Brien") == "O\u2019Brien"  # the typographic apostrophe


BIDI_CONTROLS = [*map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))]


@pytest.mark.parametrize("control", BIDI_CONTROLS, ids=[f"U+{ord(c):04X}" for c in BIDI_CONTROLS])
def test_every_bidirectional_control_is_dropped(control: str) -> None:
    assert inert(f"Ada{control}gnirts Lovelace") == "Adagnirts Lovelace"


def test_bidirectional_overrides_are_dropped() -> None:
    assert inert("Ada\u202egnirts\u202c Lovelace\u2066x\u2069") == "Adagnirts Lovelacex"


@given(
    st.text(
        st.characters(
            blacklist_characters=sorted(ESCAPED_BY_RENDERERS) + BIDI_CONTROLS,
            blacklist_categories=["Cs"],
        )
    )
)
def test_safe_customer_text_passes_through_inert_unchanged(value: str) -> None:
    assert inert(value) == value


@given(text)
def test_inert_text_survives_any_html_escaping_unchanged(value: str) -> None:
    made_inert = inert(value)

    assert handlebars_escape(made_inert) == made_inert
    assert inert(made_inert) == made_inert
    assert len(made_inert) <= len(value)


def test_the_recipient_is_the_bare_address_or_the_redirect() -> None:
    event = order_placed(3)

    assert confirmation_for(event).recipient == "customer3@example.com"
    assert confirmation_for(event, "dev-inbox@example.org").recipient == "dev-inbox@example.org"
    assert confirmation_for(event).order_id == str(uuid.UUID(int=3))


def test_a_bulk_request_has_one_destination_per_confirmation() -> None:
    confirmations = [confirmation_for(order_placed(n)) for n in range(2)]
    request = bulk_request(confirmations, sender="orders@example.com", template="t")

    assert request["Source"] == "orders@example.com"
    assert request["Template"] == "t"
    assert request["DefaultTemplateData"] == "{}"
    assert [d["Destination"] for d in request["Destinations"]] == [
        {"ToAddresses": ["customer0@example.com"]},
        {"ToAddresses": ["customer1@example.com"]},
    ]
    assert json.loads(request["Destinations"][1]["ReplacementTemplateData"]) == template_data(
        order_placed(1)
    )
    # Compact: SES counts the template data's bytes against its limits.
    assert request["Destinations"][1]["ReplacementTemplateData"] == json.dumps(
        template_data(order_placed(1)), separators=(",", ":")
    )


@pytest.mark.parametrize("count", [0, MAX_DESTINATIONS_PER_CALL + 1])
def test_a_bulk_request_outside_the_api_limit_is_refused(count: int) -> None:
    confirmations = [confirmation_for(order_placed(n)) for n in range(count)]
    with pytest.raises(ValueError, match="1 to 50 destinations"):
        bulk_request(confirmations, sender="orders@example.com", template="t")


def test_ses_statuses_map_to_sent_retryable_or_permanent() -> None:
    answers = deliveries(
        [
            {"Status": "Success", "MessageId": "m-1"},
            {"MessageId": "m-2"},  # moto's answer
            {"Status": "AccountThrottled", "Error": "Maximum sending rate exceeded."},
            {"Status": "Failed"},
            {"Status": "MessageRejected", "Error": "Email address is on the suppression list"},
            {"Status": "InvalidParameterValue", "Error": "Missing final '@domain'"},
            {},  # neither a status nor a message id
            {"Status": "Success"},  # accepted, though its id is missing
        ]
    )

    assert [(a.sent, a.retryable) for a in answers] == [
        (True, True),
        (True, True),
        (False, True),
        (False, True),
        (False, False),
        (False, False),
        (False, True),
        (True, True),
    ]
    assert answers[1].message_id == "m-2"
    assert answers[2].error == "AccountThrottled: Maximum sending rate exceeded."
    assert answers[6].error == "no status: no detail"
    assert answers[7].message_id == ""


# ------------------------------------------------------------------ the protocol


def test_a_batch_goes_out_in_bulk_calls_of_at_most_50() -> None:
    ports = Ports()
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(n) for n in range(120)])))

    assert [len(call) for call in ports.mailer.calls] == [50, 50, 20]
    assert ports.emails_per_order() == Counter({str(uuid.UUID(int=n)): 1 for n in range(120)})
    assert outcome.summary() == {
        "sent": 120,
        "duplicates": 0,
        "poison": 0,
        "ses_failures": 0,
        "ses_calls": 3,
        "failed_records": 0,
    }
    assert set(ports.ledger.state.values()) == {f"m-{uuid.UUID(int=n)}" for n in range(120)}


def test_a_redelivered_batch_sends_nothing() -> None:
    ports = Ports()
    batch = msk_batch(kafka_records([order_placed(n) for n in range(20)]))
    for _ in range(3):
        outcome = ports.deliver(batch)

    assert len(ports.mailer.inbox) == 20
    assert len(ports.mailer.calls) == 1
    assert (len(outcome.sent), outcome.duplicates) == (0, 20)


def test_the_same_order_twice_in_a_batch_gets_one_email() -> None:
    ports = Ports()
    events = [order_placed(1), order_placed(2), order_placed(1)]
    outcome = ports.deliver(msk_batch(kafka_records(events, partitions=1)))

    assert ports.emails_per_order() == Counter({str(uuid.UUID(int=1)): 1, str(uuid.UUID(int=2)): 1})
    assert (len(outcome.sent), outcome.duplicates, outcome.failed) == (2, 1, set())


def test_a_destination_failing_mid_chunk_is_retried_alone() -> None:
    def second_fails_once(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        return [
            Delivery(error="TransientFailure: try again")
            if call == 1 and i == 1
            else Delivery(message_id=f"m-{c.order_id}")
            for i, c in enumerate(confirmations)
        ]

    ports = Ports(mailer=MemoryMailer(second_fails_once))
    batch = msk_batch(kafka_records([order_placed(n) for n in range(6)]))
    first = ports.deliver(batch)

    victim = ports.mailer.calls[0][1].order_id
    assert failed_offsets(first) == {position(victim)}
    assert first.ses_failures == 1
    assert ("release", victim) in ports.ledger.calls
    assert len(ports.mailer.inbox) == 5

    second = ports.deliver(batch)
    assert [c.order_id for c in ports.mailer.calls[1]] == [victim]
    assert (len(second.sent), second.duplicates, second.failed) == (1, 5, set())
    assert set(ports.emails_per_order().values()) == {1}
    assert len(ports.emails_per_order()) == 6


def test_a_failed_call_releases_its_chunk_and_a_retry_sends_only_that_chunk() -> None:
    def third_call_throttled(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        if call == 3:
            raise MailerError("SendBulkTemplatedEmail failed: Throttling: Maximum sending rate")
        return [Delivery(message_id=f"m-{c.order_id}") for c in confirmations]

    ports = Ports(mailer=MemoryMailer(third_call_throttled))
    events = [order_placed(n) for n in range(120)]
    batch = msk_batch(kafka_records(events))
    first = ports.deliver(batch)

    unsent = {c.order_id for c in ports.mailer.calls[2]}
    assert failed_offsets(first) == set(map(position, unsent))
    assert (len(unsent), first.ses_failures) == (20, 20)
    assert set(first.sent) == {e.order_id for e in events} - unsent
    assert {oid for op, oid in ports.ledger.calls if op == "release"} == unsent
    assert not unsent & ports.ledger.state.keys()

    second = ports.deliver(batch)
    assert {c.order_id for c in ports.mailer.calls[-1]} == unsent
    assert (len(second.sent), second.duplicates, second.failed) == (20, 100, set())
    assert ports.emails_per_order() == Counter({e.order_id: 1 for e in events})


def test_a_permanently_rejected_order_is_dead_lettered_not_retried() -> None:
    def reject_first(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        return [
            Delivery(error="MessageRejected: suppressed", retryable=False)
            if i == 0
            else Delivery(message_id="m")
            for i, _ in enumerate(confirmations)
        ]

    ports = Ports(mailer=MemoryMailer(reject_first))
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(n) for n in range(3)])))

    assert outcome.failed == set()
    assert outcome.ses_failures == 1
    [letter] = ports.dead_letters.letters.values()
    assert letter.key == "dead-letters/email-notifier/order-placed/0/00000000000000000100.json"
    assert letter.reason == "SES rejected the confirmation: MessageRejected: suppressed"
    assert str(uuid.UUID(int=0)) not in ports.ledger.state  # released: a fixed replay may send


def test_a_rejection_is_reported_once_with_its_order_records_and_no_retry() -> None:
    def reject_first(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        return [
            Delivery(error="MessageRejected: suppressed", retryable=False)
            if c.order_id == str(uuid.UUID(int=0))
            else Delivery(message_id="m")
            for c in confirmations
        ]

    ports = Ports(mailer=MemoryMailer(reject_first))
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(n) for n in range(3)])))
    [problem] = outcome.problems
    assert (problem.stage, problem.detail, problem.order_id, problem.retried) == (
        "ses-rejected",
        "SES rejected the confirmation: MessageRejected: suppressed",
        str(uuid.UUID(int=0)),
        False,
    )
    assert [(r.partition, r.offset) for r in problem.records] == [(0, 100)]


def test_poison_is_dead_lettered_and_the_rest_is_sent() -> None:
    good = kafka_records([order_placed(n) for n in range(2)], partitions=1)
    poison = [
        raw_record(b"\x89PNG not json", offset=102),
        raw_record(b"[]", offset=103),
        raw_record(None, offset=104),
    ]
    ports = Ports()
    outcome = ports.deliver(msk_batch([*good, *poison]))

    assert len(ports.mailer.inbox) == 2
    assert (outcome.poison, outcome.failed) == (3, set())
    reasons = {json.loads(letter.body)["offset"]: letter.reason for letter in outcome.dead_letters}
    assert reasons.keys() == {102, 103, 104}
    assert reasons[102].startswith("value is not UTF-8 JSON")
    assert reasons[103].startswith("not a valid order-placed event")


def test_a_tombstone_without_a_value_field_is_poison_too() -> None:
    batch = msk_batch([raw_record(b"{}", offset=7)])
    del batch["records"]["order-placed-0"][0]["value"]
    ports = Ports()
    outcome = ports.deliver(batch)

    assert outcome.poison == 1
    assert outcome.dead_letters[0].reason == "record has no value field (a tombstone?)"


def test_poison_that_cannot_be_dead_lettered_is_retried() -> None:
    ports = Ports(dead_letters=MemoryDeadLetters(failing=True))
    records = [*kafka_records([order_placed(1)], partitions=1), raw_record(b"nope", offset=101)]
    outcome = ports.deliver(msk_batch(records))

    assert failed_offsets(outcome) == {(0, 101)}
    assert len(ports.mailer.inbox) == 1
    [problem] = outcome.problems
    assert problem.stage == "dead-letter"
    assert problem.detail.startswith(
        "dead letter not stored (bucket unavailable) for: value is not UTF-8 JSON"
    )
    assert [(r.partition, r.offset) for r in problem.records] == [(0, 101)]


def test_nothing_is_sent_without_a_claim() -> None:
    ports = Ports()
    ports.ledger.failing = {"claim"}
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(n) for n in range(4)])))

    assert ports.mailer.calls == []
    assert len(outcome.failed) == 4
    assert {p.stage for p in outcome.problems} == {"ledger"}


def test_an_order_claimed_elsewhere_is_retried_not_sent() -> None:
    ports = Ports()
    ports.ledger.state[str(uuid.UUID(int=1))] = "in-progress"
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(0), order_placed(1)])))

    assert [c.order_id for c in ports.mailer.inbox] == [str(uuid.UUID(int=0))]
    assert failed_offsets(outcome) == {(1, 100)}


def test_a_sent_email_whose_record_fails_is_not_retried() -> None:
    ports = Ports()
    ports.ledger.failing = {"confirm"}
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(0)])))

    assert len(ports.mailer.inbox) == 1
    assert outcome.failed == set()  # retrying would send it again
    assert [(p.stage, p.retried) for p in outcome.problems] == [("ledger", False)]


def test_later_chunks_wait_for_an_invocation_with_time_left() -> None:
    ports = Ports()
    events = [order_placed(n) for n in range(60)]
    left = iter([60_000, 60_000, 60_000, 1_000])  # start, chunk 1 fits, its send fits, chunk 2
    outcome = ports.deliver(
        msk_batch(kafka_records(events)),
        time_left_ms=lambda: next(left, 1_000),
        budget=TimeBudget(ledger_phase_ms=1_000, send_ms=3_000),
    )

    assert [len(call) for call in ports.mailer.calls] == [50]
    assert len(outcome.failed) == 10
    assert {p.stage for p in outcome.problems} == {"deferred"}
    deferred = {e.order_id for e in events} - {c.order_id for c in ports.mailer.calls[0]}
    assert failed_offsets(outcome) == set(map(position, deferred))
    assert not deferred & ports.ledger.state.keys()  # never claimed


def test_an_unexpected_mailer_error_keeps_the_claims_and_propagates() -> None:
    """A bug or a kill signal around the SES call: SES may have accepted it, so the claims
    stay held (a delayed email is acceptable, a second one is not)."""

    def broken(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        raise RuntimeError("bug")

    ports = Ports(mailer=MemoryMailer(broken))
    with pytest.raises(RuntimeError, match="bug"):
        ports.deliver(msk_batch(kafka_records([order_placed(0), order_placed(1)])))
    assert set(ports.ledger.state.values()) == {"in-progress"}


def test_the_response_names_failed_records_under_both_keys_aws_sources_use() -> None:
    """Powertools' BatchProcessor's `partition` exactly, and the same value as `topic-partition`
    (the key the Lambda guide's schema was read to show): Lambda finds the one it reads."""
    records = kafka_records([order_placed(n) for n in range(6)])
    batch = msk_batch(records)
    failed = {RecordRef("order-placed", 1, 100), RecordRef("order-placed", 2, 101)}
    ours = ConfirmationReport(failed=failed).response()

    def handler(record: Any) -> None:
        if RecordRef(record.topic, record.partition, record.offset) in failed:
            raise RuntimeError("failed")

    theirs = process_partial_response(
        event=batch, record_handler=handler, processor=BatchProcessor(event_type=EventType.Kafka)
    )
    assert ours == {
        "batchItemFailures": [
            {
                "itemIdentifier": {
                    "partition": "order-placed-1",
                    "topic-partition": "order-placed-1",
                    "offset": 100,
                }
            },
            {
                "itemIdentifier": {
                    "partition": "order-placed-2",
                    "topic-partition": "order-placed-2",
                    "offset": 101,
                }
            },
        ]
    }
    powertools_keys = [
        {"itemIdentifier": {k: v for k, v in f["itemIdentifier"].items() if k != "topic-partition"}}
        for f in ours["batchItemFailures"]
    ]
    key = json.dumps
    assert sorted(map(key, powertools_keys)) == sorted(map(key, theirs["batchItemFailures"]))


def test_an_empty_outcome_reports_no_failures() -> None:
    assert ConfirmationReport().response() == {"batchItemFailures": []}
    assert Ports().deliver(msk_batch([])).summary()["sent"] == 0


def test_decimal_quantities_stay_exact() -> None:
    item = LineItem(sku="S", name="n", quantity=3, unit_price=Decimal("0.10"))
    data = template_data(order_placed(5, items=[item]))

    assert (data["items"][0]["line_total"], data["total"]) == ("0.30", "0.30")


def test_a_bulk_answer_without_a_status_per_order_counts_as_unsent() -> None:
    def one_status_short(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        return [Delivery(message_id="m") for _ in confirmations[1:]]

    ports = Ports(mailer=MemoryMailer(one_status_short))
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(0), order_placed(1)])))

    assert len(outcome.failed) == 2
    assert ports.ledger.state == {}
    assert outcome.problems[0].detail == "1 statuses for 2 destinations"


# ------------------------------------------------------------------ failures that duplicate or lose


class FakeClock:
    """An invocation's remaining time that only sleeping spends."""

    def __init__(self, left_ms: int) -> None:
        self.left_ms = left_ms

    def time_left_ms(self) -> int:
        return self.left_ms

    def sleep(self, seconds: float) -> None:
        self.left_ms -= int(seconds * 1000)


BUDGET = TimeBudget(
    ledger_phase_ms=12_000, send_ms=34_000, wait_for_claims_ms=15_000, poll_ms=3_000
)


def test_a_failed_settle_is_retried_so_the_order_is_never_claimable_again() -> None:
    """Today's path to a second email: SES accepted, recording it failed once, the claim
    expired, a redelivery sent it again."""
    ports = Ports()
    ports.ledger.failures_left = {"confirm": 2}
    batch = msk_batch(kafka_records([order_placed(0)]))
    clock = FakeClock(90_000)
    outcome = ports.deliver(
        batch, time_left_ms=clock.time_left_ms, sleep=clock.sleep, budget=BUDGET
    )

    assert outcome.problems == []
    assert ports.ledger.state == {str(uuid.UUID(int=0)): f"m-{uuid.UUID(int=0)}"}
    again = ports.deliver(batch)
    assert again.duplicates == 1
    assert ports.emails_per_order() == Counter({str(uuid.UUID(int=0)): 1})


def test_a_settle_that_outlasts_the_time_left_keeps_the_claim_and_never_retries() -> None:
    clock = FakeClock(BUDGET.chunk_ms + 1_000)

    def slow_but_accepted(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        clock.left_ms -= 40_000  # SES took its time, then accepted
        return [Delivery(message_id=f"m-{c.order_id}") for c in confirmations]

    ports = Ports(mailer=MemoryMailer(slow_but_accepted))
    ports.ledger.failing = {"confirm"}
    order_id = str(uuid.UUID(int=0))
    outcome = ports.deliver(
        msk_batch(kafka_records([order_placed(0)])),
        time_left_ms=clock.time_left_ms,
        sleep=clock.sleep,
        budget=BUDGET,
    )
    assert outcome.failed == set()
    [problem] = outcome.problems
    assert (problem.stage, problem.retried) == ("ledger", False)
    attempts = ports.ledger.calls.count(("confirm", order_id))
    assert 1 < attempts < MAX_SETTLE_ATTEMPTS  # retried while an attempt still fit, no longer
    assert clock.left_ms >= BUDGET.ledger_phase_ms
    assert ports.ledger.state[order_id] == "in-progress"  # held, not released
    ports.ledger.failing = set()
    redelivered = ports.deliver(msk_batch(kafka_records([order_placed(0)])))
    assert {p.stage for p in redelivered.problems} == {"in-progress"}
    assert ports.emails_per_order() == Counter({order_id: 1})


def test_no_chunk_starts_without_time_for_its_claims_send_and_settle() -> None:
    """Today the first chunk always started, however little time was left."""
    ports = Ports()
    outcome = ports.deliver(
        msk_batch(kafka_records([order_placed(n) for n in range(3)])),
        time_left_ms=lambda: BUDGET.chunk_ms - 1,
        budget=BUDGET,
    )
    assert ports.ledger.calls == []  # nothing claimed
    assert ports.mailer.calls == []
    assert len(outcome.failed) == 3
    assert {p.stage for p in outcome.problems} == {"deferred"}


def test_claims_taken_without_time_left_to_send_are_released_and_deferred() -> None:
    ports = Ports()
    left = iter([90_000, 90_000])  # the start, the chunk check; then the claims took it all
    outcome = ports.deliver(
        msk_batch(kafka_records([order_placed(0), order_placed(1)])),
        time_left_ms=lambda: next(left, BUDGET.send_ms),
        budget=BUDGET,
    )
    assert ports.mailer.calls == []
    assert ports.ledger.state == {}  # released: a retry is not held up
    assert {p.stage for p in outcome.problems} == {"deferred"}
    assert len(outcome.failed) == 2


def refuses(bad: set[str]) -> Script:
    """SES refusing a whole call that holds an address it cannot take."""

    def answer(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        if any(c.recipient in bad for c in confirmations):
            raise MailerError(
                "InvalidParameterValue: Local address contains control or whitespace",
                permanent=True,
            )
        return [Delivery(message_id=f"m-{c.order_id}") for c in confirmations]

    return answer


def test_a_call_refused_for_one_destination_is_split_until_that_one_stands_alone() -> None:
    """Today one bad address released all 50 orders of its chunk into the retries."""
    events = [order_placed(n) for n in range(50)]
    bad = {"customer17@example.com"}
    ports = Ports(mailer=MemoryMailer(refuses(bad)))
    outcome = ports.deliver(msk_batch(kafka_records(events)))

    sent = ports.emails_per_order()
    assert set(sent) == {e.order_id for e in events} - {str(uuid.UUID(int=17))}
    assert set(sent.values()) == {1}
    assert outcome.failed == set()
    [letter] = ports.dead_letters.letters.values()
    assert (letter.partition, letter.offset) == position(str(uuid.UUID(int=17)))
    assert "InvalidParameterValue" in letter.reason
    assert len(ports.mailer.calls) <= 1 + 2 * 6  # a bisection: two calls per level of 50
    assert ports.ledger.state.get(str(uuid.UUID(int=17))) is None  # released, not held


def test_a_call_failing_for_the_moment_is_not_split() -> None:
    def throttled(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        raise MailerError("Throttling: Maximum sending rate exceeded")

    ports = Ports(mailer=MemoryMailer(throttled))
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(n) for n in range(4)])))
    assert len(ports.mailer.calls) == 1
    assert len(outcome.failed) == 4
    assert ports.dead_letters.letters == {}


def test_a_reused_order_id_with_another_order_is_dead_lettered_never_dropped() -> None:
    """Today: counted as a duplicate, no email, only a metric."""
    ports = Ports()
    first = order_placed(3)
    ports.deliver(msk_batch(kafka_records([first], partitions=1)))
    other = order_placed(3, name="Grace Hopper", email="grace@example.com")
    assert other.order_id == first.order_id
    outcome = ports.deliver(msk_batch(kafka_records([other], partitions=1, first_offset=500)))

    assert ports.emails_per_order() == Counter({first.order_id: 1})
    assert outcome.duplicates == 0
    [letter] = ports.dead_letters.letters.values()
    assert letter.offset == 500
    assert "confirmed before for a different order" in letter.reason
    # The same order redelivered is still a plain duplicate.
    assert ports.deliver(msk_batch(kafka_records([first], partitions=1))).duplicates == 1


class HeldLedger(MemoryLedger):
    """Order 0 is claimed by another invocation, which settles after `release_after` claims."""

    def __init__(self, release_after: int | None) -> None:
        super().__init__()
        self.held = str(uuid.UUID(int=0))
        self.state[self.held] = "in-progress"
        self.release_after = release_after
        self.claims_of_held = 0

    def claim(self, order_id: str, fingerprint: str) -> Claim:
        if order_id == self.held:
            self.claims_of_held += 1
            if self.release_after is not None and self.claims_of_held > self.release_after:
                self.state.pop(self.held, None)
        return super().claim(order_id, fingerprint)


def test_an_order_held_elsewhere_is_waited_for_and_sent_once_free() -> None:
    ports = Ports(ledger=HeldLedger(release_after=2))
    clock = FakeClock(90_000)
    outcome = ports.deliver(
        msk_batch(kafka_records([order_placed(0), order_placed(1)])),
        time_left_ms=clock.time_left_ms,
        sleep=clock.sleep,
        budget=BUDGET,
    )
    assert outcome.failed == set()
    assert ports.emails_per_order() == Counter({str(uuid.UUID(int=n)): 1 for n in (0, 1)})


def test_an_order_held_throughout_is_reported_only_after_the_wait() -> None:
    """The worst case of the retries: each one lasts at least `wait_for_claims_ms`, so the
    mapping's 100 retries outlast a claim's hold (tests/unit/test_email_notifier.py checks
    the numbers of the deployed configuration)."""
    ports = Ports(ledger=HeldLedger(release_after=None))
    clock = FakeClock(90_000)
    outcome = ports.deliver(
        msk_batch(kafka_records([order_placed(0)])),
        time_left_ms=clock.time_left_ms,
        sleep=clock.sleep,
        budget=BUDGET,
    )
    assert {p.stage for p in outcome.problems} == {"in-progress"}
    assert 90_000 - clock.left_ms >= BUDGET.wait_for_claims_ms
    assert ports.mailer.calls == []


def test_events_from_before_the_api_refused_addresses_ses_cannot_take() -> None:
    """Records already in the topic: a Unicode domain is sent to in its ASCII form, a
    non-ASCII local part is dead-lettered with the reason, and neither holds up the rest."""

    def with_email(event: OrderPlaced, address: str, offset: int) -> PlainRecord:
        message = to_message(event)
        document = json.loads(message.value)
        document["order"]["customer"]["email"] = address
        value = json.dumps(document, ensure_ascii=False).encode()
        return PlainRecord(key=message.key, value=value, partition=0, offset=offset)

    records = [
        with_email(order_placed(1), "kunde@b\u00fccher.de", 10),
        with_email(order_placed(2), "\u00f1and\u00fa@example.com", 11),
        *kafka_records([order_placed(3)], partitions=1, first_offset=12),
    ]
    ports = Ports()
    outcome = ports.deliver(msk_batch(records))

    assert {c.recipient for c in ports.mailer.inbox} == {
        "kunde@xn--bcher-kva.de",
        "customer3@example.com",
    }
    assert outcome.failed == set()
    [letter] = ports.dead_letters.letters.values()
    assert letter.offset == 11
    assert "before the @-sign" in letter.reason


def test_a_reused_order_id_within_one_batch_is_dead_lettered_too() -> None:
    first = order_placed(4)
    other = order_placed(4, name="Grace Hopper", email="grace@example.com")
    ports = Ports()
    records = [
        *kafka_records([first], partitions=1),
        *kafka_records([other], partitions=1, first_offset=101),
    ]
    outcome = ports.deliver(msk_batch(records))

    assert ports.emails_per_order() == Counter({first.order_id: 1})
    assert outcome.duplicates == 0
    [letter] = ports.dead_letters.letters.values()
    assert letter.offset == 101
    assert "different order" in letter.reason


@pytest.mark.parametrize(
    ("address", "redirect_to"),
    [("orders@shop.example", None), ("dev-inbox@example.org", "dev-inbox@example.org")],
    ids=["sender", "redirect"],
)
def test_a_refusal_naming_an_operators_address_is_retried_not_split_or_dead_lettered(
    address: str, redirect_to: str | None
) -> None:
    """SES refuses every call while the sender, or the redirect (a developer's inbox), is
    unverified: that is no customer's fault."""

    def unverified(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        raise MailerError(
            "MessageRejected: Email address is not verified. The following identities failed "
            f"the check in region EU-WEST-1: {address}",
            permanent=True,
        )

    ports = Ports(mailer=MemoryMailer(unverified))
    outcome = ports.deliver(
        msk_batch(kafka_records([order_placed(n) for n in range(10)])), redirect_to=redirect_to
    )
    assert len(ports.mailer.calls) == 1
    assert ports.dead_letters.letters == {}
    assert len(outcome.failed) == 10
    assert ports.ledger.state == {}
    assert {p.stage for p in outcome.problems} == {"ses"}


def test_a_half_refused_for_someone_else_is_retried_whole_not_split_again() -> None:
    """Order 1's address is refused, so the call is split (the batch's order is by partition:
    0, 3 | 1, 2); SES then refuses the half without it naming the sender: that half is no
    customer's fault and goes back whole."""

    def answer(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        ids = [uuid.UUID(c.order_id).int for c in confirmations]
        if 1 in ids:
            raise MailerError("InvalidParameterValue: customer1@example.com", permanent=True)
        if sorted(ids) == [0, 3]:
            raise MailerError("MessageRejected: not verified: orders@shop.example", permanent=True)
        return [Delivery(message_id=f"m-{c.order_id}") for c in confirmations]

    ports = Ports(mailer=MemoryMailer(answer))
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(n) for n in range(4)])))
    calls = [[uuid.UUID(c.order_id).int for c in call] for call in ports.mailer.calls]
    assert calls == [[0, 3, 1, 2], [0, 3], [1, 2], [1], [2]]
    assert ports.emails_per_order() == Counter({str(uuid.UUID(int=2)): 1})
    [letter] = ports.dead_letters.letters.values()
    assert (letter.partition, letter.offset) == position(str(uuid.UUID(int=1)))
    assert failed_offsets(outcome) == {position(str(uuid.UUID(int=n))) for n in (0, 3)}


def test_a_refusal_of_every_half_naming_no_one_is_retried_after_one_split() -> None:
    def refuses_all(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        raise MailerError("InvalidParameterValue: something about the request", permanent=True)

    ports = Ports(mailer=MemoryMailer(refuses_all))
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(n) for n in range(50)])))
    assert len(ports.mailer.calls) == 3  # the call, then its two halves: no deeper
    assert ports.dead_letters.letters == {}
    assert len(outcome.failed) == 50


def test_the_wait_for_held_orders_ends_without_a_time_source() -> None:
    ports = Ports(ledger=HeldLedger(release_after=None))
    outcome = ports.deliver(
        msk_batch(kafka_records([order_placed(0)])),
        budget=TimeBudget(wait_for_claims_ms=3_000, poll_ms=1_000),
    )
    assert {p.stage for p in outcome.problems} == {"in-progress"}
    assert ports.slept == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("keys", "identifier"),
    [
        (("partition",), {"partition": "order-placed-1", "offset": 100}),
        (("topic-partition",), {"topic-partition": "order-placed-1", "offset": 100}),
    ],
)
def test_the_response_can_name_failed_records_under_one_key(
    keys: tuple[str, ...], identifier: dict[str, Any]
) -> None:
    outcome = ConfirmationReport(failed={RecordRef("order-placed", 1, 100)})
    assert outcome.response(keys) == {"batchItemFailures": [{"itemIdentifier": identifier}]}


class MeetingLedger(MemoryLedger):
    """Each claim waits until `count` claims are in flight together: it passes only when the
    chunk's claims run side by side, and fails (BrokenBarrierError) when they run in turn."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.together = threading.Barrier(count, timeout=10)
        self.lock = threading.Lock()

    def claim(self, order_id: str, fingerprint: str) -> Claim:
        self.together.wait()
        with self.lock:
            return super().claim(order_id, fingerprint)


def test_a_chunks_ledger_calls_run_side_by_side_on_the_executor_given() -> None:
    ports = Ports(ledger=MeetingLedger(count=5))
    batch = msk_batch(kafka_records([order_placed(n) for n in range(5)]))
    with ThreadPoolExecutor(max_workers=5) as pool:
        outcome = ports.deliver(batch, ledger_calls=pool)
    assert outcome.failed == set()
    assert ports.emails_per_order() == Counter(str(uuid.UUID(int=n)) for n in range(5))


def test_without_an_executor_the_ledger_calls_run_one_after_the_other() -> None:
    ledger = MeetingLedger(count=2)
    ledger.together = threading.Barrier(2, timeout=0.2)  # the first claim waits alone
    ports = Ports(ledger=ledger)
    with pytest.raises(threading.BrokenBarrierError):
        ports.deliver(msk_batch(kafka_records([order_placed(n) for n in range(2)])))


@pytest.mark.parametrize("chunks_with_time", [1, 2, 3])
def test_every_chunk_after_the_time_runs_out_is_deferred_none_dropped(
    chunks_with_time: int,
) -> None:
    """Four chunks of 10; time for the first `chunks_with_time`: every later chunk, not only the
    next one, comes back for the mapping to redeliver, and none of it was claimed."""
    ports = Ports()
    events = [order_placed(n) for n in range(40)]
    chunks_started = 0

    def time_left() -> int:
        # Each chunk asks for the time left before its claims; the start asks once too.
        nonlocal chunks_started
        chunks_started += 1
        return 60_000 if chunks_started <= 1 + 2 * chunks_with_time else 1_000

    outcome = ports.deliver(
        msk_batch(kafka_records(events)),
        time_left_ms=time_left,
        budget=TimeBudget(ledger_phase_ms=1_000, send_ms=3_000),
        chunk_size=10,
    )

    sent = {c.order_id for call in ports.mailer.calls for c in call}
    assert [len(call) for call in ports.mailer.calls] == [10] * chunks_with_time
    deferred = {e.order_id for e in events} - sent
    assert len(deferred) == 40 - 10 * chunks_with_time
    assert failed_offsets(outcome) == set(map(position, deferred))
    assert {p.stage for p in outcome.problems} == {"deferred"}
    assert not deferred & ports.ledger.state.keys()


def twice(event: OrderPlaced) -> list[PlainRecord]:
    """One order delivered at two places: partition 0 offset 100 and partition 1 offset 200."""
    [first] = kafka_records([event], partitions=1)
    [second] = kafka_records([event], partitions=1, first_offset=200)
    return [first, replace(second, partition=1)]


def test_an_order_at_two_places_that_cannot_be_sent_now_fails_at_both() -> None:
    def unavailable(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        return [Delivery(error="Throttling", retryable=True) for _ in confirmations]

    ports = Ports(mailer=MemoryMailer(unavailable))
    outcome = ports.deliver(msk_batch(twice(order_placed(5))))

    assert failed_offsets(outcome) == {(0, 100), (1, 200)}
    assert ports.emails_per_order() == Counter()


def test_an_order_at_two_places_that_ses_rejects_is_dead_lettered_at_both() -> None:
    def reject(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        return [
            Delivery(error="MessageRejected: suppressed", retryable=False) for _ in confirmations
        ]

    ports = Ports(mailer=MemoryMailer(reject))
    outcome = ports.deliver(msk_batch(twice(order_placed(6))))

    assert outcome.failed == set()
    letters = {(letter.partition, letter.offset) for letter in ports.dead_letters.letters.values()}
    assert letters == {(0, 100), (1, 200)}


def test_an_order_at_two_places_held_elsewhere_is_reported_at_both() -> None:
    ports = Ports()
    event = order_placed(7)
    ports.ledger.state[event.order_id] = "in-progress"
    outcome = ports.deliver(msk_batch(twice(event)))

    assert failed_offsets(outcome) == {(0, 100), (1, 200)}
    [problem] = outcome.problems
    assert {(r.partition, r.offset) for r in problem.records} == {(0, 100), (1, 200)}


def refuses_naming(bad: set[str]) -> Script:
    """SES refusing a whole call and naming, as it does, the address it cannot take."""

    def answer(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        named = sorted(c.recipient for c in confirmations if c.recipient in bad)
        if named:
            raise MailerError(f"MessageRejected: Address blacklisted: {named[0]}.", permanent=True)
        return [Delivery(message_id=f"m-{c.order_id}") for c in confirmations]

    return answer


def test_two_refused_addresses_in_two_halves_are_each_isolated_and_dead_lettered() -> None:
    """Both halves are refused, each naming its own recipient: customers' faults, both, so
    each half is split further instead of the refusal being taken for the sender's."""
    events = [order_placed(n) for n in range(50)]
    bad = {"customer10@example.com", "customer40@example.com"}
    ports = Ports(mailer=MemoryMailer(refuses_naming(bad)))
    outcome = ports.deliver(msk_batch(kafka_records(events)))

    assert outcome.failed == set()
    assert sum(ports.emails_per_order().values()) == 48
    reasons = {letter.offset: letter.reason for letter in ports.dead_letters.letters.values()}
    assert sorted(reasons) == [position(str(uuid.UUID(int=n)))[1] for n in (10, 40)]
    assert all("Address blacklisted" in reason for reason in reasons.values())


def test_each_deferred_order_is_reported_with_its_id_and_why() -> None:
    ports = Ports()
    events = [order_placed(n) for n in range(20)]
    outcome = ports.deliver(
        msk_batch(kafka_records(events)),
        time_left_ms=lambda: 1_000,
        budget=TimeBudget(ledger_phase_ms=1_000, send_ms=3_000),
        chunk_size=10,
    )
    deferred = [p for p in outcome.problems if p.stage == "deferred"]
    assert {p.order_id for p in deferred} == {e.order_id for e in events}
    assert all(p.detail for p in deferred)


# ------------------------------------------------------------------ what each problem says
#
# The notifier logs every problem as it stands (stage, detail, order, records, retried): an
# operator reads these lines to know what happened to an order and whether the mapping brings
# it back. Each scenario pins the whole list, not only its stages.

Said = tuple[str, str, str | None, list[tuple[int, int]], bool]


def oid(n: int) -> str:
    return str(uuid.UUID(int=n))


def said(outcome: ConfirmationReport) -> list[Said]:
    return [
        (p.stage, p.detail, p.order_id, [(r.partition, r.offset) for r in p.records], p.retried)
        for p in outcome.problems
    ]


def at(n: int) -> list[tuple[int, int]]:
    return [position(oid(n))]


def test_a_failed_claim_says_why_and_is_retried() -> None:
    ports = Ports()
    ports.ledger.failing = {"claim"}
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(0)])))
    assert said(outcome) == [("ledger", "claim failed: table unavailable", oid(0), at(0), True)]
    assert failed_offsets(outcome) == set(at(0))


def test_an_order_held_elsewhere_says_so_and_is_retried() -> None:
    ports = Ports()
    ports.ledger.state[oid(0)] = "in-progress"
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(0)])))
    detail = "claimed by another invocation; retried once it settles"
    assert said(outcome) == [("in-progress", detail, oid(0), at(0), True)]


def test_orders_held_in_different_chunks_are_all_waited_for_and_reported() -> None:
    ports = Ports()
    ports.ledger.state.update({oid(0): "in-progress", oid(1): "in-progress"})
    outcome = ports.deliver(
        msk_batch(kafka_records([order_placed(0), order_placed(1)])), chunk_size=1
    )
    assert [p.order_id for p in outcome.problems] == [oid(0), oid(1)]
    assert failed_offsets(outcome) == {*at(0), *at(1)}


def test_a_reused_order_id_says_which_and_is_not_retried() -> None:
    first, other = order_placed(4), order_placed(4, email="grace@example.com")
    records = [
        *kafka_records([first], partitions=1),
        *kafka_records([other], partitions=1, first_offset=101),
    ]
    ports = Ports()
    in_batch = ports.deliver(msk_batch(records))
    reason = (
        f"order_id {oid(4)} is used in this batch for a different order; "
        "the first one is confirmed, this one was not emailed"
    )
    assert said(in_batch) == [("conflict", reason, oid(4), [(0, 101)], False)]
    assert [letter.reason for letter in in_batch.dead_letters] == [reason]

    later = ports.deliver(msk_batch(kafka_records([other], partitions=1, first_offset=500)))
    reason = (
        f"order_id {oid(4)} was confirmed before for a different order; this order was not emailed"
    )
    assert said(later) == [("conflict", reason, oid(4), [(0, 500)], False)]
    assert later.failed == set()


def test_one_order_refused_by_name_is_rejected_after_one_call() -> None:
    ports = Ports(mailer=MemoryMailer(refuses_naming({"customer0@example.com"})))
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(0)])))
    detail = (
        "SES refused the confirmation: MessageRejected: Address blacklisted: customer0@example.com."
    )
    assert said(outcome) == [("ses-rejected", detail, oid(0), at(0), False)]
    assert len(ports.mailer.calls) == 1  # nothing left to split
    assert [letter.reason for letter in outcome.dead_letters] == [detail]


def test_one_order_refused_for_the_sender_is_retried_not_rejected() -> None:
    def unverified(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        raise MailerError("MessageRejected: not verified: orders@shop.example", permanent=True)

    ports = Ports(mailer=MemoryMailer(unverified))
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(0)])))
    detail = "MessageRejected: not verified: orders@shop.example"
    assert said(outcome) == [("ses", detail, oid(0), at(0), True)]
    assert ports.dead_letters.letters == {}


def test_two_orders_one_refused_by_name_the_other_is_sent() -> None:
    ports = Ports(mailer=MemoryMailer(refuses_naming({"customer1@example.com"})))
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(0), order_placed(1)])))
    assert [[c.order_id for c in call] for call in ports.mailer.calls] == [
        [oid(0), oid(1)],
        [oid(0)],
        [oid(1)],
    ]
    assert outcome.sent == {oid(0): f"m-{oid(0)}"}
    assert [p.stage for p in outcome.problems] == ["ses-rejected"]


def test_a_claim_not_released_is_retried_with_its_order_or_not_with_it() -> None:
    """The release's problem tells the truth about the order: retried with a failed call,
    dead-lettered (not retried) with a rejected destination."""

    def throttled(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        raise MailerError("Throttling: Maximum sending rate exceeded")

    ports = Ports(mailer=MemoryMailer(throttled))
    ports.ledger.failing = {"release"}
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(0)])))
    not_released = "claim not released: release failed: table unavailable"
    assert said(outcome) == [
        ("ledger", not_released, oid(0), at(0), True),
        ("ses", "Throttling: Maximum sending rate exceeded", oid(0), at(0), True),
    ]

    def suppressed(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        return [
            Delivery(error="MessageRejected: suppressed", retryable=False) for _ in confirmations
        ]

    ports = Ports(mailer=MemoryMailer(refuses_naming({"customer0@example.com"})))
    ports.ledger.failing = {"release"}
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(0)])))
    refused = (
        "SES refused the confirmation: MessageRejected: Address blacklisted: customer0@example.com."
    )
    assert said(outcome) == [
        ("ledger", not_released, oid(0), at(0), False),
        ("ses-rejected", refused, oid(0), at(0), False),
    ]

    ports = Ports(mailer=MemoryMailer(suppressed))
    ports.ledger.failing = {"release"}
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(0)])))
    rejected = "SES rejected the confirmation: MessageRejected: suppressed"
    assert said(outcome) == [
        ("ledger", not_released, oid(0), at(0), False),
        ("ses-rejected", rejected, oid(0), at(0), False),
    ]
    assert outcome.failed == set()


def test_destinations_failing_for_the_moment_each_count_and_say_why() -> None:
    def busy(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        return [Delivery(error=f"Throttling: {c.order_id}") for c in confirmations]

    ports = Ports(mailer=MemoryMailer(busy))
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(0), order_placed(1)])))
    assert said(outcome) == [("ses", f"Throttling: {oid(n)}", oid(n), at(n), True) for n in (0, 1)]
    assert outcome.ses_failures == 2


def test_an_email_accepted_without_a_message_id_is_recorded_with_an_empty_one() -> None:
    def no_ids(call: int, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        return [Delivery(message_id=None if i == 0 else "m-1") for i, _ in enumerate(confirmations)]

    ports = Ports(mailer=MemoryMailer(no_ids))
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(0), order_placed(1)])))
    assert outcome.sent == {oid(0): "", oid(1): "m-1"}
    assert ports.ledger.state == {oid(0): "", oid(1): "m-1"}


def test_a_confirmation_never_recorded_is_tried_eight_times_backing_off() -> None:
    ports = Ports()
    ports.ledger.failing = {"confirm"}
    outcome = ports.deliver(msk_batch(kafka_records([order_placed(0)])))
    detail = "sent, but not recorded as sent: confirm failed: table unavailable"
    assert said(outcome) == [("ledger", detail, oid(0), at(0), False)]
    assert ports.ledger.calls.count(("confirm", oid(0))) == MAX_SETTLE_ATTEMPTS == 8
    assert ports.slept == pytest.approx([0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])


def test_a_confirmation_is_retried_while_the_wait_and_a_ledger_phase_fit_exactly() -> None:
    """After waits of 200, 400 and 800 ms, 2,600 ms are left: exactly the next wait (1,600)
    and a ledger phase (1,000), so a fourth wait and a fifth attempt happen; then no more."""
    clock = FakeClock(4_000)
    ports = Ports()
    ports.ledger.failing = {"confirm"}
    ports.deliver(
        msk_batch(kafka_records([order_placed(0)])),
        time_left_ms=clock.time_left_ms,
        sleep=clock.sleep,
        budget=TimeBudget(ledger_phase_ms=1_000, send_ms=1_000),
    )
    assert ports.ledger.calls.count(("confirm", oid(0))) == 5
    assert clock.left_ms == 1_000


def test_a_chunk_starts_when_its_worst_case_fits_exactly() -> None:
    budget = TimeBudget(ledger_phase_ms=1_000, send_ms=1_000)
    ports = Ports()
    outcome = ports.deliver(
        msk_batch(kafka_records([order_placed(0)])),
        time_left_ms=lambda: budget.chunk_ms,
        budget=budget,
    )
    assert outcome.sent.keys() == {oid(0)}


def test_deferred_orders_say_what_there_was_no_time_for() -> None:
    budget = TimeBudget(ledger_phase_ms=1_000, send_ms=3_000)
    ports = Ports()
    outcome = ports.deliver(
        msk_batch(kafka_records([order_placed(0)])), time_left_ms=lambda: 1_000, budget=budget
    )
    assert said(outcome) == [("deferred", "too little time left for a chunk", oid(0), at(0), True)]

    left = iter([90_000, 90_000])  # the start and the chunk; the claims took the rest
    ports = Ports()
    outcome = ports.deliver(
        msk_batch(kafka_records([order_placed(0)])),
        time_left_ms=lambda: next(left, 3_999),
        budget=budget,
    )
    assert said(outcome) == [("deferred", "too little time left to send", oid(0), at(0), True)]


def test_held_orders_are_not_waited_for_without_time_for_a_poll_and_a_chunk() -> None:
    budget = TimeBudget(
        ledger_phase_ms=1_000, send_ms=1_000, wait_for_claims_ms=15_000, poll_ms=3_000
    )
    clock = FakeClock(budget.poll_ms + budget.chunk_ms - 1)
    ports = Ports()
    ports.ledger.state[oid(0)] = "in-progress"
    outcome = ports.deliver(
        msk_batch(kafka_records([order_placed(0)])),
        time_left_ms=clock.time_left_ms,
        sleep=clock.sleep,
        budget=budget,
    )
    assert ports.ledger.calls == [("claim", oid(0))]
    assert clock.left_ms == budget.poll_ms + budget.chunk_ms - 1  # no poll
    assert [p.stage for p in outcome.problems] == ["in-progress"]


def test_without_a_time_source_any_wait_for_held_orders_polls_once() -> None:
    ports = Ports()
    ports.ledger.state[oid(0)] = "in-progress"
    ports.deliver(
        msk_batch(kafka_records([order_placed(0)])),
        budget=TimeBudget(wait_for_claims_ms=1, poll_ms=1_000),
    )
    assert ports.slept == [1.0]
    assert ports.ledger.calls == [("claim", oid(0)), ("claim", oid(0))]


@pytest.mark.parametrize("size", [0, MAX_DESTINATIONS_PER_CALL + 1])
def test_a_chunk_size_outside_one_bulk_call_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match=r"^chunk_size must be 1 to 50$"):
        Ports().deliver(msk_batch(kafka_records([order_placed(0)])), chunk_size=size)


def test_chunks_of_one_send_one_call_per_order() -> None:
    ports = Ports()
    ports.deliver(msk_batch(kafka_records([order_placed(0), order_placed(1)])), chunk_size=1)
    assert [len(call) for call in ports.mailer.calls] == [1, 1]


def test_a_dead_letter_not_stored_says_why_and_for_what() -> None:
    poison = raw_record(b"nope", offset=101)
    stored = Ports().deliver(msk_batch([poison]))
    [reason] = [letter.reason for letter in stored.dead_letters]

    outcome = Ports(dead_letters=MemoryDeadLetters(failing=True)).deliver(msk_batch([poison]))
    detail = f"dead letter not stored (bucket unavailable) for: {reason}"
    assert said(outcome) == [("dead-letter", detail, None, [(0, 101)], True)]


def test_a_record_that_breaks_the_decoder_is_poison_named_by_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(record: object) -> OrderPlaced:
        raise RuntimeError("decoder bug")

    monkeypatch.setattr("orderstream.confirmation.from_record", broken)
    outcome = Ports().deliver(msk_batch(kafka_records([order_placed(0)])))
    assert [letter.reason for letter in outcome.dead_letters] == [
        "undecodable record: RuntimeError: decoder bug"
    ]
    assert outcome.poison == 1


def test_an_orders_fingerprint_is_stable_across_releases() -> None:
    """The ledger keeps fingerprints for as long as it remembers orders: a fingerprint that
    changed with a release would make every redelivery of a confirmed order a conflict."""
    canonical = (
        '{"currency":"EUR","customer":{"email":"customer1@example.com","id":"c-1",'
        '"name":"Ada Lovelace"},"items":[{"name":"Item 1","quantity":2,"sku":"SKU-0001",'
        '"unit_price":"12.50"},{"name":"Gift wrap","quantity":1,"sku":"GIFT-WRAP",'
        '"unit_price":"2.00"}],"order_id":"00000000-0000-0000-0000-000000000001",'
        '"total":"27.00"}'
    )
    expected = "v1:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert order_fingerprint(order_placed(1)) == expected
    assert expected.endswith("d51f2651366e1dd6ca362f5f1a0ffeea849a4e03ddf7cf076643151f709cb8d6")
