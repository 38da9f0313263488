"""Order confirmations: one email per order whatever Kafka redelivers, as claim -> send -> settle.

`confirm_batch` drives three ports (a `Ledger`, a `Mailer`, a `DeadLetterStore`) that the email
notifier implements and tests fake; nothing here calls AWS. What an email says is
`email_content`'s, SES's wire format `ses_bulk`'s. The protocol, the time budget and the exact
guarantee: docs/design.md, "Confirmations: claim, send, settle".
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Protocol, TypedDict

from orderstream.dead_letter import DeadLetter, dead_letter
from orderstream.email_content import Confirmation, confirmation_for
from orderstream.events import InvalidEventError, OrderPlaced, from_record
from orderstream.ses_bulk import MAX_DESTINATIONS_PER_CALL, Delivery
from orderstream.text import MAX_DETAIL_CHARS, clip

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.kafka.consumer_records import ConsumerRecordRecords

_ADDRESS: Final = re.compile(r"[^\s@:;,<>()\[\]\"']+@[^\s@:;,<>()\[\]\"']+")


# ------------------------------------------------------------------------------ the ports


class Claim(StrEnum):
    CLAIMED = "claimed"  # ours to send now
    SENT = "sent"  # confirmed before, for this very order: a duplicate
    IN_PROGRESS = "in-progress"  # claimed by an invocation that may still be sending it
    CONFLICT = "conflict"  # confirmed before, for a *different* order under this order_id


def order_fingerprint(event: OrderPlaced) -> str:
    """What the ledger remembers of a confirmed order besides its id: a reused order_id with
    other content is then told apart from a redelivery of the same order."""
    canonical = json.dumps(
        event.order.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
    )
    return FINGERPRINT_VERSION + hashlib.sha256(canonical.encode()).hexdigest()


#: Fingerprints of another version (a changed model or canonical form) are not compared: a
#: redelivery of a confirmed order must never look like a different order.
FINGERPRINT_VERSION: Final = "v1:"


class DependencyError(Exception):
    """A call to the ledger, the mailer or the dead-letter store failed; the message says why."""


class LedgerError(DependencyError):
    pass


class MailerError(DependencyError):
    """The whole bulk call failed: none of its destinations counts as sent. `permanent` when
    SES refused the request itself (a destination it cannot take): a retry fails the same."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class DeadLetterError(DependencyError):
    pass


class Ledger(Protocol):
    """Which order_ids were confirmed, keyed by order_id. Raises `LedgerError` on failure."""

    def claim(self, order_id: str, fingerprint: str) -> Claim: ...
    def confirm(self, order_id: str, message_id: str, fingerprint: str) -> None: ...
    def release(self, order_id: str) -> None: ...


class Mailer(Protocol):
    def send(self, confirmations: Sequence[Confirmation]) -> Sequence[Delivery]:
        """One `Delivery` per confirmation, in order; `MailerError` if the call failed."""
        ...


class DeadLetterStore(Protocol):
    def put(self, letter: DeadLetter) -> None:
        """Store the letter under its key (overwriting); `DeadLetterError` on failure."""
        ...


@dataclass(frozen=True, slots=True)
class TimeBudget:
    """How long calls can take at worst, with their clients' own retries (the handler derives
    these from its botocore configurations), and how long to wait for other invocations."""

    #: All ledger calls of one chunk (claims, or confirmations), run side by side.
    ledger_phase_ms: int = 0
    #: One bulk send.
    send_ms: int = 0
    #: An invocation that finds orders claimed by another one reports them only after running
    #: this long, re-claiming meanwhile: each mapping retry then costs at least this much time,
    #: so the retries outlast a claim's hold (see `IdempotencyLedger`).
    wait_for_claims_ms: int = 0
    poll_ms: int = 1_000

    @property
    def chunk_ms(self) -> int:
        """Claims, one send, confirmations: what a chunk needs before it may start."""
        return 2 * self.ledger_phase_ms + self.send_ms


UNLIMITED: Final = TimeBudget()


# ------------------------------------------------------------------------------ the outcome


# Lambda's partial batch response for Kafka, whose identifier key AWS's sources disagree on:
# the Lambda guide's schema and examples as this project's review read them ("Configuring error
# handling controls for Kafka event sources") and Powertools' first example response write
# `topic-partition`; the guide page as last fetched, Powertools 3.37's BatchProcessor and the
# Rust runtime write `partition`. Same value, "<topic>-<partition>". Until a real invocation
# settles it, both keys go out by default: an identifier Lambda cannot read fails the whole
# batch (a retry the idempotent notifier survives), one it ignores would lose a retry. The
# template's PartialBatchItemKeys chooses one key or both, so that the first real deployment
# can try each (docs/deploy.md, the first thing to confirm).
ITEM_KEYS: Final = ("partition", "topic-partition")
KafkaItemIdentifier = TypedDict(
    "KafkaItemIdentifier", {"partition": str, "topic-partition": str, "offset": int}, total=False
)


class KafkaItemFailure(TypedDict):
    itemIdentifier: KafkaItemIdentifier


class KafkaBatchResponse(TypedDict):
    batchItemFailures: list[KafkaItemFailure]


@dataclass(frozen=True, slots=True, order=True)
class RecordRef:
    topic: str
    partition: int
    offset: int

    @classmethod
    def of(cls, record: ConsumerRecordRecords) -> RecordRef:
        return cls(record.topic, record.partition, record.offset)

    def item_identifier(self, keys: Sequence[str] = ITEM_KEYS) -> KafkaItemIdentifier:
        name = f"{self.topic}-{self.partition}"
        identifier: dict[str, str | int] = dict.fromkeys(keys, name)
        identifier["offset"] = self.offset
        return identifier  # type: ignore[return-value]  # TypedDict keys chosen at run time

    def __str__(self) -> str:
        return f"{self.topic}-{self.partition}:{self.offset}"


@dataclass(frozen=True, slots=True)
class Problem:
    """Something to log: what went wrong, for which order and records."""

    stage: str  # dead-letter | ledger | in-progress | deferred | ses | ses-rejected | conflict
    detail: str
    records: tuple[RecordRef, ...]
    order_id: str | None = None
    #: True when the records are reported to the mapping for a retry.
    retried: bool = True


@dataclass
class ConfirmationReport:
    sent: dict[str, str] = field(default_factory=dict)  # order_id -> SES message id
    duplicates: int = 0  # records skipped: their order was confirmed already
    poison: int = 0  # records dead-lettered because they are not a valid order-placed event
    ses_failures: int = 0  # orders SES did not accept (retried or dead-lettered)
    ses_calls: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    failed: set[RecordRef] = field(default_factory=set)

    def response(self, keys: Sequence[str] = ITEM_KEYS) -> KafkaBatchResponse:
        """The partial batch response: the records the mapping must deliver again, each named
        under `keys` (a subset of ITEM_KEYS)."""
        failures: list[KafkaItemFailure] = [
            {"itemIdentifier": ref.item_identifier(keys)} for ref in sorted(self.failed)
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

#: Settling a sent order is retried this often at most (and only while time is left).
MAX_SETTLE_ATTEMPTS: Final = 8


@dataclass
class _Order:
    event: OrderPlaced
    records: list[ConsumerRecordRecords]
    fingerprint: str

    @property
    def order_id(self) -> str:
        return self.event.order_id

    @property
    def refs(self) -> tuple[RecordRef, ...]:
        return tuple(RecordRef.of(r) for r in self.records)


class _Clock:
    """The invocation's time as the protocol sees it: none given means no limit."""

    def __init__(self, time_left_ms: Callable[[], int] | None, sleep: Callable[[float], None]):
        self._time_left_ms = time_left_ms
        self._sleep = sleep
        self._slept_ms = 0
        self.started_with = self.left()

    def left(self) -> int:
        return self._time_left_ms() if self._time_left_ms is not None else sys.maxsize

    def sleep(self, seconds: float) -> None:
        self._sleep(seconds)
        self._slept_ms += int(seconds * 1000)

    def elapsed(self) -> int:
        # Without a time source, the waits are all the time that passes.
        if self._time_left_ms is None:
            return self._slept_ms
        return self.started_with - self.left()

    def fits(self, ms: int) -> bool:
        return self.left() >= ms


def confirm_batch(
    records: Iterable[ConsumerRecordRecords],
    *,
    ledger: Ledger,
    mailer: Mailer,
    dead_letters: DeadLetterStore,
    consumer: str,
    redirect_to: str | None = None,
    time_left_ms: Callable[[], int] | None = None,
    budget: TimeBudget = UNLIMITED,
    sleep: Callable[[float], None] = time.sleep,
    chunk_size: int = MAX_DESTINATIONS_PER_CALL,
    ledger_calls: Executor | None = None,
) -> ConfirmationReport:
    """Send one confirmation per order_id of the batch, unless it was sent before.

    Never raises for a record, an order or a failed call: what could not be done now is in
    `outcome.failed` for the mapping to redeliver; poison, orders SES refuses for good and
    reused order_ids are dead-lettered with the reason. Every AWS call is started only when
    its worst case (`budget`) fits in the time left, so the invocation is never killed holding
    claims it could have released or confirmations it could have recorded. `ledger_calls` runs
    the per-order ledger calls of a chunk side by side (the handler passes a thread pool); one
    after the other without it.
    """
    if not 1 <= chunk_size <= MAX_DESTINATIONS_PER_CALL:
        raise ValueError(f"chunk_size must be 1 to {MAX_DESTINATIONS_PER_CALL}")
    outcome = ConfirmationReport()
    orders = _orders_of(records, dead_letters, consumer, outcome)
    clock = _Clock(time_left_ms, sleep)
    run = _Run(ledger, mailer, redirect_to, outcome, ledger_calls, budget, clock)
    waiting = run.chunks(orders, chunk_size)
    # Orders another invocation holds: re-claim them until this invocation has run for
    # `wait_for_claims_ms`, so each mapping retry of them costs at least that much time.
    while (
        waiting
        and clock.elapsed() < budget.wait_for_claims_ms
        and clock.fits(budget.poll_ms + budget.chunk_ms)
    ):
        clock.sleep(budget.poll_ms / 1000)
        waiting = run.chunks(waiting, chunk_size)
    for order in waiting:
        detail = "claimed by another invocation; retried once it settles"
        outcome._fail(Problem("in-progress", detail, order.refs, order.order_id))
    for order, reason in run.rejected:
        for record in order.records:
            _dead_letter_record(record, reason, dead_letters, consumer, outcome)
    return outcome


def _orders_of(
    records: Iterable[ConsumerRecordRecords],
    dead_letters: DeadLetterStore,
    consumer: str,
    outcome: ConfirmationReport,
) -> list[_Order]:
    """The batch's orders, first appearance first; poison and a reused order_id dead-lettered."""
    orders: dict[str, _Order] = {}
    for record in records:
        try:
            event = _decode(record)
        except InvalidEventError as exc:
            _dead_letter_record(record, exc.reason, dead_letters, consumer, outcome)
            outcome.poison += 1
            continue
        fingerprint = order_fingerprint(event)
        if (order := orders.get(event.order_id)) is None:
            orders[event.order_id] = _Order(event, [record], fingerprint)
        elif order.fingerprint == fingerprint:
            order.records.append(record)  # the same order again: one email serves both
        else:
            reason = (
                f"order_id {event.order_id} is used in this batch for a different order; "
                "the first one is confirmed, this one was not emailed"
            )
            refs = (RecordRef.of(record),)
            outcome.problems.append(Problem("conflict", reason, refs, event.order_id, False))
            _dead_letter_record(record, reason, dead_letters, consumer, outcome)
    return list(orders.values())


def _decode(record: ConsumerRecordRecords) -> OrderPlaced:
    try:
        return from_record(record)
    except InvalidEventError:
        raise
    except KeyError as exc:  # Powertools' accessors when Lambda left a field out
        raise InvalidEventError(f"record has no {exc.args[0]!s} field (a tombstone?)") from exc
    except Exception as exc:  # a record must never stop the batch, whatever it holds
        raise InvalidEventError(_cut(f"undecodable record: {type(exc).__name__}: {exc}")) from exc


@dataclass
class _Run:
    """One invocation's claim -> send -> settle, chunk by chunk."""

    ledger: Ledger
    mailer: Mailer
    redirect_to: str | None
    outcome: ConfirmationReport
    ledger_calls: Executor | None
    budget: TimeBudget
    clock: _Clock
    #: Orders to dead-letter, with why: SES refuses them for good, or their order_id is reused.
    rejected: list[tuple[_Order, str]] = field(default_factory=list)

    def chunks(self, orders: Sequence[_Order], size: int) -> list[_Order]:
        """Claim, send and settle `orders` in chunks; return those another invocation holds."""
        waiting: list[_Order] = []
        for start in range(0, len(orders), size):
            if not self.clock.fits(self.budget.chunk_ms):
                self._defer(orders[start:], "too little time left for a chunk")
                break
            claimed, held = self._claim(orders[start : start + size])
            waiting += held
            if claimed:
                self._send(claimed)
        return waiting

    def _each[Out](
        self, call: Callable[[_Order], Out], orders: Sequence[_Order]
    ) -> list[Out | LedgerError]:
        """`call` on every order side by side (the ledger calls of a chunk); a `LedgerError`
        is returned in the order's place, not raised."""

        def attempt(order: _Order) -> Out | LedgerError:
            try:
                return call(order)
            except LedgerError as exc:
                return exc

        if self.ledger_calls is None:
            return [attempt(order) for order in orders]
        return list(self.ledger_calls.map(attempt, orders))

    def _claim(self, chunk: Sequence[_Order]) -> tuple[list[_Order], list[_Order]]:
        claims = self._each(lambda o: self.ledger.claim(o.order_id, o.fingerprint), chunk)
        claimed: list[_Order] = []
        held: list[_Order] = []
        for order, claim in zip(chunk, claims, strict=True):
            if isinstance(claim, LedgerError):
                self.outcome._fail(Problem("ledger", _cut(str(claim)), order.refs, order.order_id))
            elif claim is Claim.SENT:
                self.outcome.duplicates += len(order.records)
            elif claim is Claim.CONFLICT:
                reason = (
                    f"order_id {order.order_id} was confirmed before for a different order; "
                    "this order was not emailed"
                )
                self._reject(order, "conflict", reason)
            elif claim is Claim.IN_PROGRESS:
                held.append(order)
            else:
                claimed.append(order)
        return claimed, held

    def _send(self, claimed: Sequence[_Order]) -> None:
        """Send the claimed orders in one call. A call SES refuses as a whole is split until
        the destinations it refuses stand alone, as long as the refusal can be about them."""
        outcome = self._call(claimed)
        if isinstance(outcome, MailerError) and outcome.permanent and len(claimed) > 1:
            if self._blames(claimed, outcome) is False:
                outcome.permanent = False  # it names someone else: the sender, the redirect
            else:
                self._isolate(claimed)
                return
        if outcome is not None:
            self._conclude(claimed, outcome)

    def _isolate(self, group: Sequence[_Order]) -> None:
        half = len(group) // 2
        parts = [group[:half], group[half:]]
        outcomes = [self._call(part) for part in parts]
        refused = [
            (part, o)
            for part, o in zip(parts, outcomes, strict=True)
            if isinstance(o, MailerError) and o.permanent
        ]
        if len(refused) == 2 and not any(self._blames(p, o) for p, o in refused):
            # Both halves refused and no recipient named: a refusal of the request itself
            # (sender, template, account), not of a destination; retried, never dead-lettered.
            for _, error in refused:
                error.permanent = False
        for part, part_outcome in zip(parts, outcomes, strict=True):
            if part_outcome is None:
                continue  # deferred
            if (
                isinstance(part_outcome, MailerError)
                and part_outcome.permanent
                and len(part) > 1
                and self._blames(part, part_outcome) is not False
            ):
                self._isolate(part)
            else:
                self._conclude(part, part_outcome)

    def _blames(self, group: Sequence[_Order], error: MailerError) -> bool | None:
        """Whether SES's refusal names a customer of `group`: True, False (it names other
        addresses only), or None (it names none). The redirect is not a customer's: a refusal
        of it, like one of the sender, is the operator's to fix and is retried."""
        named = {address.rstrip(".") for address in _ADDRESS.findall(str(error))}
        if not named:
            return None
        customers = {confirmation_for(o.event).recipient for o in group}
        return bool(named & customers)

    def _call(self, group: Sequence[_Order]) -> list[Delivery] | MailerError | None:
        """One bulk call: SES's answers, its error, or None when there was no time to make it
        (the group is then released and deferred)."""
        if not self.clock.fits(self.budget.send_ms + self.budget.ledger_phase_ms):
            self._release_all(group)
            self._defer(group, "too little time left to send")
            return None
        confirmations = [confirmation_for(o.event, self.redirect_to) for o in group]
        self.outcome.ses_calls += 1
        try:
            answers = list(self.mailer.send(confirmations))
        except MailerError as exc:
            return exc
        # Anything else (a bug, a kill signal) propagates with the claims held: SES may have
        # accepted the call, and a delayed email is acceptable where a second one is not.
        if len(answers) != len(group):
            # Never seen from SES; without a status per order nothing can be settled, so the
            # call is treated as unsent (a repeat is better than none at all).
            return MailerError(f"{len(answers)} statuses for {len(group)} destinations")
        return answers

    def _conclude(self, group: Sequence[_Order], outcome: list[Delivery] | MailerError) -> None:
        if not isinstance(outcome, MailerError):
            self._settle(group, outcome)
            return
        refused = [
            o for o in group if outcome.permanent and self._blames([o], outcome) is not False
        ]
        self._release_all(group, refused)
        for order in group:
            self.outcome.ses_failures += 1
            if order in refused:
                self._reject(order, "ses-rejected", f"SES refused the confirmation: {outcome}")
            else:
                self.outcome._fail(Problem("ses", _cut(str(outcome)), order.refs, order.order_id))

    def _settle(self, claimed: Sequence[_Order], answers: Sequence[Delivery]) -> None:
        delivered = [(o, a) for o, a in zip(claimed, answers, strict=True) if a.sent]
        for order, answer in delivered:
            self.outcome.sent[order.order_id] = answer.message_id or ""
            self.outcome.duplicates += len(order.records) - 1
        self._record_sent(delivered)
        unsent = [(o, a) for o, a in zip(claimed, answers, strict=True) if not a.sent]
        self._release_all([o for o, _ in unsent], [o for o, a in unsent if not a.retryable])
        for order, answer in unsent:
            self.outcome.ses_failures += 1
            if answer.retryable:
                self.outcome._fail(Problem("ses", answer.error or "", order.refs, order.order_id))
            else:
                self._reject(
                    order, "ses-rejected", f"SES rejected the confirmation: {answer.error}"
                )

    def _record_sent(self, delivered: Sequence[tuple[_Order, Delivery]]) -> None:
        """Record what SES accepted, retrying while time is left: an order whose email is out
        must never be claimable again, and its claim's hold is all that guards it otherwise."""

        message_ids = {o.order_id: a.message_id or "" for o, a in delivered}
        pending = list(delivered)
        delay_s = 0.2
        for attempt in range(1, MAX_SETTLE_ATTEMPTS + 1):
            errors = self._each(
                lambda o: self.ledger.confirm(o.order_id, message_ids[o.order_id], o.fingerprint),
                [o for o, _ in pending],
            )
            failed = [
                (p, e) for p, e in zip(pending, errors, strict=True) if isinstance(e, LedgerError)
            ]
            if not failed:
                return
            pending = [p for p, _ in failed]
            wait_ms = int(delay_s * 1000)
            if attempt == MAX_SETTLE_ATTEMPTS or not self.clock.fits(
                wait_ms + self.budget.ledger_phase_ms
            ):
                break
            self.clock.sleep(delay_s)
            delay_s = min(delay_s * 2, 2.0)
        for (order, _), error in failed:
            # Not retried: the email is out. The claim's hold keeps redeliveries off it.
            self.outcome.problems.append(
                Problem(
                    "ledger",
                    f"sent, but not recorded as sent: {_cut(str(error))}",
                    order.refs,
                    order.order_id,
                    retried=False,
                )
            )

    def _reject(self, order: _Order, stage: str, reason: str) -> None:
        self.outcome.problems.append(
            Problem(stage, _cut(reason), order.refs, order.order_id, retried=False)
        )
        self.rejected.append((order, reason))

    def _defer(self, orders: Iterable[_Order], reason: str) -> None:
        for order in orders:
            self.outcome._fail(Problem("deferred", reason, order.refs, order.order_id))

    def _release_all(self, orders: Sequence[_Order], rejected: Sequence[_Order] = ()) -> None:
        """Release claims side by side, as they were taken; `rejected` are about to be
        dead-lettered, the rest retried."""
        errors = self._each(lambda o: self.ledger.release(o.order_id), orders)
        for order, error in zip(orders, errors, strict=True):
            if isinstance(error, LedgerError):
                # The claim then blocks this order until its hold ends; the mapping's retries
                # get through after that (a fixed replay of a dead letter, too).
                self.outcome.problems.append(
                    Problem(
                        "ledger",
                        f"claim not released: {_cut(str(error))}",
                        order.refs,
                        order.order_id,
                        retried=order not in rejected,
                    )
                )


def _dead_letter_record(
    record: ConsumerRecordRecords,
    reason: str,
    dead_letters: DeadLetterStore,
    consumer: str,
    outcome: ConfirmationReport,
) -> None:
    letter = dead_letter(record, reason=reason, consumer=consumer)
    try:
        dead_letters.put(letter)
    except DeadLetterError as exc:
        # Not stored means not lost only if the mapping delivers the record again.
        detail = f"dead letter not stored ({_cut(str(exc))}) for: {letter.reason}"
        outcome._fail(Problem("dead-letter", detail, (RecordRef.of(record),)))
        return
    outcome.dead_letters.append(letter)


def _cut(text: str) -> str:
    return clip(text, MAX_DETAIL_CHARS)
