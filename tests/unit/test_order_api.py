"""POST /orders through the real handler, with a fake producer and DynamoDB in moto.

Every answer the API can give is driven here from an API Gateway event; the broker itself is
exercised in tests/integration/test_order_api_broker.py.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from kafka.errors import KafkaTimeoutError

from functions.order_api import app
from orderstream import events, kafka_client, publishing, settings
from orderstream.http_edge import correlation_id_for
from orderstream.models import OrderRequest
from orderstream.publishing import OrderInProgressError
from orderstream.redaction import mask_emails
from tests.fakes import LambdaContext, emitted_metric_units, emitted_metric_values, logger_output
from tests.samples import load_event

SAMPLE = load_event("api-post-order.json")
SAMPLE_BODY: dict[str, Any] = json.loads(SAMPLE["body"])
SAMPLE_ORDER_ID = SAMPLE_BODY["order_id"]
SAMPLE_REQUEST_ID = SAMPLE["requestContext"]["requestId"]
EMAIL = SAMPLE_BODY["customer"]["email"]

no_metrics_warning = pytest.mark.filterwarnings("ignore:No application metrics to publish")


# --- building requests and reading answers ------------------------------------------------


def api_event(
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    path: str = "/orders",
    base64_body: bool = False,
) -> dict[str, Any]:
    """The sample API Gateway event with another body, headers, method or path.

    `body` may be a dict (sent as JSON), a str (sent as is) or None (no body at all).
    """
    event = copy.deepcopy(SAMPLE)
    if body is None:
        text = None
    elif isinstance(body, str):
        text = body
    else:
        text = json.dumps(body)
    if text is not None and base64_body:
        text = base64.b64encode(text.encode()).decode()
    event["body"] = text
    event["isBase64Encoded"] = base64_body
    event["httpMethod"] = event["requestContext"]["httpMethod"] = method
    event["path"] = path
    merged = {**event["headers"], **(headers or {})}
    event["headers"] = {k: v for k, v in merged.items() if v is not None}
    event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
    return event


def order_body(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(SAMPLE_BODY)
    body.update(changes)
    return body


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any
    raw_body: str


def invoke(event: dict[str, Any]) -> Answer:
    response = app.lambda_handler(event, LambdaContext())
    headers = {k.lower(): v[-1] for k, v in response.get("multiValueHeaders", {}).items()}
    headers |= {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    raw = response["body"]
    return Answer(int(response["statusCode"]), headers, json.loads(raw), raw)


# --- a producer that records instead of talking to a broker -------------------------------


@dataclass
class Sent:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass
class FakeProducer:
    """Acknowledges like kafka-python (topic, partition, offset) or fails like it."""

    sent: list[Sent] = field(default_factory=list)
    discards: int = 0  # calls of kafka_client.discard_producer()
    failure: Exception | None = None
    on_send: Any = None  # called inside send(), to act while a publish is in flight

    def send(
        self, topic: str, *, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
    ) -> Any:
        if self.on_send is not None:
            self.on_send()
        if self.failure is not None:
            failure = self.failure

            def fail(timeout: float | None = None) -> Any:
                raise failure

            return SimpleNamespace(get=fail)
        self.sent.append(Sent(topic, key, value, headers))
        report = SimpleNamespace(topic=topic, partition=2, offset=len(self.sent) - 1)
        return SimpleNamespace(get=lambda timeout=None: report)


@pytest.fixture
def producer(idempotency_table: str, monkeypatch: pytest.MonkeyPatch) -> FakeProducer:
    fake = FakeProducer()
    monkeypatch.setenv(settings.KAFKA_BOOTSTRAP_SERVERS, "127.0.0.1:9")  # never contacted
    monkeypatch.setenv(settings.KAFKA_SECURITY, "plaintext")
    monkeypatch.setattr(kafka_client, "get_producer", lambda environ=None: fake)

    def discard() -> None:
        fake.discards += 1

    monkeypatch.setattr(kafka_client, "discard_producer", discard)
    # Each test builds its own intake, so a change to how one is built shows in every test.
    app._intake.cache_clear()
    return fake


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    """Everything the handler's logger writes, as the JSON lines CloudWatch would receive."""
    with logger_output(app.logger) as stream:
        yield stream


# --- accepted ------------------------------------------------------------------------------


def test_sample_event_is_accepted_and_published_with_key_headers_and_value(
    producer: FakeProducer, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = invoke(load_event("api-post-order.json"))

    assert answer.status == 202
    assert answer.body == {
        "order_id": SAMPLE_ORDER_ID,
        "status": "accepted",
        "topic": "order-placed",
        "partition": 2,
        "offset": 0,
    }
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-correlation-id"] == SAMPLE_REQUEST_ID
    [message] = producer.sent
    assert message.topic == "order-placed"
    assert message.key == SAMPLE_ORDER_ID.encode()
    headers = dict(message.headers)
    assert headers[events.HEADER_CORRELATION_ID] == SAMPLE_REQUEST_ID.encode()
    assert headers[events.HEADER_EVENT_TYPE] == b"order-placed"
    event = events.from_bytes(message.value, message.key)
    assert event.correlation_id == SAMPLE_REQUEST_ID
    assert str(event.order.total) == "52.40"
    assert event.order == OrderRequest.model_validate(SAMPLE_BODY).to_order()
    out = capsys.readouterr().out
    metrics = emitted_metric_values(out)
    assert metrics["OrdersAccepted"] == [1.0]
    assert len(metrics["PublishLatency"]) == 1
    assert emitted_metric_units(out) == {
        "OrdersAccepted": "Count",
        "PublishLatency": "Milliseconds",
    }


def test_the_topic_comes_from_settings(
    producer: FakeProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.ORDER_TOPIC, "orders-elsewhere")
    answer = invoke(api_event(order_body(order_id=str(uuid.uuid4()))))
    assert answer.status == 202
    assert answer.body["topic"] == "orders-elsewhere"
    assert [m.topic for m in producer.sent] == ["orders-elsewhere"]


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json;"]
)
def test_json_content_types_with_parameters_are_accepted(
    producer: FakeProducer, content_type: str
) -> None:
    answer = invoke(api_event(order_body(), headers={"Content-Type": content_type}))
    assert answer.status == 202


def test_a_base64_encoded_body_is_read_like_a_plain_one(producer: FakeProducer) -> None:
    answer = invoke(api_event(order_body(), base64_body=True))
    assert answer.status == 202
    assert len(producer.sent) == 1


def test_an_order_without_order_id_gets_a_fresh_one_each_time(producer: FakeProducer) -> None:
    body = order_body()
    del body["order_id"]
    first, second = invoke(api_event(body)), invoke(api_event(body))

    assert first.status == second.status == 202
    assert first.body["order_id"] != second.body["order_id"]  # no replay protection possible
    assert [m.key.decode() for m in producer.sent] == [
        first.body["order_id"],
        second.body["order_id"],
    ]


# --- idempotency ---------------------------------------------------------------------------


def test_the_same_order_again_replays_the_answer_and_publishes_nothing(
    producer: FakeProducer, capsys: pytest.CaptureFixture[str]
) -> None:
    first = invoke(api_event(order_body()))
    # Same order, other spelling: keys reordered, whitespace, a price without trailing zero.
    respelled = order_body()
    respelled["items"][1]["unit_price"] = "12.5"
    replay = invoke(api_event(json.dumps(dict(reversed(respelled.items())), indent=3)))

    assert first.status == replay.status == 202
    assert replay.body == first.body
    assert len(producer.sent) == 1
    out = capsys.readouterr().out
    metrics = emitted_metric_values(out)
    assert metrics["OrdersAccepted"] == [1.0]
    assert metrics["OrdersDuplicate"] == [1.0]
    assert emitted_metric_units(out)["OrdersDuplicate"] == "Count"


def test_the_same_order_id_with_another_order_is_a_conflict(producer: FakeProducer) -> None:
    assert invoke(api_event(order_body())).status == 202
    changed = order_body()
    changed["items"][0]["quantity"] = 3

    answer = invoke(api_event(changed))

    assert answer.status == 409
    assert answer.body["error"] == "order_id_conflict"
    assert answer.body["message"] == (
        "This order_id was already used for a different order. Send a new order_id, or resend "
        "the original order unchanged to get its answer again."
    )
    assert len(producer.sent) == 1


def test_a_failed_publish_leaves_no_record_behind(
    producer: FakeProducer, capsys: pytest.CaptureFixture[str]
) -> None:
    producer.failure = KafkaTimeoutError("Expiring 1 record(s): 1000 ms has passed")
    failed = invoke(api_event(order_body()))

    assert failed.status == 503
    assert failed.body["error"] == "unavailable"
    assert failed.body["message"] == (
        "The order could not be published: the message broker did not acknowledge it in time."
        " Nothing was accepted; resend the same order after Retry-After seconds."
    )
    assert int(failed.headers["retry-after"]) > 0
    assert producer.sent == []
    assert producer.discards == 1

    producer.failure = None
    retried = invoke(api_event(order_body()))
    assert retried.status == 202
    assert len(producer.sent) == 1
    out = capsys.readouterr().out
    metrics = emitted_metric_values(out)
    assert metrics["PublishFailures"] == [1.0]
    assert metrics["OrdersAccepted"] == [1.0]
    assert emitted_metric_units(out)["PublishFailures"] == "Count"


def test_a_broker_that_cannot_be_reached_is_a_503(
    producer: FakeProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(environ: Any = None) -> Any:
        raise KafkaTimeoutError("Unable to bootstrap from ['127.0.0.1:9']")

    monkeypatch.setattr(kafka_client, "get_producer", unreachable)
    answer = invoke(api_event(order_body()))
    assert answer.status == 503
    assert answer.headers["retry-after"].isdigit()
    assert "Unable to bootstrap" not in answer.raw_body  # internals stay in the log


def test_a_second_request_while_the_first_is_publishing_is_told_to_retry(
    producer: FakeProducer,
) -> None:
    order = OrderRequest.model_validate(SAMPLE_BODY)
    seen: list[Exception] = []

    def same_order_meanwhile() -> None:
        producer.on_send = None
        try:
            app.order_intake().accept(order, correlation_id="second")
        except OrderInProgressError as exc:
            seen.append(exc)

    producer.on_send = same_order_meanwhile
    assert invoke(api_event(order_body())).status == 202
    assert [str(e) for e in seen] == [
        "An order with this order_id is being processed right now; retry shortly."
    ]
    assert len(producer.sent) == 1


def test_in_progress_answers_409_with_retry_after(
    producer: FakeProducer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def busy(*args: Any, **kwargs: Any) -> Any:
        raise OrderInProgressError("being processed; retry shortly")

    monkeypatch.setattr(publishing.OrderIntake, "accept", busy)
    capsys.readouterr()
    answer = invoke(api_event(order_body()))
    assert answer.status == 409
    assert answer.body["error"] == "order_in_progress"
    assert answer.body["message"] == "being processed; retry shortly"
    assert answer.headers["retry-after"] == "1"
    assert emitted_metric_values(capsys.readouterr().out)["OrdersDuplicate"] == [1.0]


def test_an_unavailable_idempotency_table_is_a_503_and_publishes_nothing(
    producer: FakeProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.IDEMPOTENCY_TABLE, "no-such-table")
    answer = invoke(api_event(order_body()))
    assert answer.status == 503
    assert answer.body["message"] == (
        "The order could not be checked for duplicates right now; retry shortly."
        " Nothing was accepted; resend the same order after Retry-After seconds."
    )
    assert "retry-after" in answer.headers
    assert producer.sent == []


def test_an_order_published_but_not_recorded_is_still_accepted(
    producer: FakeProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def throttled(self: Any, data_record: Any) -> None:
        raise RuntimeError("ProvisionedThroughputExceededException")

    monkeypatch.setattr(DynamoDBPersistenceLayer, "_update_record", throttled)
    answer = invoke(api_event(order_body()))
    assert answer.status == 202  # it is on the topic: a 503 would invite a duplicate
    assert len(producer.sent) == 1


def test_the_idempotency_record_holds_no_customer_data(
    producer: FakeProducer, idempotency_table: str
) -> None:
    assert invoke(api_event(order_body())).status == 202
    items = boto3.client("dynamodb").scan(TableName=idempotency_table)["Items"]
    assert len(items) == 1
    assert items[0]["status"]["S"] == "COMPLETED"
    stored = json.dumps(items)
    assert EMAIL not in stored
    assert "Ada Lovelace" not in stored
    assert json.loads(items[0]["data"]["S"])["order_id"] == SAMPLE_ORDER_ID
    # Our own prefix (not Powertools' default, the function's name) and a sha256 of the order_id.
    prefix, _, digest = items[0]["id"]["S"].rpartition("#")
    assert prefix == publishing.IDEMPOTENCY_KEY_PREFIX
    assert re.fullmatch(r"[0-9a-f]{64}", digest)


def test_the_idempotency_record_expires_after_the_configured_time(
    producer: FakeProducer, idempotency_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    week = 7 * 24 * 60 * 60
    monkeypatch.setenv(settings.IDEMPOTENCY_EXPIRES_SECONDS, str(week))
    assert invoke(api_event(order_body())).status == 202
    [item] = boto3.client("dynamodb").scan(TableName=idempotency_table)["Items"]
    # Both stamps come from the clock within one invocation: compare them with each other.
    # The in-progress stamp is "now + the invocation's remaining time" (30 s in LambdaContext).
    expires_s = int(item["expiration"]["N"])
    in_progress_s = int(item["in_progress_expiration"]["N"]) // 1000
    assert abs((expires_s - in_progress_s) - (week - 30)) <= 5


@pytest.mark.parametrize("value", ["soon", "59", "-1"])
def test_a_bad_expiry_setting_is_a_clear_configuration_error(value: str) -> None:
    with pytest.raises(settings.ConfigurationError, match=settings.IDEMPOTENCY_EXPIRES_SECONDS):
        publishing.idempotency_expiry({settings.IDEMPOTENCY_EXPIRES_SECONDS: value})


def test_expiry_defaults_to_a_day() -> None:
    assert publishing.idempotency_expiry({}) == 24 * 60 * 60


# --- refused before anything is published --------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ([SAMPLE_BODY], 422, "invalid_order"),
        ([SAMPLE_BODY, SAMPLE_BODY], 422, "invalid_order"),
        ([SAMPLE_BODY, {"<b>": 1}], 422, "invalid_order"),
        ("42", 422, "invalid_order"),
        ('"an order"', 422, "invalid_order"),
        ("null", 400, "missing_body"),
    ],
    ids=["array of one order", "array of two", "order then junk", "number", "string", "null"],
)
def test_a_body_that_is_not_one_json_object_is_refused_and_nothing_is_published(
    producer: FakeProducer, body: Any, status: int, error: str
) -> None:
    """Powertools' resolver once validated an array's first element as the body."""
    answer = invoke(api_event(body))

    assert answer.status == status
    assert answer.body["error"] == error
    assert producer.sent == []


def test_invalid_sample_is_422_with_a_reason_per_field(
    producer: FakeProducer, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = invoke(load_event("api-post-order-invalid.json"))

    assert answer.status == 422
    assert answer.body["error"] == "invalid_order"
    reasons = {e["field"]: e["reason"] for e in answer.body["errors"]}
    assert {"customer.email", "customer.name", "items.0.quantity", "currency", "total"} <= set(
        reasons
    )
    assert all(reasons.values())
    assert "greater than or equal to 1" in reasons["items.0.quantity"]
    assert producer.sent == []
    assert emitted_metric_values(capsys.readouterr().out)["OrdersRejected"] == [1.0]


def test_an_address_ses_cannot_take_is_422_on_its_field(producer: FakeProducer) -> None:
    """SES takes 7-bit ASCII addresses only: a non-ASCII local part is refused at the door,
    not by SES for a whole bulk call of other customers' confirmations later."""
    body = order_body(order_id=str(uuid.uuid4()))
    body["customer"]["email"] = "\u00f1and\u00fa@example.com"
    answer = invoke(api_event(body))
    assert answer.status == 422
    [error] = answer.body["errors"]
    assert error["field"] == "customer.email"
    assert "before the @-sign" in error["reason"]
    assert producer.sent == []


def test_an_internationalised_domain_is_published_in_its_ascii_form(
    producer: FakeProducer,
) -> None:
    body = order_body(order_id=str(uuid.uuid4()))
    body["customer"]["email"] = "kunde@b\u00fccher.de"
    assert invoke(api_event(body)).status == 202
    [sent] = producer.sent
    assert json.loads(sent.value)["order"]["customer"]["email"] == "kunde@xn--bcher-kva.de"


def test_a_body_that_is_not_an_object_is_422(producer: FakeProducer) -> None:
    answer = invoke(api_event("[1, 2]"))
    assert answer.status == 422
    assert [e["field"] for e in answer.body["errors"]] == [""]


@pytest.mark.parametrize(
    ("body", "reason_part"),
    [
        ('{"customer": ', "Expecting value"),
        ("{'single': 'quotes'}", "double quotes"),
        ('{"order_id": "a", "order_id": "b"}', "same key twice"),
        ('{"items": [{"quantity": NaN}]}', "NaN is not a JSON number"),
        ("[" * 50_000 + "]" * 10_000, "nested too deeply"),
        ('{"n": ' + "9" * 5000 + "}", "number in the body is too long"),
    ],
    ids=["truncated", "single-quotes", "duplicate-key", "nan", "deep", "huge-number"],
)
def test_malformed_json_is_400_with_a_reason(
    producer: FakeProducer, body: str, reason_part: str
) -> None:
    answer = invoke(api_event(body))
    assert answer.status == 400
    assert answer.body["error"] == "malformed_json"
    assert answer.body["message"] == "The request body is not valid JSON."
    [error] = answer.body["errors"]
    assert error["field"] == ""
    assert reason_part in error["reason"]
    assert producer.sent == []


@pytest.mark.parametrize("body", [None, ""])
def test_an_empty_body_is_400(producer: FakeProducer, body: str | None) -> None:
    answer = invoke(api_event(body))
    assert answer.status == 400
    assert answer.body["error"] == "missing_body"
    assert answer.body["message"] == "The request body is empty: send the order as JSON."


def test_a_base64_body_that_is_not_utf8_is_400(producer: FakeProducer) -> None:
    event = api_event(None)
    event["body"] = base64.b64encode(b'{"a": "\xff\xfe"}').decode()
    event["isBase64Encoded"] = True
    answer = invoke(event)
    assert answer.status == 400
    assert answer.body["errors"] == [{"field": "", "reason": "the body is not UTF-8 text"}]


def test_each_error_answer_is_documented_with_the_error_body() -> None:
    assert app._error_response("why") == {
        "description": "why",
        "content": {"application/json": {"model": app.ErrorBody}},
    }
    assert app._error_response("why", retry_after=True)["headers"] == {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer"},
        }
    }


def padded(body: dict[str, Any], size: int) -> str:
    """The body as JSON of exactly `size` bytes (whitespace keeps it the same order)."""
    text = json.dumps(body)
    return text + " " * (size - len(text.encode()))


def test_a_body_of_exactly_64_kib_is_read(producer: FakeProducer) -> None:
    assert invoke(api_event(padded(order_body(), 64 * 1024))).status == 202


@pytest.mark.parametrize("base64_body", [False, True])
def test_a_body_over_64_kib_is_413(producer: FakeProducer, base64_body: bool) -> None:
    answer = invoke(api_event(padded(order_body(), 64 * 1024 + 1), base64_body=base64_body))
    assert answer.status == 413
    assert answer.body["error"] == "body_too_large"
    assert producer.sent == []


def test_size_is_counted_in_bytes_not_characters(producer: FakeProducer) -> None:
    body = order_body()
    body["customer"]["name"] = "€" * 22_000  # 22,000 characters, 66,000 bytes
    assert invoke(api_event(body)).status == 413


@pytest.mark.filterwarnings("ignore:Received multipart/form-data without base64")
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", json.dumps(SAMPLE_BODY)),
        ("application/x-www-form-urlencoded", "customer=ada&currency=EUR"),
        ("multipart/form-data; boundary=xyz", "--xyz--"),
        ("multipart/form-data", "no boundary"),
        ("application/json; charset=latin-1", json.dumps(SAMPLE_BODY)),
        ("application/jsonp", json.dumps(SAMPLE_BODY)),
        (None, json.dumps(SAMPLE_BODY)),  # a valid order, but no Content-Type at all
        (None, "not json either"),
    ],
)
def test_a_non_json_content_type_is_415(
    producer: FakeProducer, content_type: str | None, body: str
) -> None:
    headers: dict[str, Any] = {"Content-Type": content_type}
    answer = invoke(api_event(body, headers=headers))
    assert answer.status == 415
    assert answer.body["error"] == "unsupported_media_type"
    assert answer.body["message"] == (
        "Send the order as JSON with the header Content-Type: application/json."
    )
    assert producer.sent == []


@no_metrics_warning
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_on_orders_are_405_with_allow(producer: FakeProducer, method: str) -> None:
    answer = invoke(api_event(order_body(), method=method))
    assert answer.status == 405
    assert answer.headers["allow"] == "POST"
    assert answer.body["error"] == "method_not_allowed"
    assert producer.sent == []


@no_metrics_warning
@pytest.mark.parametrize("path", ["/", "/order", "/orders/123", "/<script>"])
def test_other_paths_are_404(producer: FakeProducer, path: str) -> None:
    answer = invoke(api_event(order_body(), path=path))
    assert answer.status == 404
    assert answer.body["error"] == "not_found"
    assert "script" not in answer.raw_body  # the path is not echoed


def test_echoed_input_is_escaped(producer: FakeProducer) -> None:
    markup = "<img src=x onerror=alert(1)>&amp;"
    answer = invoke(api_event(order_body(**{markup: 1})))
    assert answer.status == 422
    assert "<" not in answer.raw_body
    assert ">" not in answer.raw_body
    assert "&" not in answer.raw_body  # "&amp;" echoed raw would decode to "&" in HTML
    assert markup in {e["field"] for e in answer.body["errors"]}  # still readable as JSON


def test_long_error_lists_are_capped(producer: FakeProducer) -> None:
    body = order_body(**{f"extra_{i}": i for i in range(80)})
    answer = invoke(api_event(body))
    assert answer.status == 422
    assert len(answer.body["errors"]) == app.MAX_LISTED_ERRORS
    assert answer.body["message"] == (
        f"The order is invalid: 80 problem(s) (the first {app.MAX_LISTED_ERRORS} are listed). "
        "Fix the fields listed in errors."
    )


def test_a_refusal_is_logged_with_its_status_error_and_fields_and_counted(
    producer: FakeProducer, log_text: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    answer = invoke(api_event(order_body(currency="EURO", extra=1)))
    assert answer.body["message"] == (
        "The order is invalid: 2 problem(s). Fix the fields listed in errors."
    )
    [line] = [json.loads(x) for x in log_text.getvalue().splitlines() if "request refused" in x]
    assert (line["message"], line["status"], line["error"]) == (
        "request refused",
        422,
        "invalid_order",
    )
    assert sorted(line["fields"]) == ["currency", "extra"]
    out = capsys.readouterr().out
    assert emitted_metric_values(out)["OrdersRejected"] == [1.0]
    assert '"Name":"OrdersRejected","Unit":"Count"' in out


def test_a_publish_that_failed_is_logged_with_its_cause(
    producer: FakeProducer, log_text: io.StringIO
) -> None:
    producer.failure = KafkaTimeoutError("Expiring 1 record(s): 1000 ms has passed")
    assert invoke(api_event(order_body())).status == 503
    [line] = [json.loads(x) for x in log_text.getvalue().splitlines() if "not published" in x]
    assert line["message"] == "order not published"
    assert line["cause"] == "KafkaTimeoutError"
    assert "Expiring 1 record(s)" in line["detail"]


def test_a_long_cause_is_logged_to_its_first_500_characters(
    producer: FakeProducer, log_text: io.StringIO
) -> None:
    producer.failure = KafkaTimeoutError("y" * 600)
    assert invoke(api_event(order_body())).status == 503
    [line] = [json.loads(x) for x in log_text.getvalue().splitlines() if "not published" in x]
    assert line["detail"] == str(producer.failure)[:500]
    assert len(line["detail"]) == 500


@no_metrics_warning
def test_an_unexpected_error_is_a_500_without_internals(
    producer: FakeProducer,
    monkeypatch: pytest.MonkeyPatch,
    log_text: io.StringIO,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"bug while handling {EMAIL}")

    monkeypatch.setattr(publishing.OrderIntake, "accept", broken)
    answer = invoke(api_event(order_body()))

    assert answer.status == 500
    assert answer.body == {
        "error": "internal_error",
        "message": "Something went wrong on our side. Retrying with the same order_id is safe; "
        "if it persists, report the X-Correlation-Id of this response.",
        "errors": [],
    }
    # Our fault, not a refused order: OrdersRejected stays the clients' count.
    assert emitted_metric_values(capsys.readouterr().out) == {}
    assert "Traceback" not in answer.raw_body
    assert "RuntimeError" not in answer.raw_body
    logged = log_text.getvalue()
    assert "Traceback" in logged  # the log has what the client must not see
    assert EMAIL not in logged
    [line] = [json.loads(x) for x in logged.splitlines() if '"unexpected error"' in x]
    assert (line["message"], line["error_type"]) == ("unexpected error", "RuntimeError")


@no_metrics_warning
@pytest.mark.parametrize("missing", [settings.IDEMPOTENCY_TABLE, settings.KAFKA_BOOTSTRAP_SERVERS])
def test_missing_configuration_is_a_500_that_names_the_setting_in_the_log(
    producer: FakeProducer, monkeypatch: pytest.MonkeyPatch, log_text: io.StringIO, missing: str
) -> None:
    monkeypatch.delenv(missing)
    answer = invoke(api_event(order_body()))
    assert answer.status == 500
    assert missing not in answer.raw_body
    assert missing in log_text.getvalue()
    assert producer.sent == []


# --- correlation id ------------------------------------------------------------------------


@pytest.mark.parametrize("header_name", ["X-Correlation-Id", "x-correlation-id"])
def test_a_valid_client_correlation_id_is_used_everywhere(
    producer: FakeProducer, log_text: io.StringIO, header_name: str
) -> None:
    answer = invoke(api_event(order_body(), headers={header_name: "checkout-42:attempt-1"}))

    assert answer.status == 202
    assert answer.headers["x-correlation-id"] == "checkout-42:attempt-1"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"
    [message] = producer.sent
    assert dict(message.headers)[events.HEADER_CORRELATION_ID] == b"checkout-42:attempt-1"
    lines = [json.loads(line) for line in log_text.getvalue().splitlines()]
    assert lines
    assert all(line["correlation_id"] == "checkout-42:attempt-1" for line in lines)


@pytest.mark.parametrize(
    "given",
    ["has space", "x" * 129, "tab\tinside", "caf\u00e9", "", "line\r\nX-Injected: 1"],
    ids=["space", "too-long", "tab", "non-ascii", "empty", "crlf"],
)
def test_an_unusable_correlation_id_falls_back_to_the_request_id(
    producer: FakeProducer, given: str
) -> None:
    answer = invoke(api_event(order_body(), headers={"X-Correlation-Id": given}))
    assert answer.status == 202
    assert answer.headers["x-correlation-id"] == SAMPLE_REQUEST_ID
    assert dict(producer.sent[0].headers)[events.HEADER_CORRELATION_ID] == (
        SAMPLE_REQUEST_ID.encode()
    )


def test_without_a_request_id_the_lambda_request_id_is_used() -> None:
    event = api_event(order_body())
    del event["requestContext"]["requestId"]
    context = LambdaContext(aws_request_id="lambda-request-1")
    assert correlation_id_for(event, context) == "lambda-request-1"


def test_error_answers_carry_the_correlation_id_too(producer: FakeProducer) -> None:
    answer = invoke(api_event("{", headers={"X-Correlation-Id": "trace-me"}))
    assert answer.status == 400
    assert answer.headers["x-correlation-id"] == "trace-me"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"


# --- logs ------------------------------------------------------------------------------


def test_customer_email_never_reaches_the_logs(
    producer: FakeProducer, log_text: io.StringIO
) -> None:
    invoke(api_event(order_body()))  # accepted
    invoke(api_event(order_body()))  # replayed
    invoke(api_event(order_body(**{EMAIL: "as a field name"})))  # 422 naming the field
    producer.failure = KafkaTimeoutError(f"broker said no to {EMAIL}")
    invoke(api_event(order_body(order_id=str(uuid.uuid4()))))  # 503 logging the cause

    logged = log_text.getvalue()
    assert EMAIL not in logged
    assert "***@example.com" in logged  # masked, not merely absent
    assert "Analytical Engine notes" not in logged  # the body is never logged
    assert '"message":"order accepted"' in logged


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("ada@example.com", "***@example.com"),
        ("to: <ada.lovelace+orders@mail.example.org>", "to: <***@mail.example.org>"),
        ('{"email":"x@y.io"}', '{"email":"***@y.io"}'),
        ("no address here", "no address here"),
    ],
)
def test_mask_emails(text: str, masked: str) -> None:
    assert mask_emails(text) == masked
    assert mask_emails({"k": [text], text: 1}) == {"k": [masked], masked: 1}
    assert mask_emails(SimpleNamespace(note=text)) == f"namespace(note={masked!r})"  # str()'d


# --- OpenAPI ---------------------------------------------------------------------------


def test_openapi_documents_every_answer_of_post_orders() -> None:
    document = app.openapi_document()
    operation = document["paths"]["/orders"]["post"]
    assert set(operation["responses"]) == {"202", "400", "409", "413", "415", "422", "500", "503"}
    body_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref.endswith("/OrderRequest")
    assert "Retry-After" in operation["responses"]["503"]["headers"]
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # our 422 has another shape
    assert schemas["Accepted"]["required"] == ["order_id", "status", "topic", "partition", "offset"]
