"""POST /orders: validate an order, publish its `order-placed` event once, answer 202.

Every answer is JSON a client can act on: `{"error", "message", "errors": [{"field", "reason"}]}`
for refusals, the event's topic/partition/offset for an accepted order. Publishing and
idempotency live in `orderstream.publishing`, the checks of a raw request (size, media type,
strict JSON, correlation id) in `orderstream.http_edge`; this module maps HTTP onto them.

No `from __future__ import annotations` here: the resolver reads the route's annotations at
runtime to validate the body and to generate the OpenAPI document.
"""

import binascii
import functools
import json
import logging
import os
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Annotated, Any, Final

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.shared.constants import METRICS_NAMESPACE_ENV
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config
from pydantic import BaseModel, Field

from orderstream import settings
from orderstream.http_edge import (
    CORRELATION_HEADER,
    MAX_BODY_BYTES,
    BodyError,
    body_size,
    correlation_id_for,
    is_json_media_type,
    json_text,
    parse_json_body,
    with_canonical_content_type,
)
from orderstream.models import OrderRequest
from orderstream.publishing import (
    Accepted,
    BrokerUnavailableError,
    IdempotencyStoreUnavailableError,
    IntakeResult,
    OrderIdConflictError,
    OrderInProgressError,
    OrderIntake,
    idempotency_expiry,
)
from orderstream.redaction import masked_log_line

ORDERS_PATH: Final = "/orders"
RETRY_AFTER_UNAVAILABLE_S: Final = 5
RETRY_AFTER_IN_PROGRESS_S: Final = 1
MAX_LISTED_ERRORS: Final = 50
MAX_TEXT: Final = 200  # field paths and reasons can echo client input: keep them short

# kafka-python logs every record's key and value at DEBUG; customer data must not reach the logs
# even when someone turns the root logger up to DEBUG.
logging.getLogger("kafka").setLevel(logging.INFO)


class FieldError(BaseModel):
    field: str = Field(
        description="Dotted path into the order, e.g. items.0.quantity; empty for the whole body."
    )
    reason: str


class ErrorBody(BaseModel):
    error: str = Field(description="Stable machine-readable code, e.g. invalid_order.")
    message: str = Field(description="What went wrong and what to do about it.")
    errors: list[FieldError] = Field(default_factory=list)


logger = Logger(json_serializer=masked_log_line)
# Read here, not left to Metrics: the namespace must never be missing when metrics are flushed.
metrics = Metrics(namespace=os.environ.get(METRICS_NAMESPACE_ENV) or "orderstream")
app = APIGatewayRestResolver(
    enable_validation=True,
    serializer=json_text,
    json_body_deserializer=parse_json_body,
    debug=False,  # debug mode prints whole events, customer e-mails included
)


@functools.cache
def _intake(table: str, expires_after_s: int, topic: str, send_timeout_ms: int) -> OrderIntake:
    # Bounded DynamoDB calls: a slow table must not eat the time the broker's wait needs.
    client_config = Config(
        connect_timeout=1, read_timeout=2, retries={"mode": "standard", "max_attempts": 2}
    )
    persistence = DynamoDBPersistenceLayer(table_name=table, boto_config=client_config)
    return OrderIntake(
        persistence,
        topic=topic,
        send_timeout_ms=send_timeout_ms,
        expires_after_seconds=expires_after_s,
    )


def order_intake() -> OrderIntake:
    """The container's intake, built on first use (and again if the settings change)."""
    return _intake(
        settings.required(settings.IDEMPOTENCY_TABLE),
        idempotency_expiry(),
        settings.order_topic(),
        settings.KafkaSettings.from_env().send_timeout_ms,
    )


def _answer(
    status: HTTPStatus, body: BaseModel, headers: Mapping[str, str] | None = None
) -> Response[Any]:
    return Response(
        status_code=int(status),
        content_type="application/json",
        body=body.model_dump(mode="json"),
        headers={
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            CORRELATION_HEADER: str(app.context.get("correlation_id", "")),
            **(headers or {}),
        },
    )


def _refuse(
    status: HTTPStatus,
    error: str,
    message: str,
    errors: list[FieldError] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    metric: str | None = "OrdersRejected",
) -> Response[Any]:
    if metric:
        metrics.add_metric(name=metric, unit=MetricUnit.Count, value=1)
    logger.info(
        "request refused",
        extra={
            "status": int(status),
            "error": error,
            "fields": [e.field for e in errors or []],
        },
    )
    return _answer(status, ErrorBody(error=error, message=message, errors=errors or []), headers)


def _body_precondition_failed() -> Response[Any] | None:
    """413 and 415 come before any judgement of the content, whichever step noticed first."""
    event = app.current_event
    if body_size(event.raw_event) > MAX_BODY_BYTES:
        return _refuse(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "body_too_large",
            f"The request body must not exceed {MAX_BODY_BYTES} bytes.",
        )
    if not is_json_media_type(event.headers.get("content-type")):
        return _unsupported_media_type()
    return None


def _malformed(reason: str) -> Response[Any]:
    return _refuse(
        HTTPStatus.BAD_REQUEST,
        "malformed_json",
        "The request body is not valid JSON.",
        [FieldError(field="", reason=reason[:MAX_TEXT])],
    )


def _field_errors(exc: RequestValidationError) -> list[FieldError]:
    found: list[FieldError] = []
    for error in exc.errors()[:MAX_LISTED_ERRORS]:
        location = [str(part) for part in error.get("loc", ())]
        if location[:1] == ["body"]:
            location = location[1:]
        found.append(
            FieldError(field=".".join(location)[:MAX_TEXT], reason=str(error["msg"])[:MAX_TEXT])
        )
    return found


def _invalid_order(exc: RequestValidationError) -> Response[Any]:
    # No json_invalid case: parse_json_body reads the body first and raises BodyError (400).
    errors = exc.errors()
    if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in errors):
        return _refuse(
            HTTPStatus.BAD_REQUEST,
            "missing_body",
            "The request body is empty: send the order as JSON.",
        )
    found = _field_errors(exc)
    more = f" (the first {len(found)} are listed)" if len(errors) > len(found) else ""
    return _refuse(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "invalid_order",
        f"The order is invalid: {len(errors)} problem(s){more}. Fix the fields listed in errors.",
        found,
    )


def _unsupported_media_type() -> Response[Any]:
    return _refuse(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "Send the order as JSON with the header Content-Type: application/json.",
    )


def _not_utf8(_: Exception) -> Response[Any]:
    return _malformed("the body is not UTF-8 text")


def _unavailable(exc: Exception) -> Response[Any]:
    cause = exc.__cause__  # both errors are raised from the failure that caused them
    logger.warning(
        "order not published", extra={"cause": type(cause).__name__, "detail": str(cause)[:500]}
    )
    return _refuse(
        HTTPStatus.SERVICE_UNAVAILABLE,
        "unavailable",
        f"{exc} Nothing was accepted; resend the same order after Retry-After seconds.",
        headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)},
        metric="PublishFailures",
    )


def _in_progress(exc: Exception) -> Response[Any]:
    return _refuse(
        HTTPStatus.CONFLICT,
        "order_in_progress",
        str(exc),
        headers={"Retry-After": str(RETRY_AFTER_IN_PROGRESS_S)},
        metric="OrdersDuplicate",
    )


def _unexpected(exc: Exception) -> Response[Any]:
    # The traceback goes to the log (e-mails masked), never to the client.
    logger.exception("unexpected error", extra={"error_type": type(exc).__name__})
    return _refuse(
        HTTPStatus.INTERNAL_SERVER_ERROR,
        "internal_error",
        "Something went wrong on our side. Retrying with the same order_id is safe; if it "
        f"persists, report the {CORRELATION_HEADER} of this response.",
        metric=None,
    )


#: Each error the resolver or the intake raises, and the refusal it becomes (the first entry
#: along the error's class hierarchy; anything else is a 500).
REFUSALS: Final[dict[type[Exception], Callable[[Any], Response[Any]]]] = {
    RequestValidationError: _invalid_order,
    # The resolver and we may disagree about a media type; either way it is not ours to read.
    RequestUnsupportedContentType: lambda _: _unsupported_media_type(),
    BodyError: lambda exc: _malformed(exc.reason),
    UnicodeDecodeError: _not_utf8,
    binascii.Error: _not_utf8,
    BrokerUnavailableError: _unavailable,
    IdempotencyStoreUnavailableError: _unavailable,
    OrderIdConflictError: lambda exc: _refuse(HTTPStatus.CONFLICT, "order_id_conflict", str(exc)),
    OrderInProgressError: _in_progress,
}


_ErrorAnswer = Callable[[Exception], Response[Any]]
# Powertools' exception_handler returns an untyped decorator: typed here so mypy checks ours.
_on_every_error: Callable[[_ErrorAnswer], _ErrorAnswer] = app.exception_handler(Exception)


@_on_every_error
def _refusal(exc: Exception) -> Response[Any]:
    """Every error's answer. 413 and 415 come before any judgement of the content, whichever
    step noticed first (the resolver's form and multipart parsers fail on bodies we refuse)."""
    if (refusal := _body_precondition_failed()) is not None:
        return refusal
    refuse = next((REFUSALS[k] for k in type(exc).__mro__ if k in REFUSALS), _unexpected)
    return refuse(exc)


@app.not_found
def _no_route(_: NotFoundError) -> Response[Any]:
    if app.current_event.path == ORDERS_PATH:
        return _refuse(
            HTTPStatus.METHOD_NOT_ALLOWED,
            "method_not_allowed",
            f"{ORDERS_PATH} only accepts POST.",
            headers={"Allow": "POST"},
            metric=None,
        )
    return _refuse(
        HTTPStatus.NOT_FOUND,
        "not_found",
        f"There is no such resource; orders are placed with POST {ORDERS_PATH}.",
        metric=None,
    )


def _error_response(description: str, *, retry_after: bool = False) -> OpenAPIResponse:
    answer: OpenAPIResponse = {
        "description": description,
        "content": {"application/json": {"model": ErrorBody}},
    }
    if retry_after:
        answer["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer"},
            }
        }
    return answer


RESPONSES: Final[dict[int, OpenAPIResponse]] = {
    202: {
        "description": "Accepted: the order's event is on the topic (acknowledged by all "
        "in-sync replicas). A replay of the same order returns the same answer.",
        "content": {"application/json": {"model": Accepted}},
    },
    400: _error_response("The body is empty, not UTF-8, or not valid JSON."),
    409: _error_response(
        "order_id_conflict: the order_id was used for a different order; order_in_progress: "
        "the same order is being processed right now (see Retry-After).",
        retry_after=True,
    ),
    413: _error_response(f"The body is larger than {MAX_BODY_BYTES} bytes."),
    415: _error_response("The Content-Type is not application/json."),
    422: _error_response("The order is invalid; errors lists each field and why."),
    500: _error_response("An unexpected error; retrying with the same order_id is safe."),
    503: _error_response(
        "The broker or the idempotency store is unavailable; nothing was accepted. Resend the "
        "same order after Retry-After seconds.",
        retry_after=True,
    ),
}


@app.post(
    ORDERS_PATH,
    summary="Place an order",
    description=(
        "Validates the order, computes its total and publishes an order-placed event keyed "
        "by order_id. Send an order_id (a UUID you generate) to make retries safe: the same "
        "order again returns the original answer and publishes nothing. Without one the API "
        "generates it, and a retry becomes a second order. An optional X-Correlation-Id "
        "header (1-128 printable ASCII characters) is carried into logs and the event; "
        "otherwise the API Gateway request id is used. Every response echoes it."
    ),
    operation_id="placeOrder",
    tags=["orders"],
    responses=RESPONSES,
)
def place_order(
    order: Annotated[OrderRequest, Body(description="The order; its total is computed by us.")],
) -> Response[Accepted]:
    # A body without a Content-Type is parsed as JSON by the resolver; it is still refused.
    if (refusal := _body_precondition_failed()) is not None:
        return refusal
    if order.order_id is not None:
        logger.append_keys(order_id=str(order.order_id))
    outcome = _accept(order)
    if outcome.replayed:
        metrics.add_metric(name="OrdersDuplicate", unit=MetricUnit.Count, value=1)
    else:
        metrics.add_metric(name="OrdersAccepted", unit=MetricUnit.Count, value=1)
        if outcome.publish_ms is not None:
            metrics.add_metric(
                name="PublishLatency", unit=MetricUnit.Milliseconds, value=outcome.publish_ms
            )
    accepted = outcome.accepted
    logger.info(
        "order accepted",
        extra={
            "order_id": str(accepted.order_id),
            "partition": accepted.partition,
            "offset": accepted.offset,
            "replayed": outcome.replayed,
            "publish_ms": outcome.publish_ms,
        },
    )
    return _answer(HTTPStatus.ACCEPTED, accepted)


def _accept(order: OrderRequest) -> IntakeResult:
    return order_intake().accept(
        order,
        correlation_id=str(app.context["correlation_id"]),
        lambda_context=app.lambda_context,
    )


# The resolver keeps the current request in class attributes: like Lambda, which sends a
# container one request at a time, callers must not run this handler concurrently in a process.
@logger.inject_lambda_context(log_event=False, clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    correlation_id = correlation_id_for(event, context)
    logger.set_correlation_id(correlation_id)
    app.context["correlation_id"] = correlation_id  # read by every answer; cleared by resolve
    return app.resolve(with_canonical_content_type(event), context)


def openapi_document() -> dict[str, Any]:
    """The API as the resolver sees it; checked in as schemas/openapi.json."""
    document: dict[str, Any] = json.loads(
        app.get_openapi_json_schema(
            title="orderstream orders API",
            version="1.0.0",
            description="Place orders; each accepted order becomes an order-placed event.",
        )
    )
    # The resolver always adds its own 422 and HTTPValidationError schemas (Powertools #3600,
    # made unconditional by #3995; exception handlers' own types are #4928, open): our errors
    # use ErrorBody, so a client generator must not see them. Delete once #4928 lands.
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    while unused := [name for name in schemas if _ref(name) not in json.dumps(document)]:
        for name in unused:
            del schemas[name]
    return document


def _ref(schema_name: str) -> str:
    return json.dumps(f"#/components/schemas/{schema_name}")
