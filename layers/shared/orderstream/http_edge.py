"""The HTTP edge of POST /orders: what a body, a media type and a correlation id must be before
the resolver and the order model see them. Generic over the API's domain; the handler
(functions/order_api/app.py) maps its errors onto answers.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from typing import Any, Final

from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from orderstream.events import CorrelationId

MAX_BODY_BYTES: Final = 64 * 1024
CORRELATION_HEADER: Final = "X-Correlation-Id"


def json_text(body: Any) -> str:
    """Compact JSON with <, > and & escaped, so echoed input can never be read as markup."""
    text = json.dumps(body, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class BodyError(Exception):
    """A body that cannot be read as JSON; `reason` names the problem without echoing input."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BodyTooLargeError(BodyError):
    pass


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers may pick different duplicates; refusing them keeps every reader in agreement.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise BodyError("an object has the same key twice")
    return result


def _reject_constant(name: str) -> Any:
    raise BodyError(f"{name} is not a JSON number")


_NOT_AN_OBJECT: Final = "Input should be a valid dictionary or object to extract fields from"


def parse_json_body(text: str) -> Any:
    """The resolver's JSON parser: size-capped, strict about duplicate keys and NaN."""
    if len(text) > MAX_BODY_BYTES or len(text.encode()) > MAX_BODY_BYTES:
        raise BodyTooLargeError(f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(
            text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as exc:
        raise BodyError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BodyError("the JSON is nested too deeply") from None
    except ValueError:  # Python refuses integers of more than 4300 digits
        raise BodyError("a number in the body is too long") from None
    if isinstance(body, list):
        # The resolver validates a list's first element in place of a body that is not a list
        # (an unwrapping meant for repeated query parameters): [order, anything] would pass.
        # Powertools 3.37.0; no upstream report found (2026-11): re-test on each upgrade.
        raise RequestValidationError(
            [{"type": "model_attributes_type", "loc": ("body",), "msg": _NOT_AN_OBJECT}]
        )
    return body


def is_json_media_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media_type, *params = (part.strip().lower() for part in content_type.split(";"))
    charsets = {p.partition("=")[2].strip('"') for p in params if p.startswith("charset=")}
    return media_type == "application/json" and charsets <= {"utf-8"}


def with_canonical_content_type(event: dict[str, Any]) -> dict[str, Any]:
    """The event with its media type in lower case: RFC 9110 makes it case-insensitive, the
    resolver's body parser does not, and the two must agree on what is JSON."""
    patched = dict(event)
    for field_name in ("headers", "multiValueHeaders"):
        headers = event.get(field_name)
        if not headers:
            continue
        patched[field_name] = {
            name: _lower_media_type(value) if name.lower() == "content-type" else value
            for name, value in headers.items()
        }
    return patched


def _lower_media_type(value: Any) -> Any:
    if isinstance(value, list):
        return [_lower_media_type(v) for v in value]
    if not isinstance(value, str):
        return value
    media_type, sep, params = value.partition(";")
    return media_type.strip().lower() + sep + params


def body_size(event: Mapping[str, Any]) -> int:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return len(base64.b64decode(body))
        except (binascii.Error, ValueError):
            return len(body)
    return len(body.encode())


_valid_correlation_id = TypeAdapter(CorrelationId)


def correlation_id_for(event: Mapping[str, Any], context: object) -> str:
    """The client's X-Correlation-Id if it is usable, else API Gateway's request id."""
    headers = event.get("headers") or {}
    given = next((v for k, v in headers.items() if k.lower() == CORRELATION_HEADER.lower()), None)
    request_id = (event.get("requestContext") or {}).get("requestId")
    for candidate in (given, request_id, getattr(context, "aws_request_id", None)):
        if isinstance(candidate, str):
            try:
                return _valid_correlation_id.validate_python(candidate)
            except ValidationError:
                continue
    return str(uuid.uuid4())
