"""How many SES calls order confirmations cost: the notifier's bulk sends vs one call per order.

Against moto in-process (SES, DynamoDB, S3), in one run:

* **bulk**: the email notifier's real handler over `--orders` orders, delivered as the mapping
  would (batches of `--batch-size`, the template's BatchSize, over `--partitions` partitions),
  counting every SES call it makes (SendBulkTemplatedEmail, up to 50 destinations each);
* **baseline**: one SendTemplatedEmail per order, same template, same template data.

Prints both call counts, their ratio and each side's wall time. The times are moto's (and the
bulk side includes the idempotency writes), so only the call counts say what SES would bill
in requests and throttle on.

    .venv/bin/python bench/emails.py [--orders 1000] [--batch-size 100] [--partitions 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from typing import Any, Final

from bench._common import CLUSTER_ARN, PartResult, Row, progress
from devstack.msk_event import PlainRecord, msk_event, sample_order_records

SENDER = "orders@example.com"
TABLE = "orderstream-bench-idempotency"
BUCKET = "orderstream-bench-dead-letters"
REGION: Final = "eu-west-1"


def quiet_offline_environment() -> None:
    """Fake credentials, no tracing, metrics or info logs: only the figures are printed."""
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "POWERTOOLS_SERVICE_NAME": "email-notifier-bench",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "ERROR",
        }
    )
    os.environ.pop("AWS_PROFILE", None)


def create_resources() -> str:
    """Table, bucket, sender identity and the template from template.yaml; the template's name."""
    import boto3

    from devstack.template import Resolver, load_template

    boto3.client("dynamodb").create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    boto3.client("s3").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    ses = boto3.client("ses")
    ses.verify_email_identity(EmailAddress=SENDER)
    template = load_template()
    spec = template["Resources"]["OrderConfirmationTemplate"]["Properties"]["Template"]
    resolved: dict[str, str] = Resolver(template, {"Stage": "dev", "SenderEmail": SENDER}).resolve(
        spec
    )
    ses.create_template(Template=resolved)
    return resolved["TemplateName"]


@contextmanager
def counting_calls(client: Any, service: str) -> Iterator[Counter[str]]:
    """Counts the client's API calls by operation (retries not included)."""
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client.meta.events.register(f"before-call.{service}", count)
    try:
        yield calls
    finally:
        client.meta.events.unregister(f"before-call.{service}", count)


def ses_destinations() -> int:
    """Emails moto's SES accepted so far (bulk calls count each destination)."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    sent = 0
    for message in ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages:
        destinations = message.destinations
        sent += len(destinations) if isinstance(destinations, list) else 1
    return sent


def bulk(
    records: list[PlainRecord], batch_size: int, template: str
) -> tuple[Counter[str], Counter[str], float]:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    from devstack.context import LambdaContext
    from functions.email_notifier import app
    from orderstream import settings

    os.environ.update(
        {
            settings.IDEMPOTENCY_TABLE: TABLE,
            settings.DEAD_LETTER_BUCKET: BUCKET,
            settings.SENDER_EMAIL: SENDER,
            settings.EMAIL_TEMPLATE: template,
            settings.EMAIL_REDIRECT_TO: "",
        }
    )
    app.notifier.cache_clear()
    notifier = app.notifier()
    persistence = notifier.ledger.persistence
    assert isinstance(persistence, DynamoDBPersistenceLayer)
    with (
        counting_calls(notifier.mailer.client, "ses") as calls,
        counting_calls(persistence.client, "dynamodb") as ledger_calls,
        redirect_stdout(io.StringIO()),  # the metrics Powertools prints per invocation
    ):
        started = time.perf_counter()
        for start in range(0, len(records), batch_size):
            event = msk_event(records[start : start + batch_size], CLUSTER_ARN, "b-1:9098")
            response = app.lambda_handler(event, LambdaContext(timeout_ms=60_000))
            if response["batchItemFailures"]:
                raise SystemExit(f"the notifier reported failures: {response}")
        return calls, ledger_calls, time.perf_counter() - started


def one_call_per_order(records: list[PlainRecord], template: str) -> tuple[Counter[str], float]:
    import boto3

    from orderstream.email_content import confirmation_for
    from orderstream.events import from_bytes

    client = boto3.client("ses")
    with counting_calls(client, "ses") as calls:
        started = time.perf_counter()
        for record in records:
            confirmation = confirmation_for(from_bytes(record.value, record.key))
            client.send_templated_email(
                Source=SENDER,
                Destination={"ToAddresses": [confirmation.recipient]},
                Template=template,
                TemplateData=json.dumps(confirmation.data, separators=(",", ":")),
            )
        return calls, time.perf_counter() - started


PART_ORDERS: Final = 1_000
PART_BATCH: Final = 100  # the template's BatchSize


def part(result: PartResult, quick: bool) -> None:
    orders = PART_ORDERS // 10 if quick else PART_ORDERS
    quiet_offline_environment()
    from moto import mock_aws  # after the environment: moto reads it at import

    progress(f"email: {orders:,} orders in batches of {PART_BATCH}")
    records = sample_order_records(orders, 3, items_per_order=3)
    with mock_aws():
        template = create_resources()
        bulk_calls, ledger_calls, bulk_s = bulk(records, PART_BATCH, template)
        bulk_sent = ses_destinations()
        single_calls, single_s = one_call_per_order(records, template)
        single_sent = ses_destinations() - bulk_sent
    per_1000 = 1000 / orders
    result.rows.append(
        Row(
            "email: SES calls per 1,000 orders, bulk vs one per order",
            sum(bulk_calls.values()) * per_1000,
            sum(single_calls.values()) * per_1000,
            "calls",
        )
    )
    result.rows.append(
        Row(
            "email: time per 1,000 orders, bulk vs one per order",
            bulk_s * 1000 * per_1000,
            single_s * 1000 * per_1000,
            "ms",
        )
    )
    result.notes.append(
        f"email: {sum(ledger_calls.values()) / orders:.2f} DynamoDB calls per order "
        "(claim, then record as sent: 2 when nothing fails)."
    )
    result.notes.append(
        f"email: bench/emails.py, moto in-process; the notifier's handler in batches of "
        f"{PART_BATCH} ({dict(bulk_calls)}, {bulk_sent:,} emails, plus {dict(ledger_calls)} "
        f"idempotency calls in its time) vs one SendTemplatedEmail per order ({single_sent:,} "
        "emails). The call count is what SES bills and throttles; the times are moto's."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args()

    quiet_offline_environment()
    from moto import mock_aws

    records = sample_order_records(args.orders, args.partitions, items_per_order=3)
    with mock_aws():
        template = create_resources()
        bulk_calls, ledger_calls, bulk_seconds = bulk(records, args.batch_size, template)
        bulk_sent = ses_destinations()
        single_calls, single_seconds = one_call_per_order(records, template)
        single_sent = ses_destinations() - bulk_sent

    bulk_total, single_total = sum(bulk_calls.values()), sum(single_calls.values())
    print(
        f"{args.orders:,} orders in batches of {args.batch_size} over {args.partitions} "
        f"partitions (moto in-process)"
    )
    print(
        f"bulk (email notifier)     {bulk_total:6,} SES calls  {bulk_sent:6,} emails  "
        f"{bulk_seconds * 1000:8.0f} ms  {dict(bulk_calls)}"
    )
    print(
        f"one call per order        {single_total:6,} SES calls  {single_sent:6,} emails  "
        f"{single_seconds * 1000:8.0f} ms  {dict(single_calls)}"
    )
    print(f"  (the bulk side also made {dict(ledger_calls)} idempotency calls to DynamoDB)")
    print(f"DynamoDB calls per order: {sum(ledger_calls.values()) / args.orders:.2f}")
    print(
        f"SES calls per 1,000 orders: bulk {bulk_total * 1000 / args.orders:,.0f}, "
        f"one per order {single_total * 1000 / args.orders:,.0f}; "
        f"ratio one-per-order / bulk: {single_total / bulk_total:.1f}x"
    )


if __name__ == "__main__":
    main()
