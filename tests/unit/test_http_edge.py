"""The HTTP edge's functions on their own: each rule, its edges and its exact words."""

from __future__ import annotations

import base64
import json
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from orderstream.http_edge import (
    MAX_BODY_BYTES,
    BodyError,
    BodyTooLargeError,
    body_size,
    correlation_id_for,
    is_json_media_type,
    json_text,
    parse_json_body,
    with_canonical_content_type,
)


def test_json_text_is_compact_and_escapes_what_html_would_read() -> None:
    text = json_text({"a": "<b>&</b>", "n": [1, 2]})
    assert text == '{"a":"\\u003cb\\u003e\\u0026\\u003c/b\\u003e","n":[1,2]}'
    assert json.loads(text) == {"a": "<b>&</b>", "n": [1, 2]}


def test_a_body_error_carries_its_reason() -> None:
    error = BodyError("why")
    assert (str(error), error.reason) == ("why", "why")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"a": 1, "a": 2}', "an object has the same key twice"),
        ('{"a": NaN}', "NaN is not a JSON number"),
        ("[" * 100_000 + "]" * 100_000, None),  # too large first
        ("[" * 30_000 + "]" * 30_000, "the JSON is nested too deeply"),
        ('{"a": ' + "9" * 5_000 + "}", "a number in the body is too long"),
        ("{not json", "Expecting property name enclosed in double quotes at line 1 column 2"),
    ],
)
def test_unreadable_bodies_are_refused_with_a_reason_that_echoes_nothing(
    text: str, reason: str | None
) -> None:
    with pytest.raises(BodyError) as refused:
        parse_json_body(text)
    if reason is None:
        assert isinstance(refused.value, BodyTooLargeError)
        assert refused.value.reason == f"the body is larger than {MAX_BODY_BYTES} bytes"
    else:
        assert refused.value.reason == reason


def test_the_size_cap_counts_bytes_not_characters() -> None:
    fits = "{" + '"a":"' + "x" * (MAX_BODY_BYTES - 8) + '"}'
    assert len(fits.encode()) <= MAX_BODY_BYTES
    assert parse_json_body(fits)["a"].startswith("x")
    euros = '{"a":"' + "\u20ac" * (MAX_BODY_BYTES // 3) + '"}'  # fewer characters than bytes
    assert len(euros) < MAX_BODY_BYTES < len(euros.encode())
    with pytest.raises(BodyTooLargeError):
        parse_json_body(euros)


def test_a_list_is_refused_as_the_model_would_refuse_a_body_that_is_no_object() -> None:
    with pytest.raises(RequestValidationError) as refused:
        parse_json_body('[{"order_id": "x"}]')
    assert refused.value.errors() == [
        {
            "type": "model_attributes_type",
            "loc": ("body",),
            "msg": "Input should be a valid dictionary or object to extract fields from",
        }
    ]


@pytest.mark.parametrize(
    ("content_type", "json_"),
    [
        ("application/json", True),
        ("Application/JSON; charset=UTF-8", True),
        ('application/json; charset="utf-8"', True),
        ("application/json;charset=utf-8; x=y", True),
        ("application/json; charset=latin-1", False),
        ('application/json; charset="latin-1"', False),
        ("application/json; charset=x=utf-8", False),
        ("text/plain", False),
        ("", False),
        (None, False),
    ],
)
def test_only_utf8_json_is_json(content_type: str | None, json_: bool) -> None:
    assert is_json_media_type(content_type) is json_


def test_the_media_type_is_lowered_in_both_header_maps_and_nothing_else_changes() -> None:
    event: dict[str, Any] = {
        "headers": {"Content-Type": "Application/JSON;Charset=UTF-8", "X-Other": "KeepMe"},
        "multiValueHeaders": {"content-type": ["APPLICATION/JSON"], "X-Other": ["KeepMe"]},
        "body": "{}",
    }
    patched = with_canonical_content_type(event)
    assert patched["headers"] == {
        "Content-Type": "application/json;Charset=UTF-8",
        "X-Other": "KeepMe",
    }
    assert patched["multiValueHeaders"] == {
        "content-type": ["application/json"],
        "X-Other": ["KeepMe"],
    }
    assert patched["body"] == "{}"
    assert event["headers"]["Content-Type"] == "Application/JSON;Charset=UTF-8"  # not in place


def test_missing_header_maps_are_left_as_they_are() -> None:
    event = {"headers": None, "multiValueHeaders": {"Content-Type": ["TEXT/PLAIN"]}}
    patched = with_canonical_content_type(event)
    assert patched["headers"] is None
    assert patched["multiValueHeaders"] == {"Content-Type": ["text/plain"]}


@pytest.mark.parametrize(
    ("event", "size"),
    [
        ({"body": "h\u00e9"}, 3),
        ({"body": base64.b64encode(b"12345").decode(), "isBase64Encoded": True}, 5),
        ({"body": "not base64!", "isBase64Encoded": True}, 11),
        ({"body": None}, 0),
        ({}, 0),
    ],
)
def test_body_size_counts_the_bytes_a_client_sent(event: dict[str, Any], size: int) -> None:
    assert body_size(event) == size


def test_the_correlation_id_is_the_clients_then_api_gateways_then_lambdas() -> None:
    context = SimpleNamespace(aws_request_id="lambda-request-1")
    event: dict[str, Any] = {
        "headers": {"x-CORRELATION-id": "client-1"},
        "requestContext": {"requestId": "apigw-1"},
    }
    assert correlation_id_for(event, context) == "client-1"
    event["headers"] = {"X-Correlation-Id": "bad id with spaces"}
    assert correlation_id_for(event, context) == "apigw-1"
    event["requestContext"] = {}
    assert correlation_id_for(event, context) == "lambda-request-1"
    fresh = correlation_id_for({}, object())
    assert str(uuid.UUID(fresh)) == fresh
    assert correlation_id_for({}, object()) != fresh
