"""Order confirmations: what each email says, and one email per order whatever Kafka redelivers.

Nothing here calls AWS. `confirm_batch` drives three ports the email notifier implements:
a `Ledger` (Powertools idempotency records in DynamoDB), a `Mailer` (SES bulk sends) and a
`DeadLetterStore` (S3); tests drive it with in-memory fakes.

One email per order_id, with sends batched. SES's SendBulkTemplatedEmail takes up to 50
destinations, and each destination succeeds or fails on its own, so every order goes through
claim -> send -> settle:

1. **claim** each order of a chunk in the ledger (a conditional write). An order already sent is
   a duplicate and is skipped; one claimed by a live invocation is retried later.
2. **send** the claimed orders in one bulk call.
3. **settle** per destination: sent -> record it as sent; failed -> delete the claim so the
   mapping's retry sends it; rejected for good -> delete the claim and dead-letter the record.
   A whole call that fails releases every claim of the chunk.

Redelivery of a whole batch, of a partition from a failed offset, or of the same order in
another record thus never mails twice: whatever was sent is recorded before the invocation
ends. The remaining gap is a crash (timeout, out of memory) between SES accepting a chunk and
the ledger recording it: those claims expire at the invocation's deadline and a redelivery sends
them again. SES v1 has no idempotency token to close it, and the alternative (claims that never
expire) would lose the email of every order whose invocation died *before* sending.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Protocol

from aws_lambda_powertools.utilities.batch.types import (
    KafkaItemIdentifier,
    PartialItemFailureResponse,
    PartialItemFailures,
)

from orderstream.dead_letter import DeadLetter, dead_letter
from orderstream.events import InvalidEventError, OrderPlaced, from_record

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.kafka.consumer_records import ConsumerRecordRecords

#: SendBulkTemplatedEmail's limit of destinations per call.
MAX_DESTINATIONS_PER_CALL: Final = 50

# Per-destination statuses that a retry cannot fix: the record goes to the dead letters instead
# of blocking its partition. Every other status (throttling, paused sending, a missing template,
# "Failed") is about the account or the moment, so the order is retried.
PERMANENT_SES_STATUSES: Final = frozenset({"MessageRejected", "InvalidParameterValue"})

MAX_DETAIL_CHARS: Final = 300

# ------------------------------------------------------------------------------ the content

# Customer text goes into the template data made *inert*: the characters any HTML-escaping
# renderer would change (Handlebars escapes & < > " ' ` =) are replaced by look-alikes, and
# bidirectional overrides (which can make text display reversed) are dropped. Why not rely on
# the renderer: SES's Handlebars escapes `{{x}}` in every part, so the plain-text part would
# show "O&#x27;Brien"; its raw `{{{x}}}` form is not understood by moto's renderer, which
# escapes nothing. With inert data both renderers produce the same bytes, safe in HTML and
# readable as text, and the tests can check the very output SES would send.
_INERT: Final = str.maketrans(
    {
        "&": "\uff06",  # FULLWIDTH AMPERSAND
        "<": "\uff1c",  # FULLWIDTH LESS-THAN SIGN
        ">": "\uff1e",  # FULLWIDTH GREATER-THAN SIGN
        '"': "\uff02",  # FULLWIDTH QUOTATION MARK
        "'": "\u2019",  # RIGHT SINGLE QUOTATION MARK, the typographic apostrophe
        "`": "\uff40",  # FULLWIDTH GRAVE ACCENT
        "=": "\uff1d",  # FULLWIDTH EQUALS SIGN
        **dict.fromkeys(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)])),
    }
)
#: What no value in the template data contains.
ESCAPED_BY_RENDERERS: Final = frozenset("&<>\"'`=")


def inert(text: str) -> str:
    """`text` with nothing a renderer would escape or a mail client would act on."""
    return text.translate(_INERT)


def money(amount: Decimal) -> str:
    return f"{amount:.2f}"


def template_data(event: OrderPlaced) -> dict[str, Any]:
    """The data of OrderConfirmationTemplate (template.yaml): every leaf a string.

    Strings only: moto's renderer fails on anything else, and SES prints numbers as given.
    Each item repeats the currency because inside `{{#each items}}` only the item's own fields
    resolve in both renderers.
    """
    order = event.order
    return {
        "customer_name": inert(order.customer.name),
        "order_id": str(order.order_id),
        "currency": order.currency,
        "total": money(order.total),
        "items": [
            {
                "name": inert(item.name),
                "sku": inert(item.sku),
                "quantity": str(item.quantity),
                "unit_price": money(item.unit_price),
                "line_total": money(item.line_total),
                "currency": order.currency,
            }
            for item in order.items
        ],
    }


#: Runs `call` on every item, returning the results in the items' order.
FanOut = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


def one_by_one[In, Out](call: Callable[[In], Out], items: Sequence[In], /) -> list[Out]:
    return [call(item) for item in items]


@dataclass(frozen=True, slots=True)
class Confirmation:
    """One email: to whom, for which order, with which template data."""

    order_id: str
    recipient: str
    data: Mapping[str, Any]


def confirmation_for(event: OrderPlaced, redirect_to: str | None = None) -> Confirmation:
    """The customer's confirmation, addressed to `redirect_to` instead when it is set.

    The recipient is the bare address, never "Name <address>": customer text stays out of
    every header, so no name can inject one.
    """
    return Confirmation(
        order_id=event.order_id,
        recipient=redirect_to or str(event.order.customer.email),
        data=template_data(event),
    )


def bulk_request(
    confirmations: Sequence[Confirmation], *, sender: str, template: str
) -> dict[str, Any]:
    """SendBulkTemplatedEmail's arguments: one destination per confirmation, in order."""
    if not 1 <= len(confirmations) <= MAX_DESTINATIONS_PER_CALL:
        raise ValueError(
            f"a bulk send takes 1 to {MAX_DESTINATIONS_PER_CALL} destinations, "
            f"not {len(confirmations)}"
        )
    return {
        "Source": sender,
        "Template": template,
        # Required by the API; every destination brings all of its own data.
        "DefaultTemplateData": "{}",
        "Destinations": [
            {
                "Destination": {"ToAddresses": [c.recipient]},
                "ReplacementTemplateData": json.dumps(c.data, separators=(",", ":")),
            }
            for c in confirmations
        ],
    }


@dataclass(frozen=True, slots=True)
class Delivery:
    """SES's answer for one destination of a bulk call."""

    message_id: str | None = None
    error: str | None = None
    retryable: bool = True

    @property
    def sent(self) -> bool:
        return self.error is None


def deliveries(statuses: Sequence[Mapping[str, Any]]) -> list[Delivery]:
    """SendBulkTemplatedEmail's `Status` list, one entry per destination in request order."""
    answers = []
    for status in statuses:
        code = status.get("Status")
        message_id = status.get("MessageId")
        # SES always says "Success"; moto only gives the MessageId. Either means accepted.
        if code == "Success" or (code is None and message_id):
            answers.append(Delivery(message_id=message_id or ""))
        else:
            error = _clip(f"{code or 'no status'}: {status.get('Error') or 'no detail'}")
            answers.append(Delivery(error=error, retryable=code not in PERMANENT_SES_STATUSES))
    return answers


# ------------------------------------------------------------------------------ the ports


class Claim(StrEnum):
    CLAIMED = "claimed"  # ours to send now
    SENT = "sent"  # confirmed before: a duplicate
    IN_PROGRESS = "in-progress"  # claimed by an invocation that may still be sending it


class DependencyError(Exception):
    """A call to the ledger, the mailer or the dead-letter store failed; the message says why."""


class LedgerError(DependencyError):
    pass


class MailerError(DependencyError):
    """The whole bulk call failed: none of its destinations counts as sent."""


class DeadLetterError(DependencyError):
    pass


class Ledger(Protocol):
    """Which order_ids were confirmed, keyed by order_id. Raises `LedgerError` on failure."""

    def claim(self, order_id: str) -> Claim: ...
    def confirm(self, order_id: str, message_id: str) -> None: ...
    def release(self, order_id: str) -> None: ...


class Mailer(Protocol):
    def send(self, confirmations: Sequence[Confirmation]) -> Sequence[Delivery]:
        """One `Delivery` per confirmation, in order; `MailerError` if the call failed."""
        ...


class DeadLetterStore(Protocol):
    def put(self, letter: DeadLetter) -> None:
        """Store the letter under its key (overwriting); `DeadLetterError` on failure."""
        ...


# ------------------------------------------------------------------------------ the outcome


@dataclass(frozen=True, slots=True, order=True)
class RecordRef:
    topic: str
    partition: int
    offset: int

    @classmethod
    def of(cls, record: ConsumerRecordRecords) -> RecordRef:
        return cls(record.topic, record.partition, record.offset)

    def item_identifier(self) -> KafkaItemIdentifier:
        # The identifier Lambda expects for Kafka, as Powertools' BatchProcessor builds it.
        return {"partition": f"{self.topic}-{self.partition}", "offset": self.offset}

    def __str__(self) -> str:
        return f"{self.topic}-{self.partition}:{self.offset}"


@dataclass(frozen=True, slots=True)
class Problem:
    """Something to log: what went wrong, for which order and records."""

    stage: str  # decode | dead-letter | ledger | in-progress | deferred | ses | ses-rejected
    detail: str
    records: tuple[RecordRef, ...]
    order_id: str | None = None
    #: True when the records are reported to the mapping for a retry.
    retried: bool = True


@dataclass
class ConfirmationOutcome:
    sent: dict[str, str] = field(default_factory=dict)  # order_id -> SES message id
    duplicates: int = 0  # records skipped: their order was confirmed already
    poison: int = 0  # records dead-lettered because they are not a valid order-placed event
    ses_failures: int = 0  # orders SES did not accept (retried or dead-lettered)
    ses_calls: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    failed: set[RecordRef] = field(default_factory=set)

    def response(self) -> PartialItemFailureResponse:
        """The partial batch response: the records the mapping must deliver again."""
        failures: list[PartialItemFailures] = [
            {"itemIdentifier": ref.item_identifier()} for ref in sorted(self.failed)
        ]
        return {"batchItemFailures": failures}

    def summary(self) -> dict[str, int]:
        return {
            "sent": len(self.sent),
            "duplicates": self.duplicates,
            "poison": self.poison,
            "ses_failures": self.ses_failures,
            "ses_calls": self.ses_calls,
            "failed_records": len(self.failed),
        }

    def _fail(self, problem: Problem) -> None:
        self.problems.append(problem)
        self.failed.update(problem.records)


# ------------------------------------------------------------------------------ the protocol


@dataclass
class _Order:
    event: OrderPlaced
    records: list[ConsumerRecordRecords]

    @property
    def order_id(self) -> str:
        return self.event.order_id

    @property
    def refs(self) -> tuple[RecordRef, ...]:
        return tuple(RecordRef.of(r) for r in self.records)


def confirm_batch(
    records: Iterable[ConsumerRecordRecords],
    *,
    ledger: Ledger,
    mailer: Mailer,
    dead_letters: DeadLetterStore,
    consumer: str,
    redirect_to: str | None = None,
    time_left_ms: Callable[[], int] | None = None,
    min_time_per_chunk_ms: int = 0,
    chunk_size: int = MAX_DESTINATIONS_PER_CALL,
    fan_out: FanOut = one_by_one,
) -> ConfirmationOutcome:
    """Send one confirmation per order_id of the batch, unless it was sent before.

    Never raises for a record, an order or a failed call: what could not be done now is in
    `outcome.failed` for the mapping to redeliver, poison is dead-lettered. A chunk starts only
    with `min_time_per_chunk_ms` left (the first always starts), so the invocation is not killed
    while holding claims. `fan_out` runs the per-order ledger calls of a chunk (claims, then
    confirmations); the handler passes a thread pool, since they are independent round trips.
    """
    if not 1 <= chunk_size <= MAX_DESTINATIONS_PER_CALL:
        raise ValueError(f"chunk_size must be 1 to {MAX_DESTINATIONS_PER_CALL}")
    outcome = ConfirmationOutcome()
    orders: dict[str, _Order] = {}  # first appearance first
    for record in records:
        try:
            event = _decode(record)
        except InvalidEventError as exc:
            _bury(record, exc.reason, dead_letters, consumer, outcome)
            outcome.poison += 1
            continue
        if (order := orders.get(event.order_id)) is not None:
            order.records.append(record)  # the same order again: one email serves both
        else:
            orders[event.order_id] = _Order(event, [record])

    pending = list(orders.values())
    for start in range(0, len(pending), chunk_size):
        if start and time_left_ms is not None and time_left_ms() < min_time_per_chunk_ms:
            for order in pending[start:]:
                outcome._fail(
                    Problem("deferred", "too little time left", order.refs, order.order_id)
                )
            break
        chunk = pending[start : start + chunk_size]
        for order, reason in _confirm_chunk(chunk, ledger, mailer, redirect_to, outcome, fan_out):
            for record in order.records:
                _bury(record, reason, dead_letters, consumer, outcome)
    return outcome


def _decode(record: ConsumerRecordRecords) -> OrderPlaced:
    try:
        return from_record(record)
    except InvalidEventError:
        raise
    except KeyError as exc:  # Powertools' accessors when Lambda left a field out
        raise InvalidEventError(f"record has no {exc.args[0]!s} field (a tombstone?)") from exc
    except Exception as exc:  # a record must never stop the batch, whatever it holds
        raise InvalidEventError(_clip(f"undecodable record: {type(exc).__name__}: {exc}")) from exc


def _confirm_chunk(
    chunk: Sequence[_Order],
    ledger: Ledger,
    mailer: Mailer,
    redirect_to: str | None,
    outcome: ConfirmationOutcome,
    fan_out: FanOut,
) -> list[tuple[_Order, str]]:
    """Claim, send and settle one chunk; return the orders SES refused for good, with why."""

    def try_claim(order_id: str) -> Claim | LedgerError:
        try:
            return ledger.claim(order_id)
        except LedgerError as exc:
            return exc

    claimed: list[_Order] = []
    claims: list[Claim | LedgerError] = fan_out(try_claim, [o.order_id for o in chunk])
    for order, claim in zip(chunk, claims, strict=True):
        if isinstance(claim, LedgerError):
            outcome._fail(Problem("ledger", _clip(str(claim)), order.refs, order.order_id))
            continue
        if claim is Claim.SENT:
            outcome.duplicates += len(order.records)
        elif claim is Claim.IN_PROGRESS:
            detail = "claimed by another invocation; retried once it settles"
            outcome._fail(Problem("in-progress", detail, order.refs, order.order_id))
        else:
            claimed.append(order)
    if not claimed:
        return []

    confirmations = [confirmation_for(o.event, redirect_to) for o in claimed]
    outcome.ses_calls += 1
    try:
        answers = list(mailer.send(confirmations))
        if len(answers) != len(claimed):
            # Never seen from SES; without a status per order nothing can be settled, so the
            # chunk is treated as unsent (a repeat is better than a confirmation never sent).
            raise MailerError(f"{len(answers)} statuses for {len(claimed)} destinations")
    except MailerError as exc:
        for order in claimed:
            _release(order, ledger, outcome)
            outcome.ses_failures += 1
            outcome._fail(Problem("ses", _clip(str(exc)), order.refs, order.order_id))
        return []
    except BaseException:
        # A bug or a kill signal: free the claims so the batch's retry is not held up, then
        # let the invocation fail.
        for order in claimed:
            _release(order, ledger, outcome)
        raise

    def try_confirm(sent: tuple[str, str]) -> LedgerError | None:
        try:
            ledger.confirm(*sent)
        except LedgerError as exc:
            return exc
        return None

    delivered = [(o, a) for o, a in zip(claimed, answers, strict=True) if a.sent]
    confirmations_failed: list[LedgerError | None] = fan_out(
        try_confirm, [(o.order_id, a.message_id or "") for o, a in delivered]
    )
    for (order, answer), error in zip(delivered, confirmations_failed, strict=True):
        outcome.sent[order.order_id] = answer.message_id or ""
        outcome.duplicates += len(order.records) - 1
        if error is not None:
            # The email is out: retrying the record would send it again. The claim stays
            # until the in-progress expiry; only a redelivery after that could repeat it.
            outcome.problems.append(
                Problem(
                    "ledger",
                    f"sent, but not recorded as sent: {_clip(str(error))}",
                    order.refs,
                    order.order_id,
                    retried=False,
                )
            )

    rejected: list[tuple[_Order, str]] = []
    for order, answer in zip(claimed, answers, strict=True):
        if answer.sent:
            continue
        outcome.ses_failures += 1
        _release(order, ledger, outcome)
        if answer.retryable:
            outcome._fail(Problem("ses", answer.error or "", order.refs, order.order_id))
        else:
            outcome.problems.append(
                Problem(
                    "ses-rejected", answer.error or "", order.refs, order.order_id, retried=False
                )
            )
            rejected.append((order, f"SES rejected the confirmation: {answer.error}"))
    return rejected


def _release(order: _Order, ledger: Ledger, outcome: ConfirmationOutcome) -> None:
    try:
        ledger.release(order.order_id)
    except LedgerError as exc:
        # The claim then blocks this order until its in-progress expiry (the invocation's
        # deadline); the mapping's retries get through after that.
        outcome.problems.append(
            Problem(
                "ledger",
                f"claim not released: {_clip(str(exc))}",
                order.refs,
                order.order_id,
                retried=True,
            )
        )


def _bury(
    record: ConsumerRecordRecords,
    reason: str,
    dead_letters: DeadLetterStore,
    consumer: str,
    outcome: ConfirmationOutcome,
) -> None:
    letter = dead_letter(record, reason=reason, consumer=consumer)
    try:
        dead_letters.put(letter)
    except DeadLetterError as exc:
        # Not stored means not lost only if the mapping delivers the record again.
        detail = f"dead letter not stored ({_clip(str(exc))}) for: {letter.reason}"
        outcome._fail(Problem("dead-letter", detail, (RecordRef.of(record),)))
        return
    outcome.dead_letters.append(letter)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 3] + "..."
