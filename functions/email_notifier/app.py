"""The email notifier: one SES order confirmation per order_id, whatever Kafka redelivers.

Wires Powertools and three adapters (`IdempotencyLedger`, `SesMailer`, `S3DeadLetters`) around
`orderstream.confirmation.confirm_batch`, and answers with a partial batch response. It never
imports kafka-python. See docs/design.md, "The email notifier's adapters".
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.shared.constants import METRICS_NAMESPACE_ENV
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    BaseError as IdempotencyError,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS
from aws_lambda_powertools.utilities.kafka import ConsumerRecords, kafka_consumer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from orderstream import settings
from orderstream.confirmation import (
    FINGERPRINT_VERSION,
    Claim,
    ConfirmationReport,
    DeadLetterError,
    KafkaBatchResponse,
    LedgerError,
    MailerError,
    Problem,
    TimeBudget,
    confirm_batch,
)
from orderstream.dead_letter import CONTENT_TYPE as DEAD_LETTER_CONTENT_TYPE
from orderstream.dead_letter import DeadLetter
from orderstream.email_content import Confirmation
from orderstream.events import ORDER_EVENTS
from orderstream.redaction import masked_log_line
from orderstream.ses_bulk import (
    PERMANENT_SES_STATUSES,
    Delivery,
    bulk_request,
    deliveries,
)

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
    from aws_lambda_powertools.utilities.kafka.consumer_records import ConsumerRecordRecords
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from mypy_boto3_s3 import S3Client

#: Names the dead letters and the logs; part of every dead-letter key.
CONSUMER: Final = "email-notifier"
# Fixed, and distinct from the order API's "order-api#order": both keep their records in the
# one idempotency table, keyed on the same order_id, and must never see each other's.
IDEMPOTENCY_KEY_PREFIX: Final = "email-notifier#order-confirmation"
#: Longer than the topic's retention (7 days), so a replay from TRIM_HORIZON never mails twice.
DEFAULT_IDEMPOTENCY_EXPIRES_SECONDS: Final = 8 * 24 * 60 * 60

# Standard mode retries throttling ("Maximum sending rate exceeded"), 5xx and connection errors
# with jittered exponential backoff. 3 attempts bound one bulk call to about 25 s
# (3 x (2 s connect + 5 s read) + backoff). Adaptive mode's client-side limiter would only pay
# off for many threads sharing one client. A read timeout is the one ambiguous case: SES may
# have sent, the retry then sends again (SES v1 has no idempotency token) - rare, and the
# alternative of not retrying would hand the same ambiguity to the mapping's retry.
SES_CONFIG: Final = Config(
    retries={"mode": "standard", "total_max_attempts": 3},
    connect_timeout=2,
    read_timeout=5,
    tcp_keepalive=True,
)
# A chunk's 50 claims (and 50 confirmations) are independent round trips to DynamoDB: made
# side by side, all at once, they take one round trip's time instead of fifty, and a chunk's
# ledger phase is bounded by one call's worst case.
LEDGER_CONCURRENCY: Final = 50
LEDGER_CALLS = ThreadPoolExecutor(max_workers=LEDGER_CONCURRENCY, thread_name_prefix="ledger")


# Short timeouts: a slow table must fail the claim (and retry the record), not eat the time
# the SES call needs.
DYNAMODB_CONFIG: Final = Config(
    retries={"mode": "standard", "total_max_attempts": 2},
    connect_timeout=1,
    read_timeout=2,
    max_pool_connections=LEDGER_CONCURRENCY,
)
S3_CONFIG: Final = Config(
    retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=2, read_timeout=10
)


def worst_case_ms(config: Config) -> int:
    """How long one call with this configuration can take, retries included: each attempt's
    connect and read timeouts, and botocore's standard backoff before each retry (at most
    min(2**(n-1), 20) s, plus up to 5 s when the service asks for more with retry-after)."""
    # botocore's stubs do not declare Config's attributes: read them as the options they are.
    options: dict[str, Any] = vars(config)
    attempts = int(options["retries"]["total_max_attempts"])
    per_attempt_s = float(options["connect_timeout"]) + float(options["read_timeout"])
    backoff_s = sum(min(2 ** (n - 1), 20) + 5 for n in range(1, attempts))
    return int((attempts * per_attempt_s + backoff_s) * 1000)


#: What each call of a chunk may take; a chunk, a send and each settle attempt start only
#: when theirs fits in the time left (ledger calls of a chunk run side by side: one call's).
BUDGET: Final = TimeBudget(
    ledger_phase_ms=worst_case_ms(DYNAMODB_CONFIG),
    send_ms=worst_case_ms(SES_CONFIG),
    wait_for_claims_ms=15_000,
    poll_ms=3_000,
)
#: How long a claim keeps other invocations off its order (EmailClaimHoldSeconds in the
#: template): the invocation's own time, or this much if that is shorter. It is the only guard
#: left when SES accepted an email and the table then could not record it (the claim cannot be
#: extended any more): a redelivery within the hold finds the order claimed and does not send
#: it, one after the hold sends it a second time. What a longer hold costs: an order whose
#: invocation died *before* sending waits that long for its confirmation (a delayed email is
#: acceptable, a second one is not). The mapping's 100 retries of a held order each last at
#: least `BUDGET.wait_for_claims_ms` (15 s), 25 minutes in all: no hold the template allows
#: (at most 20 minutes) lets a held order be retried into the failure destination unsent.
DEFAULT_CLAIM_HOLD_S: Final = 15 * 60
CLAIM_HOLD_BOUNDS_S: Final = (60, 20 * 60)


def claim_hold_ms(environ: Mapping[str, str] | None = None) -> int:
    low, high = CLAIM_HOLD_BOUNDS_S
    hold_s = settings.seconds(
        settings.EMAIL_CLAIM_HOLD_SECONDS, DEFAULT_CLAIM_HOLD_S, low, high, environ
    )
    return hold_s * 1000


logger = Logger(json_serializer=masked_log_line)
# Read here, not left to Metrics: the namespace must never be missing when metrics are flushed.
metrics = Metrics(namespace=os.environ.get(METRICS_NAMESPACE_ENV) or "orderstream")


class IdempotencyLedger:
    """The ledger of sent confirmations, as Powertools idempotency records.

    Not `idempotent_function`: it wraps one call per key and records the result when that call
    returns, while one SendBulkTemplatedEmail serves up to 50 keys and succeeds or fails per
    destination. So the three steps `idempotent_function` takes inside (`save_inprogress`,
    `save_success`, `delete_record`) are taken here around the bulk call, one per order. The
    records stay Powertools' own - same table, attributes, expiry and in-progress expiry at
    the invocation's deadline - so one store and one format serve the API and this function.
    """

    def __init__(
        self, persistence: BasePersistenceLayer, config: IdempotencyConfig, hold_ms: int
    ) -> None:
        self.persistence = persistence
        self.config = config
        self.hold_ms = hold_ms
        persistence.configure(config, key_prefix=IDEMPOTENCY_KEY_PREFIX)

    def register_lambda_context(self, context: LambdaContext) -> None:
        # An in-progress claim outlives a killed invocation only until its deadline.
        self.config.register_lambda_context(context)

    def claim(self, order_id: str, fingerprint: str) -> Claim:
        data = _key(order_id)
        try:
            try:
                self.persistence.save_inprogress(data, remaining_time_in_millis=self._hold_ms())
            except IdempotencyItemAlreadyExistsError as exc:
                # The lookup can fail too: inside this try, it is a LedgerError like the rest.
                return _claim_of(exc.old_data_record or self._stored(data), fingerprint)
        except (BotoCoreError, ClientError, IdempotencyError) as exc:
            raise LedgerError(f"claim failed: {type(exc).__name__}: {exc}") from exc
        return Claim.CLAIMED

    def confirm(self, order_id: str, message_id: str, fingerprint: str) -> None:
        # SES's message id and the order's fingerprint (a hash): no customer data at rest in
        # the idempotency table.
        result = {"message_id": message_id, "fingerprint": fingerprint}
        try:
            self.persistence.save_success(_key(order_id), result=result)
        except (BotoCoreError, ClientError, IdempotencyError) as exc:
            raise LedgerError(f"confirm failed: {type(exc).__name__}: {exc}") from exc

    def release(self, order_id: str) -> None:
        try:
            self.persistence.delete_record(_key(order_id), MailerError("not sent"))
        except (BotoCoreError, ClientError, IdempotencyError) as exc:
            raise LedgerError(f"release failed: {type(exc).__name__}: {exc}") from exc

    def sent(self, order_id: str) -> bool:
        """Whether the order's confirmation is recorded as sent."""
        stored = self._stored(_key(order_id))
        return stored is not None and stored.status == STATUS_CONSTANTS["COMPLETED"]

    def _stored(self, data: dict[str, Any]) -> DataRecord | None:
        try:
            return self.persistence.get_record(data)
        except IdempotencyItemNotFoundError:
            return None  # released meanwhile: answered IN_PROGRESS, so a retry decides

    def _hold_ms(self) -> int:
        context = self.config.lambda_context
        time_left = context.get_remaining_time_in_millis() if context is not None else 0
        return max(time_left, self.hold_ms)


def _key(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id}


def _claim_of(stored: DataRecord | None, fingerprint: str) -> Claim:
    if stored is None or stored.status != STATUS_CONSTANTS["COMPLETED"]:
        return Claim.IN_PROGRESS  # held, or released meanwhile: a retry decides
    remembered = str((stored.response_json_as_dict() or {}).get("fingerprint") or "")
    # Records without a fingerprint, or with another version of it, count as the same order:
    # only a comparable fingerprint that differs is another order.
    comparable = remembered.startswith(FINGERPRINT_VERSION) and fingerprint.startswith(
        FINGERPRINT_VERSION
    )
    return Claim.CONFLICT if comparable and remembered != fingerprint else Claim.SENT


class BulkTemplatedEmailClient(Protocol):
    """The one SES call the mailer makes (there are no SES type stubs in the venv)."""

    def send_bulk_templated_email(self, **kwargs: Any) -> dict[str, Any]: ...


class SesMailer:
    def __init__(self, client: BulkTemplatedEmailClient, *, sender: str, template: str) -> None:
        self.client = client
        self.sender = sender
        self.template = template

    def send(self, confirmations: Sequence[Confirmation]) -> list[Delivery]:
        request = bulk_request(confirmations, sender=self.sender, template=self.template)
        try:
            response = self.client.send_bulk_templated_email(**request)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise MailerError(
                f"SendBulkTemplatedEmail failed: {error.get('Code')}: {error.get('Message')}",
                # SES refused the request itself, e.g. for an address it cannot take: the
                # same call fails the same way; the protocol splits it to find the one.
                permanent=error.get("Code") in PERMANENT_SES_STATUSES,
            ) from exc
        except BotoCoreError as exc:
            raise MailerError(f"SendBulkTemplatedEmail failed: {exc}") from exc
        return deliveries(response.get("Status", []))


class S3DeadLetters:
    """Where poison records go. Most containers never write one, so the S3 client (some 30 ms
    of a cold start) is made for the first letter, not for the first invocation."""

    def __init__(self, connect: Callable[[], S3Client], bucket: str) -> None:
        self._connect = connect
        self._client: S3Client | None = None
        self.bucket = bucket

    def put(self, letter: DeadLetter) -> None:
        if self._client is None:
            self._client = self._connect()
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=letter.key,
                Body=letter.body,
                ContentType=DEAD_LETTER_CONTENT_TYPE,
            )
        except (BotoCoreError, ClientError) as exc:
            raise DeadLetterError(f"PutObject {letter.key} failed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Notifier:
    ledger: IdempotencyLedger
    mailer: SesMailer
    dead_letters: S3DeadLetters
    redirect_to: str | None
    item_keys: tuple[str, ...]


@functools.cache
def notifier() -> Notifier:
    """The container's clients and settings, built on first use: a missing setting fails the
    invocation with its variable's name, and tests set the environment after importing."""
    redirect_to = os.environ.get(settings.EMAIL_REDIRECT_TO, "").strip() or None
    if redirect_to is not None and not _looks_like_address(redirect_to):
        raise settings.ConfigurationError(
            f"{settings.EMAIL_REDIRECT_TO}={redirect_to!r} is not an e-mail address"
        )
    # One boto3 session for every client: a session of its own (Powertools' default) would
    # read botocore's endpoint and service data a second time at each cold start.
    persistence = DynamoDBPersistenceLayer(
        table_name=settings.required(settings.IDEMPOTENCY_TABLE),
        boto3_client=boto3.client("dynamodb", config=DYNAMODB_CONFIG),
    )
    return Notifier(
        ledger=IdempotencyLedger(persistence, ledger_config(), claim_hold_ms()),
        mailer=SesMailer(
            boto3.client("ses", config=SES_CONFIG),
            sender=settings.required(settings.SENDER_EMAIL),
            template=settings.required(settings.EMAIL_TEMPLATE),
        ),
        dead_letters=S3DeadLetters(
            lambda: boto3.client("s3", config=S3_CONFIG),
            settings.required(settings.DEAD_LETTER_BUCKET),
        ),
        redirect_to=redirect_to,
        item_keys=settings.partial_batch_item_keys(),
    )


def ledger_config(environ: Mapping[str, str] | None = None) -> IdempotencyConfig:
    """How the ledger keys and keeps its records (the operator's smoke test reads them too)."""
    return IdempotencyConfig(
        event_key_jmespath="order_id",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=idempotency_expiry(environ),
        hash_function="sha256",
    )


def idempotency_expiry(environ: Mapping[str, str] | None = None) -> int:
    """How long a sent confirmation is remembered; an hour at least, 8 days by default."""
    return settings.idempotency_expiry(DEFAULT_IDEMPOTENCY_EXPIRES_SECONDS, 3600, environ)


def _looks_like_address(text: str) -> bool:
    return bool(re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", text))


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=True)
@kafka_consumer(schema_config=ORDER_EVENTS)
def lambda_handler(event: ConsumerRecords, context: LambdaContext) -> KafkaBatchResponse:
    ports = notifier()
    ports.ledger.register_lambda_context(context)
    # Which records this invocation holds: after a partial failure, the next invocation's line
    # shows which partial-batch key the mapping honoured (docs/deploy.md).
    logger.info("Batch received", records=record_spans(event.records))
    outcome = confirm_batch(
        event.records,
        ledger=ports.ledger,
        mailer=ports.mailer,
        dead_letters=ports.dead_letters,
        consumer=CONSUMER,
        redirect_to=ports.redirect_to,
        time_left_ms=context.get_remaining_time_in_millis,
        budget=BUDGET,
        ledger_calls=LEDGER_CALLS,
    )
    report(outcome, redirected=ports.redirect_to is not None)
    return outcome.response(ports.item_keys)


def record_spans(records: Iterable[ConsumerRecordRecords]) -> dict[str, str]:
    """Each "<topic>-<partition>" of the batch with its first..last offset and count."""
    offsets: dict[str, list[int]] = {}
    for record in records:
        offsets.setdefault(f"{record.topic}-{record.partition}", []).append(record.offset)
    return {
        name: f"{min(found)}..{max(found)} ({len(found)})"
        for name, found in sorted(offsets.items())
    }


def report(outcome: ConfirmationReport, *, redirected: bool) -> None:
    metrics.add_metric(name="EmailsSent", unit=MetricUnit.Count, value=len(outcome.sent))
    metrics.add_metric(
        name="EmailsSkippedDuplicate", unit=MetricUnit.Count, value=outcome.duplicates
    )
    metrics.add_metric(name="PoisonRecords", unit=MetricUnit.Count, value=outcome.poison)
    metrics.add_metric(name="SesFailures", unit=MetricUnit.Count, value=outcome.ses_failures)
    for letter in outcome.dead_letters:
        logger.warning(
            "Record dead-lettered",
            record=f"{letter.topic}-{letter.partition}:{letter.offset}",
            dead_letter_key=letter.key,
            reason=letter.reason,
        )
    # One line per distinct problem, not per order: a failed bulk call is one event.
    grouped: dict[tuple[str, str, bool], list[Problem]] = {}
    for problem in outcome.problems:
        grouped.setdefault((problem.stage, problem.detail, problem.retried), []).append(problem)
    for (stage, detail, retried), problems in grouped.items():
        logger.error(
            "Confirmations not completed",
            stage=stage,
            detail=detail,
            retried=retried,
            order_ids=[p.order_id for p in problems if p.order_id],
            records=[str(ref) for p in problems for ref in p.records],
        )
    logger.info(
        "Batch confirmed",
        extra={**outcome.summary(), "redirected": redirected, "order_ids": sorted(outcome.sent)},
    )
