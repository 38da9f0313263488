"""The local API's REST proxy event has API Gateway's shape, held to two outside references:
the sample event (API Gateway's documented v1 proxy event) and Powertools' parser model of it.

Ours rather than SAM CLI's builder (samcli.local.apigw.event_constructor): that one is internal
to aws-sam-cli, takes a Flask request where our server is http.server, and sets
requestContext.path without the stage, which API Gateway includes.
"""

from __future__ import annotations

import base64
from typing import Any

from aws_lambda_powertools.utilities.parser.models import APIGatewayProxyEventModel

from devstack.api import Route, proxy_event
from tests.samples import load_event

ROUTE = Route.of("OrderApiFunction", "POST", "/orders")


def event(body: bytes, path: str = "/orders?a=1&a=2") -> dict[str, Any]:
    return proxy_event(
        ROUTE,
        "POST",
        path,
        [("Content-Type", "application/json"), ("X-Dup", "1"), ("X-Dup", "2")],
        body,
        "127.0.0.1",
        "local",
        {},
    )


def keys(value: dict[str, Any], *path: str) -> set[str]:
    for step in path:
        value = value[step]
    return set(value)


def test_the_event_has_the_sample_events_keys_at_every_level() -> None:
    ours, sample = event(b'{"x": 1}'), load_event("api-post-order.json")
    for path in ((), ("requestContext",), ("requestContext", "identity")):
        assert keys(ours, *path) == keys(sample, *path), path


def test_powertools_parser_model_reads_it_as_api_gateway_would_send_it() -> None:
    parsed = APIGatewayProxyEventModel.model_validate(event(b'{"x": 1}'))
    assert parsed.path == "/orders"
    assert parsed.resource == "/orders"
    assert parsed.requestContext.stage == "local"
    assert parsed.requestContext.path == "/local/orders"
    assert parsed.queryStringParameters == {"a": "2"}  # the last value, as API Gateway
    assert parsed.multiValueQueryStringParameters == {"a": ["1", "2"]}
    assert parsed.multiValueHeaders is not None
    assert parsed.multiValueHeaders["X-Dup"] == ["1", "2"]
    assert parsed.body == '{"x": 1}'
    assert parsed.isBase64Encoded is False


def test_bytes_that_are_not_text_arrive_base64_encoded() -> None:
    raw = b"\x89PNG\r\n\x1a\n\xff"
    sent = event(raw, "/orders")
    assert sent["isBase64Encoded"] is True
    assert base64.b64decode(sent["body"]) == raw
    assert sent["queryStringParameters"] is None
    assert sent["multiValueQueryStringParameters"] is None
