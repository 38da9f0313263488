"""The email notifier's handler against moto SES, DynamoDB and S3, fed Lambda's MSK event shape.

SES's template comes from template.yaml itself, so what is rendered here is what SES would
render; sent mail is read from moto's SES backend.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from email import message_from_string
from types import ModuleType
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ses.exceptions import SesError
from moto.ses.models import ses_backends

from devstack.msk_event import PlainRecord
from devstack.template import ROOT, load_template
from orderstream import settings
from orderstream.confirmation import (
    Claim,
    LedgerError,
    MailerError,
    order_fingerprint,
)
from orderstream.email_content import (
    confirmation_for,
    template_data,
)
from orderstream.events import OrderPlaced
from orderstream.models import LineItem
from orderstream.ses_bulk import MAX_DESTINATIONS_PER_CALL
from tests.fakes import LambdaContext, emitted_metric_units, emitted_metrics, logger_output
from tests.samples import load_event
from tests.unit.conftest import SENDER, TEMPLATE, s3_with_bucket
from tests.unit.test_confirmation import (
    kafka_records,
    msk_batch,
    order_placed,
)

BUCKET = "orderstream-dead-letters-test"
NAMES = ["Ada Lovelace", "Grace Hopper", "Katherine Johnson", "Seán Ó Briain", "Zoë O'Brien"]


@pytest.fixture
def ses(aws: None) -> Any:
    client = boto3.client("ses")
    client.verify_email_identity(EmailAddress=SENDER)
    client.create_template(Template=TEMPLATE)
    return client


@pytest.fixture
def s3(aws: None) -> Any:
    return s3_with_bucket(BUCKET)


@pytest.fixture
def notifier(
    idempotency_table: str, ses: Any, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """The handler module with a fresh container: clients and settings built on first use."""
    from functions.email_notifier import app

    monkeypatch.setenv(settings.SENDER_EMAIL, SENDER)
    monkeypatch.setenv(settings.EMAIL_TEMPLATE, TEMPLATE["TemplateName"])
    monkeypatch.setenv(settings.DEAD_LETTER_BUCKET, BUCKET)
    monkeypatch.delenv(settings.EMAIL_REDIRECT_TO, raising=False)
    monkeypatch.delenv(settings.IDEMPOTENCY_EXPIRES_SECONDS, raising=False)
    app.notifier.cache_clear()
    yield app
    app.notifier.cache_clear()


def notifier_resource() -> dict[str, Any]:
    resource: dict[str, Any] = load_template()["Resources"]["EmailNotifierFunction"]
    return resource


TIMEOUT_MS = int(notifier_resource()["Properties"]["Timeout"]) * 1000


def invoke(app: ModuleType, batch: dict[str, Any]) -> Any:
    context = LambdaContext(function_name="orderstream-dev-email-notifier", timeout_ms=TIMEOUT_MS)
    return app.lambda_handler(batch, context)


@pytest.fixture
def log_lines(notifier: ModuleType) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The handler's log lines as the Lambda runtime would receive them (after masking)."""
    with logger_output(notifier.logger) as stream:

        def lines() -> list[dict[str, Any]]:
            return [json.loads(line) for line in stream.getvalue().splitlines()]

        yield lines


class Throttling(SesError):
    code = "Throttling"
    message = "Maximum sending rate exceeded."


@dataclass(frozen=True)
class Sent:
    recipient: str
    data: dict[str, Any]

    @property
    def order_id(self) -> str:
        return str(self.data["order_id"])


def ses_backend() -> Any:
    return ses_backends[DEFAULT_ACCOUNT_ID][os.environ["AWS_REGION"]]


def outbox() -> list[Sent]:
    """Every destination of every bulk call SES accepted, in order."""
    sent = []
    for message in ses_backend().sent_messages:
        assert message.source == SENDER
        assert message.template == TEMPLATE["TemplateName"]
        for destination in message.destinations:
            assert set(destination["Destination"]) == {"ToAddresses"}  # no Cc, no Bcc
            [recipient] = destination["Destination"]["ToAddresses"]
            sent.append(Sent(recipient, json.loads(destination["ReplacementTemplateData"])))
    return sent


def emails_per_order() -> Counter[str]:
    return Counter(s.order_id for s in outbox())


def rendered(ses: Any, data: dict[str, Any]) -> Any:
    """The email SES would build from our template and this data, as a parsed message."""
    text = ses.test_render_template(
        TemplateName=TEMPLATE["TemplateName"], TemplateData=json.dumps(data)
    )["RenderedTemplate"]
    return message_from_string(text)


def parts(message: Any) -> dict[str, str]:
    return {
        part.get_content_type(): part.get_payload(decode=True).decode()
        for part in message.walk()
        if not part.is_multipart()
    }


def orders(count: int) -> list[OrderPlaced]:
    return [order_placed(n, name=NAMES[n % len(NAMES)]) for n in range(count)]


def redelivery(records: list[PlainRecord], response: dict[str, Any]) -> list[PlainRecord]:
    """What the mapping sends again: each partition from its first failed offset on."""
    first_failed: dict[str, int] = {}
    for failure in response["batchItemFailures"]:
        identifier = failure["itemIdentifier"]
        partition, offset = identifier["partition"], identifier["offset"]
        first_failed[partition] = min(offset, first_failed.get(partition, offset))
    return [
        r for r in records if r.offset >= first_failed.get(f"{r.topic}-{r.partition}", sys.maxsize)
    ]


def throttling() -> ClientError:
    response: dict[str, Any] = {
        "Error": {"Code": "Throttling", "Message": "Maximum sending rate exceeded."},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }
    return ClientError(response, "SendBulkTemplatedEmail")  # type: ignore[arg-type]


# ------------------------------------------------------------------ one email per order


def test_a_three_partition_batch_of_20_orders_sends_20_emails(
    notifier: ModuleType, ses: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    events = orders(20)
    batch = msk_batch(kafka_records(events, partitions=3))
    assert len(batch["records"]) == 3

    assert invoke(notifier, batch) == {"batchItemFailures": []}

    sent = {s.order_id: s for s in outbox()}
    assert len(outbox()) == 20
    for event in events:
        assert sent[event.order_id].recipient == event.order.customer.email
        assert sent[event.order_id].data == template_data(event)
    assert len(ses_backend().sent_messages) == 1  # one SendBulkTemplatedEmail for all 20
    out = capsys.readouterr().out
    assert emitted_metric_units(out) | {"ColdStart": None} == {
        "ColdStart": None,
        "EmailsSent": "Count",
        "EmailsSkippedDuplicate": "Count",
        "PoisonRecords": "Count",
        "SesFailures": "Count",
    }
    assert emitted_metrics(out) | {"ColdStart": None} == {
        "ColdStart": None,
        "EmailsSent": 20.0,
        "EmailsSkippedDuplicate": 0.0,
        "PoisonRecords": 0.0,
        "SesFailures": 0.0,
    }


def test_the_email_greets_by_name_and_lists_items_prices_and_total(
    notifier: ModuleType, ses: Any
) -> None:
    items = [
        LineItem(sku="BEANS-250", name="Espresso beans", quantity=2, unit_price="12.50"),
        LineItem(sku="MUG-1", name="Mug", quantity=1, unit_price="8.00"),
    ]
    event = order_placed(7, name="Grace Hopper", items=items, currency="CHF")
    invoke(notifier, msk_batch(kafka_records([event])))

    [sent] = outbox()
    message = rendered(ses, sent.data)
    assert message["Subject"] == f"Your order {event.order_id} is confirmed"
    text, html = parts(message)["text/plain"], parts(message)["text/html"]
    assert text.startswith("Hello Grace Hopper,\n")
    assert f"thank you for your order {event.order_id}." in text
    assert "2 x Espresso beans (BEANS-250) at 12.50 CHF = 25.00 CHF" in text
    assert "1 x Mug (MUG-1) at 8.00 CHF = 8.00 CHF" in text
    assert text.rstrip().endswith("Total: 33.00 CHF")
    assert "<p>Hello Grace Hopper,</p>" in html
    assert (
        '<tr><td>Espresso beans</td><td>BEANS-250</td><td align="right">2</td>'
        '<td align="right">12.50</td><td align="right">25.00</td></tr>'
    ) in html
    assert "<strong>33.00 CHF</strong>" in html


def test_the_same_batch_delivered_three_times_sends_each_email_once(
    notifier: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = msk_batch(kafka_records(orders(20)))
    for _ in range(3):
        capsys.readouterr()
        assert invoke(notifier, batch) == {"batchItemFailures": []}

    assert emails_per_order() == Counter({e.order_id: 1 for e in orders(20)})
    metrics = emitted_metrics(capsys.readouterr().out)
    assert (metrics["EmailsSent"], metrics["EmailsSkippedDuplicate"]) == (0.0, 20.0)


def test_the_ledger_says_sent_only_for_an_order_recorded_as_sent(notifier: ModuleType) -> None:
    """What `orderstream smoke` waits for after placing its order."""
    sent, held = orders(2)
    assert invoke(notifier, msk_batch(kafka_records([sent]))) == {"batchItemFailures": []}
    ledger = notifier.notifier().ledger
    assert ledger.claim(held.order_id, order_fingerprint(held)) is Claim.CLAIMED

    assert ledger.sent(sent.order_id) is True
    assert ledger.sent(held.order_id) is False  # claimed, not sent
    assert ledger.sent(str(uuid.uuid4())) is False  # never seen


def test_an_order_twice_in_one_batch_gets_one_email(notifier: ModuleType) -> None:
    events = orders(3)
    records = kafka_records([*events, events[1]], partitions=2)

    assert invoke(notifier, msk_batch(records)) == {"batchItemFailures": []}
    assert emails_per_order() == Counter({e.order_id: 1 for e in events})


def test_idempotency_records_are_our_own_and_hold_no_customer_data(
    notifier: ModuleType, idempotency_table: str
) -> None:
    from orderstream.publishing import IDEMPOTENCY_KEY_PREFIX as API_PREFIX

    invoke(notifier, msk_batch(kafka_records(orders(2))))

    items = boto3.client("dynamodb").scan(TableName=idempotency_table)["Items"]
    assert len(items) == 2
    for item in items:
        assert item["id"]["S"].startswith("email-notifier#order-confirmation#")
        assert not item["id"]["S"].startswith(API_PREFIX)
        assert item["status"]["S"] == "COMPLETED"
        data = json.loads(item["data"]["S"])
        assert set(data) == {"message_id", "fingerprint"}
        assert re.fullmatch(r"v1:[0-9a-f]{64}", data["fingerprint"])  # a hash, not the order
        assert "@" not in json.dumps(item)
    ttl_days = (
        int(items[0]["expiration"]["N"]) - int(items[0]["in_progress_expiration"]["N"]) / 1000
    ) / 86400
    assert 7.9 < ttl_days < 8.1  # the template's default, longer than the topic's retention


# ------------------------------------------------------------------ poison


def test_poison_and_null_key_samples_dead_letter_the_poison_and_send_the_rest(
    notifier: ModuleType, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = load_event("msk-poison.json")
    batch["records"] |= load_event("msk-null-key.json")["records"]
    poison = batch["records"]["order-placed-2"][1]

    assert invoke(notifier, batch) == {"batchItemFailures": []}

    assert sorted(s.recipient for s in outbox()) == [
        "ada@example.com",
        "grace@example.org",
        "katherine@example.com",
    ]
    key = "dead-letters/email-notifier/order-placed/2/00000000000000000241.json"
    stored = s3.get_object(Bucket=BUCKET, Key=key)
    assert stored["ContentType"] == "application/json"
    letter = json.loads(stored["Body"].read())
    assert base64.b64decode(letter["value"]) == base64.b64decode(poison["value"])
    assert letter["key"] == poison["key"]
    assert letter["headers"] == poison["headers"]
    assert letter["reason"].startswith("value is not UTF-8 JSON")
    assert (letter["consumer"], letter["offset"], letter["partition"]) == ("email-notifier", 241, 2)
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 1
    assert emitted_metrics(capsys.readouterr().out)["PoisonRecords"] == 1.0

    # Redelivered, the poison record overwrites its own dead letter.
    invoke(notifier, batch)
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 1
    assert len(outbox()) == 3


def test_poison_that_cannot_be_dead_lettered_is_reported_for_retry(
    notifier: ModuleType, s3: Any
) -> None:
    s3.delete_bucket(Bucket=BUCKET)

    response = invoke(notifier, load_event("msk-poison.json"))

    assert response == {
        "batchItemFailures": [
            {
                "itemIdentifier": {
                    "partition": "order-placed-2",
                    "topic-partition": "order-placed-2",
                    "offset": 241,
                }
            }
        ]
    }
    assert len(outbox()) == 2


def test_a_dead_letter_put_that_fails_names_its_key_and_the_error(
    notifier: ModuleType, s3: Any
) -> None:
    from aws_lambda_powertools.utilities.kafka import ConsumerRecords

    from orderstream.confirmation import DeadLetterError
    from orderstream.dead_letter import dead_letter
    from orderstream.events import ORDER_EVENTS

    s3.delete_bucket(Bucket=BUCKET)
    event = load_event("msk-poison.json")
    [record] = [r for r in ConsumerRecords(event, ORDER_EVENTS).records if r.offset == 241]
    letter = dead_letter(record, reason="test", consumer="email-notifier")
    with pytest.raises(DeadLetterError) as failed:
        notifier.S3DeadLetters(lambda: s3, BUCKET).put(letter)
    assert str(failed.value).startswith(
        f"PutObject {letter.key} failed: An error occurred (NoSuchBucket)"
    )


def test_the_dead_letter_client_is_made_for_the_first_letter_and_kept(
    notifier: ModuleType, s3: Any
) -> None:
    """A cold start that meets no poison record pays for no S3 client."""
    from aws_lambda_powertools.utilities.kafka import ConsumerRecords

    from orderstream.dead_letter import dead_letter
    from orderstream.events import ORDER_EVENTS

    connected: list[Any] = []

    def connect() -> Any:
        connected.append(s3)
        return s3

    letters = notifier.S3DeadLetters(connect, BUCKET)
    assert connected == []
    event = load_event("msk-poison.json")
    for record in ConsumerRecords(event, ORDER_EVENTS).records:
        letters.put(dead_letter(record, reason="test", consumer="email-notifier"))
    assert len(connected) == 1
    stored = s3.list_objects_v2(Bucket=BUCKET, Prefix="dead-letters/")["KeyCount"]
    assert stored == len(list(ConsumerRecords(event, ORDER_EVENTS).records)) > 1


@pytest.mark.parametrize("keys", ["partition", "topic-partition"])
def test_the_template_parameter_names_failed_records_under_one_key(
    notifier: ModuleType, s3: Any, monkeypatch: pytest.MonkeyPatch, keys: str
) -> None:
    """PartialBatchItemKeys, for the first real deployment's experiment (docs/deploy.md)."""
    monkeypatch.setenv(settings.PARTIAL_BATCH_ITEM_KEYS, keys)
    notifier.notifier.cache_clear()
    s3.delete_bucket(Bucket=BUCKET)

    response = invoke(notifier, load_event("msk-poison.json"))

    assert response == {
        "batchItemFailures": [{"itemIdentifier": {keys: "order-placed-2", "offset": 241}}]
    }


# ------------------------------------------------------------------ SES failures


def test_ses_throttling_on_the_third_call_retries_only_the_unsent(
    notifier: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    client = notifier.notifier().mailer.client
    real_send = client.send_bulk_templated_email
    calls: list[list[str]] = []

    def third_call_throttled(**request: Any) -> Any:
        calls.append(
            [json.loads(d["ReplacementTemplateData"])["order_id"] for d in request["Destinations"]]
        )
        if len(calls) == 3:
            raise throttling()  # what botocore raises once its retries are used up
        return real_send(**request)

    monkeypatch.setattr(client, "send_bulk_templated_email", third_call_throttled)
    events = orders(120)
    records = kafka_records(events)
    capsys.readouterr()

    first = invoke(notifier, msk_batch(records))

    unsent = set(calls[2])
    assert [len(c) for c in calls] == [50, 50, 20]
    assert len(first["batchItemFailures"]) == 20
    assert set(emails_per_order()) == {e.order_id for e in events} - unsent
    assert emitted_metrics(capsys.readouterr().out)["SesFailures"] == 20.0
    [problem] = [line for line in log_lines() if line["message"] == "Confirmations not completed"]
    assert problem["detail"] == (
        "SendBulkTemplatedEmail failed: Throttling: Maximum sending rate exceeded."
    )
    assert set(problem["order_ids"]) == unsent

    again = redelivery(records, first)
    assert invoke(notifier, msk_batch(again)) == {"batchItemFailures": []}
    assert set(calls[3]) == unsent
    assert emails_per_order() == Counter({e.order_id: 1 for e in events})


def test_a_destination_failing_mid_chunk_is_the_only_one_sent_again(
    notifier: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    client = notifier.notifier().mailer.client
    real_send = client.send_bulk_templated_email
    failing: list[str] = []

    def third_destination_fails_once(**request: Any) -> Any:
        destinations = request["Destinations"]
        if failing:
            return real_send(**request)
        victim = destinations[2]
        failing.append(json.loads(victim["ReplacementTemplateData"])["order_id"])
        response = real_send(**{**request, "Destinations": [*destinations[:2], *destinations[3:]]})
        response["Status"].insert(
            2,
            {
                "Status": "TransientFailure",
                "Error": f"Try again later ({victim['Destination']['ToAddresses'][0]})",
            },
        )
        return response

    monkeypatch.setattr(client, "send_bulk_templated_email", third_destination_fails_once)
    events = orders(10)
    records = kafka_records(events)

    first = invoke(notifier, msk_batch(records))

    [victim] = failing
    [failure] = first["batchItemFailures"]
    [record] = [r for r in records if r.key == victim.encode()]
    assert failure["itemIdentifier"] == {
        "partition": f"order-placed-{record.partition}",
        "topic-partition": f"order-placed-{record.partition}",
        "offset": record.offset,
    }
    assert victim not in emails_per_order()
    [problem] = [line for line in log_lines() if line["message"] == "Confirmations not completed"]
    assert problem["level"] == "ERROR"
    assert (problem["stage"], problem["retried"]) == ("ses", True)
    assert problem["order_ids"] == [victim]
    assert problem["records"] == [f"order-placed-{record.partition}:{record.offset}"]
    assert problem["detail"] == "TransientFailure: Try again later (***@example.com)"
    assert "customer" not in json.dumps(log_lines())  # no address in any log line

    assert invoke(notifier, msk_batch(redelivery(records, first))) == {"batchItemFailures": []}
    assert emails_per_order() == Counter({e.order_id: 1 for e in events})


@pytest.mark.filterwarnings("ignore:Exception\\(Throttling\\)")
def test_a_throttle_within_the_retry_budget_goes_unnoticed(
    notifier: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = notifier.notifier().mailer.client
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}
    backend = ses_backend()
    real_send = backend.send_bulk_templated_email
    attempts: list[int] = []

    def throttle_the_first_attempt(*args: Any, **kwargs: Any) -> Any:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            raise Throttling()  # SES answers 400 Throttling; botocore backs off and retries
        return real_send(*args, **kwargs)

    monkeypatch.setattr(backend, "send_bulk_templated_email", throttle_the_first_attempt)

    assert invoke(notifier, msk_batch(kafka_records(orders(3)))) == {"batchItemFailures": []}
    assert attempts == [1, 2]
    assert len(outbox()) == 3


def test_without_the_idempotency_table_nothing_is_sent_and_all_is_retried(
    notifier: ModuleType, idempotency_table: str
) -> None:
    boto3.client("dynamodb").delete_table(TableName=idempotency_table)

    response = invoke(notifier, msk_batch(kafka_records(orders(4))))

    assert len(response["batchItemFailures"]) == 4
    assert outbox() == []


# ------------------------------------------------------------------ escaping, headers, redirect


def test_markup_in_names_is_inert_in_every_part_and_adds_no_header(
    notifier: ModuleType, ses: Any
) -> None:
    item = LineItem(sku="SKU-1", name="<img src=x onerror=alert(1)>", quantity=1, unit_price="1.00")
    event = order_placed(9, name='<script>alert("pwned")</script> & Co', items=[item])
    invoke(notifier, msk_batch(kafka_records([event])))

    [sent] = outbox()
    message = rendered(ses, sent.data)
    html, text = parts(message)["text/html"], parts(message)["text/plain"]
    for forbidden in ("<script", "<img", "onerror=", '"pwned"', " & "):
        assert forbidden not in html
    assert html.count("<") == TEMPLATE["HtmlPart"].count("<")  # only the template's own tags
    assert "\uff1cscript\uff1e" in html  # visible, harmless
    assert "\uff1cscript\uff1e" in text
    assert message.keys() == ["Date", "Subject", "Content-Type", "MIME-Version"]
    assert message["Subject"] == f"Your order {event.order_id} is confirmed"
    assert sent.recipient == "customer9@example.com"


def test_a_name_with_cr_lf_never_reaches_ses(notifier: ModuleType, s3: Any) -> None:
    [record] = kafka_records([order_placed(4)])
    value = json.loads(record.value or b"")
    value["order"]["customer"]["name"] = "Eve\r\nBcc: victim@example.net"
    forged = replace(record, value=json.dumps(value).encode())

    assert invoke(notifier, msk_batch([forged])) == {"batchItemFailures": []}

    assert outbox() == []
    [entry] = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    letter = json.loads(s3.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read())
    assert "control characters" in letter["reason"]
    assert base64.b64decode(letter["value"]) == forged.value


def test_redirect_sends_every_email_to_one_address(
    notifier: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.EMAIL_REDIRECT_TO, "dev-inbox@example.org")
    notifier.notifier.cache_clear()

    invoke(notifier, msk_batch(kafka_records(orders(5))))

    assert [s.recipient for s in outbox()] == ["dev-inbox@example.org"] * 5
    assert len(emails_per_order()) == 5


# ------------------------------------------------------------------ configuration


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        (settings.SENDER_EMAIL, ""),
        (settings.DEAD_LETTER_BUCKET, ""),
        (settings.EMAIL_REDIRECT_TO, "not-an-address"),
        (settings.IDEMPOTENCY_EXPIRES_SECONDS, "soon"),
    ],
)
def test_a_broken_setting_fails_the_invocation_naming_it(
    notifier: ModuleType, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(settings.ConfigurationError, match=variable):
        invoke(notifier, msk_batch(kafka_records(orders(1))))
    assert outbox() == []


def test_the_function_never_imports_kafka_python() -> None:
    code = (
        "import sys; from functions.email_notifier import app; "
        "loaded = sorted(m for m in sys.modules if m == 'kafka' or m.startswith('kafka.')); "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers' / 'shared'}{os.pathsep}{ROOT}"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ledger_calls_of_a_chunk_run_side_by_side_in_order() -> None:
    import threading

    from functions.email_notifier import app as notifier_app

    together = threading.Barrier(5, timeout=10)  # passes only if 5 calls wait at once

    def meet(n: int) -> int:
        together.wait()
        return n * 2

    assert list(notifier_app.LEDGER_CALLS.map(meet, [1, 2, 3, 4, 5])) == [2, 4, 6, 8, 10]
    names = notifier_app.LEDGER_CALLS.map(lambda _: threading.current_thread().name, range(3))
    assert all(name.startswith("ledger") for name in names)


# ------------------------------------------------------------------ time, holds and retries


def test_the_deployed_budget_fits_the_timeout_and_retries_outlast_any_hold(
    notifier: ModuleType,
) -> None:
    """A chunk starts only when its worst case fits, after waiting for held claims; and a held
    order's 100 retries, each lasting at least the wait, outlast the longest hold allowed."""
    budget = notifier.BUDGET
    assert budget.wait_for_claims_ms + budget.poll_ms + budget.chunk_ms <= TIMEOUT_MS
    template = load_template()
    mapping = notifier_resource()["Properties"]["Events"]["OrderPlaced"]["Properties"]
    hold = template["Parameters"]["EmailClaimHoldSeconds"]
    assert (hold["MinValue"], hold["MaxValue"]) == notifier.CLAIM_HOLD_BOUNDS_S
    assert hold["Default"] == notifier.DEFAULT_CLAIM_HOLD_S
    assert mapping["MaximumRetryAttempts"] * budget.wait_for_claims_ms >= hold["MaxValue"] * 1000
    # One chunk per batch: a batch is never deferred for time at the start of an invocation.
    assert mapping["BatchSize"] <= MAX_DESTINATIONS_PER_CALL


def test_worst_case_counts_every_attempt_and_the_longest_backoff(notifier: ModuleType) -> None:
    config = Config(
        retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=2, read_timeout=5
    )
    assert notifier.worst_case_ms(config) == (3 * 7 + (1 + 5) + (2 + 5)) * 1000


def test_the_backoff_before_a_retry_is_capped_at_twenty_seconds(notifier: ModuleType) -> None:
    config = Config(
        retries={"mode": "standard", "total_max_attempts": 8}, connect_timeout=1, read_timeout=2
    )
    backoff = (1 + 5) + (2 + 5) + (4 + 5) + (8 + 5) + (16 + 5) + (20 + 5) + (20 + 5)
    assert notifier.worst_case_ms(config) == (8 * 3 + backoff) * 1000


def test_a_claim_holds_the_order_for_the_configured_hold(
    notifier: ModuleType, idempotency_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.EMAIL_CLAIM_HOLD_SECONDS, "600")
    notifier.notifier.cache_clear()
    ledger = notifier.notifier().ledger
    ledger.register_lambda_context(LambdaContext(timeout_ms=TIMEOUT_MS))
    before = time.time()
    assert ledger.claim("order-1", "f" * 64) is Claim.CLAIMED
    [item] = boto3.client("dynamodb").scan(TableName=idempotency_table)["Items"]
    held_for = int(item["in_progress_expiration"]["N"]) / 1000 - before
    assert 599 <= held_for <= 602
    assert ledger.claim("order-1", "f" * 64) is Claim.IN_PROGRESS


def test_a_claim_outlasts_the_invocation_that_holds_it_when_the_hold_is_shorter(
    notifier: ModuleType, idempotency_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that expired while its invocation was still sending would let a redelivery
    send a second email: it is held for the time left at least."""
    monkeypatch.setenv(settings.EMAIL_CLAIM_HOLD_SECONDS, "60")
    notifier.notifier.cache_clear()
    ledger = notifier.notifier().ledger
    ledger.register_lambda_context(LambdaContext(timeout_ms=300_000))
    before = time.time()
    assert ledger.claim("order-1", "f" * 64) is Claim.CLAIMED
    [item] = boto3.client("dynamodb").scan(TableName=idempotency_table)["Items"]
    held_for = int(item["in_progress_expiration"]["N"]) / 1000 - before
    assert 299 <= held_for <= 302


@pytest.mark.parametrize("raw", ["59", "1201", "soon"])
def test_a_hold_outside_its_bounds_fails_the_configuration(notifier: ModuleType, raw: str) -> None:
    with pytest.raises(settings.ConfigurationError, match=settings.EMAIL_CLAIM_HOLD_SECONDS):
        notifier.claim_hold_ms({settings.EMAIL_CLAIM_HOLD_SECONDS: raw})


def test_a_failed_lookup_of_an_existing_claim_is_a_ledger_error(notifier: ModuleType) -> None:
    """Today the lookup's ClientError escaped claim() and failed the whole batch."""
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyItemAlreadyExistsError,
    )

    class Persistence:
        def configure(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __init__(self) -> None:
            self.looked_up: list[Any] = []

        def save_inprogress(self, *args: Any, **kwargs: Any) -> None:
            raise IdempotencyItemAlreadyExistsError()  # without the old record

        def get_record(self, data: Any) -> None:
            self.looked_up.append(data)
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException"}}, "GetItem"
            )

    persistence = Persistence()
    ledger = notifier.IdempotencyLedger(persistence, IdempotencyConfig(), 60_000)
    with pytest.raises(LedgerError) as failed:
        ledger.claim("order-1", "f" * 64)
    assert str(failed.value) == (
        "claim failed: ClientError: An error occurred (ProvisionedThroughputExceededException) "
        "when calling the GetItem operation: Unknown"
    )
    assert persistence.looked_up == [{"order_id": "order-1"}]  # the claim's own record


@pytest.mark.parametrize(
    ("step", "call"),
    [
        ("release", lambda ledger: ledger.release("order-1")),
        ("confirm", lambda ledger: ledger.confirm("order-1", "m-1", "f" * 64)),
    ],
)
def test_a_failed_ledger_write_is_a_ledger_error_that_names_the_cause(
    notifier: ModuleType, step: str, call: Callable[[Any], None]
) -> None:
    def refused(*args: Any, **kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "InternalServerError", "Message": "x"}}, "Write")

    class Persistence:
        def configure(self, *args: Any, **kwargs: Any) -> None:
            pass

        delete_record = save_success = staticmethod(refused)

    with pytest.raises(LedgerError) as failed:
        call(notifier.IdempotencyLedger(Persistence(), IdempotencyConfig(), 60_000))
    assert str(failed.value) == (
        f"{step} failed: ClientError: An error occurred (InternalServerError) when calling the "
        "Write operation: x"
    )


def test_a_reused_order_id_is_dead_lettered_with_its_reason(notifier: ModuleType, s3: Any) -> None:
    first = order_placed(5)
    assert invoke(notifier, msk_batch(kafka_records([first], partitions=1))) == {
        "batchItemFailures": []
    }
    reused = order_placed(5, name="Someone Else", email="else@example.com")
    answer = invoke(notifier, msk_batch(kafka_records([reused], partitions=1, first_offset=700)))

    assert answer == {"batchItemFailures": []}
    assert emails_per_order() == Counter({first.order_id: 1})
    [key] = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    letter = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert letter["offset"] == 700
    assert "confirmed before for a different order" in letter["reason"]


@pytest.mark.parametrize(
    ("code", "permanent"),
    [("InvalidParameterValue", True), ("MessageRejected", True), ("Throttling", False)],
)
def test_a_call_ses_refuses_as_a_whole_is_permanent_only_for_bad_input(
    notifier: ModuleType, code: str, permanent: bool
) -> None:
    class Refusing:
        def send_bulk_templated_email(self, **kwargs: Any) -> dict[str, Any]:
            raise ClientError({"Error": {"Code": code, "Message": "no"}}, "SendBulkTemplatedEmail")

    mailer = notifier.SesMailer(Refusing(), sender=SENDER, template="t")
    with pytest.raises(MailerError) as refused:
        mailer.send([confirmation_for(order_placed(1))])
    assert refused.value.permanent is permanent


@pytest.mark.parametrize(
    ("remembered", "claim"),
    [
        ("v1:" + "a" * 64, Claim.SENT),
        ("v1:" + "b" * 64, Claim.CONFLICT),
        ("v2:" + "b" * 64, Claim.SENT),  # another version: never taken for another order
        (None, Claim.SENT),  # written before fingerprints were kept
    ],
)
def test_only_a_comparable_fingerprint_that_differs_is_another_order(
    notifier: ModuleType, remembered: str | None, claim: Claim
) -> None:
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

    stored = DataRecord(
        idempotency_key="k",
        status="COMPLETED",
        response_data=json.dumps({"message_id": "m", "fingerprint": remembered}),
    )
    assert notifier._claim_of(stored, "v1:" + "a" * 64) is claim


def test_each_invocation_logs_the_records_it_holds_per_partition(
    notifier: ModuleType, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    """docs/deploy.md reads this line to see which partial-batch key Lambda honoured."""
    invoke(notifier, load_event("msk-orders.json"))
    [received] = [line for line in log_lines() if line["message"] == "Batch received"]
    assert received["records"] == {
        "order-placed-0": "40..41 (2)",
        "order-placed-1": "140..142 (3)",
    }


def test_each_dead_letter_and_the_batch_are_logged_with_what_an_operator_needs(
    notifier: ModuleType, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    """The poison sample's dead letter, and the summary line a dashboard's query reads."""
    batch = load_event("msk-poison.json")
    [orders] = batch["records"].values()
    order_ids = sorted(
        json.loads(base64.b64decode(orders[i]["value"]))["order"]["order_id"] for i in (0, 2)
    )
    invoke(notifier, batch)
    [letter] = [line for line in log_lines() if line["message"] == "Record dead-lettered"]
    assert letter["level"] == "WARNING"
    assert letter["record"] == "order-placed-2:241"
    assert letter["dead_letter_key"] == (
        "dead-letters/email-notifier/order-placed/2/00000000000000000241.json"
    )
    assert letter["reason"].startswith("value is not UTF-8 JSON")
    [summary_line] = [line for line in log_lines() if line["message"] == "Batch confirmed"]
    assert summary_line["level"] == "INFO"
    summary = {k: summary_line[k] for k in ("sent", "duplicates", "poison", "failed_records")}
    assert summary == {"sent": 2, "duplicates": 0, "poison": 1, "failed_records": 0}
    assert summary_line["redirected"] is False
    assert summary_line["order_ids"] == order_ids


def test_the_ledger_keys_its_records_by_order_id_and_keeps_them_for_the_expiry(
    notifier: ModuleType,
) -> None:
    config = notifier.ledger_config({settings.IDEMPOTENCY_EXPIRES_SECONDS: "7200"})
    assert (config.event_key_jmespath, config.raise_on_no_idempotency_key) == ("order_id", True)
    assert (config.expires_after_seconds, config.hash_function) == (7200, "sha256")
    assert notifier.ledger_config({}).expires_after_seconds == 8 * 24 * 60 * 60
    assert notifier.idempotency_expiry({settings.IDEMPOTENCY_EXPIRES_SECONDS: "3600"}) == 3600
    with pytest.raises(settings.ConfigurationError, match=settings.IDEMPOTENCY_EXPIRES_SECONDS):
        notifier.idempotency_expiry({settings.IDEMPOTENCY_EXPIRES_SECONDS: "3599"})


def test_the_claim_hold_is_read_in_seconds_and_kept_in_milliseconds(notifier: ModuleType) -> None:
    assert notifier.claim_hold_ms({settings.EMAIL_CLAIM_HOLD_SECONDS: "600"}) == 600_000
    assert notifier.claim_hold_ms({}) == 15 * 60 * 1000
