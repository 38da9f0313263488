"""A quick yes for the events our own producer writes; never a no.

`OrderPlaced` validation costs about 70 us a record in Python validators (email_validator alone
about 25), eight times what decoding and compressing the record cost. The archiver reads every
record, and its throughput per partition must keep up with what MSK takes in per partition.

`plainly_valid(text)` is True only when a validator that runs in pydantic-core's Rust accepts
the text against narrower rules than `OrderPlaced`'s (every key present and no other, canonical
UUIDs, a UTC time stamp ending in Z, integers only where the model wants integers, prices as
strings of ASCII digits, an address `models.plain_address` takes as it is), the text holds no
escape and no key twice, and the order's total adds up. Each narrower rule implies the model's,
so True means `OrderPlaced.model_validate` accepts the value `json.loads` makes of the text;
False means only "not decided here": the caller validates in full, and every error message
stays the model's. `plain_event(payload)` is the same for a decoded event, and builds it.
`tests/unit/test_plain_events.py` holds both to that.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Final, Literal, TypedDict

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config

from orderstream.currencies import ISO_4217
from orderstream.events import SCHEMA_VERSION, CorrelationId, OrderPlaced
from orderstream.models import (
    MAX_EMAIL,
    MAX_ITEMS,
    PLAIN_ADDRESS,
    Customer,
    CustomerId,
    LineItem,
    Order,
    Quantity,
    Sku,
    plain_address,
)

_UUID = Annotated[
    str,
    Field(strict=True, pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
]
_NAME = Annotated[
    str, Field(strict=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")
]
_EMAIL = Annotated[str, Field(strict=True, max_length=MAX_EMAIL, pattern=PLAIN_ADDRESS)]
_UNIT_PRICE = Annotated[str, Field(strict=True, pattern=r"^[0-9]{1,7}\.[0-9]{2}$")]
_TOTAL = Annotated[str, Field(strict=True, pattern=r"^[0-9]{1,15}\.[0-9]{2}$")]
_UTC_STAMP = Annotated[
    str,
    Field(
        strict=True,
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z$",
    ),
]
_CLOSED = ConfigDict(extra="forbid")
# The model's own constrained types where they hold no Python validator, made strict.
_STRICT: Final = Field(strict=True)


@with_config(_CLOSED)
class _Customer(TypedDict):
    id: Annotated[CustomerId, _STRICT]
    email: _EMAIL
    name: _NAME


@with_config(_CLOSED)
class _Item(TypedDict):
    sku: Annotated[Sku, _STRICT]
    name: _NAME
    quantity: Quantity
    unit_price: _UNIT_PRICE


@with_config(_CLOSED)
class _Order(TypedDict):
    customer: _Customer
    items: Annotated[list[_Item], Field(strict=True, min_length=1, max_length=MAX_ITEMS)]
    currency: Literal[tuple(sorted(ISO_4217))]  # type: ignore[valid-type]
    order_id: _UUID
    total: _TOTAL


@with_config(_CLOSED)
class _Event(TypedDict):
    event_id: _UUID
    event_type: Literal["order-placed"]  # events.EVENT_TYPE (the tests hold them equal)
    schema_version: Annotated[int, Field(strict=True, ge=SCHEMA_VERSION, le=SCHEMA_VERSION)]
    occurred_at: _UTC_STAMP
    correlation_id: Annotated[CorrelationId, _STRICT]
    order: _Order


_EVENTS: Final = TypeAdapter(_Event)
_KEYS_BESIDE_ITEMS: Final = (
    len(_Event.__annotations__) + len(_Order.__annotations__) + len(_Customer.__annotations__)
)
_KEYS_PER_ITEM: Final = len(_Item.__annotations__)
_KEY_END: Final = re.compile(r'"[ \t\n\r]*:')


def plainly_valid(text: str) -> bool:
    """True only if `OrderPlaced.model_validate(json.loads(text))` accepts the text; see above."""
    if "\\" in text:
        return False  # without escapes every quote is a string's edge, so keys can be counted
    try:
        event = _EVENTS.validate_json(text)
    except ValidationError:
        return False
    # Every object had its keys and no others; a repeated key (the last would win) would show
    # as one key too many. Without escapes every quote is a string's edge, and only a key's
    # closing quote is followed by a colon (JSON whitespace between them counted too); a
    # string value that opens with a colon is miscounted the safe way, as one key too many.
    keys = _KEYS_BESIDE_ITEMS + _KEYS_PER_ITEM * len(event["order"]["items"])
    return len(_KEY_END.findall(text)) == keys and _rest_holds(event)


def plain_event(payload: object) -> OrderPlaced | None:
    """`OrderPlaced.model_validate(payload)` for a decoded event these rules decide, built
    without the model's validators; None when they do not decide it (then validate in full).

    For the email notifier, whose records Powertools has already decoded: equal to what the
    model makes of the same payload (tests/unit/test_plain_events.py), field for field."""
    if type(payload) is not dict:
        return None
    try:
        event = _EVENTS.validate_python(payload)
    except ValidationError:
        return None
    if not _rest_holds(event):
        return None
    order = event["order"]
    customer = order["customer"]
    return OrderPlaced.model_construct(
        event_id=uuid.UUID(event["event_id"]),
        event_type=event["event_type"],
        schema_version=SCHEMA_VERSION,  # the only one the rules let through
        occurred_at=datetime.fromisoformat(event["occurred_at"]).astimezone(UTC),
        correlation_id=event["correlation_id"],
        order=Order.model_construct(
            customer=Customer.model_construct(
                id=customer["id"], email=customer["email"], name=customer["name"]
            ),
            items=[
                LineItem.model_construct(
                    sku=item["sku"],
                    name=item["name"],
                    quantity=item["quantity"],
                    unit_price=Decimal(item["unit_price"]),
                )
                for item in order["items"]
            ],
            currency=order["currency"],
            order_id=uuid.UUID(order["order_id"]),
            total=Decimal(order["total"]),
        ),
    )


def _rest_holds(event: _Event) -> bool:
    """The rules pydantic-core's patterns cannot say: a real time, a deliverable-looking
    address, a total that adds up."""
    order = event["order"]
    items = order["items"]
    return (
        _utc_stamp_is_a_time(event["occurred_at"])
        and plain_address(order["customer"]["email"])
        and _cents(order["total"]) == sum(_cents(i["unit_price"]) * i["quantity"] for i in items)
    )


def _utc_stamp_is_a_time(stamp: str) -> bool:
    try:
        datetime.fromisoformat(stamp)  # no month 13, no February 30, no second 60
    except ValueError:
        return False
    return True


def _cents(price: str) -> int:
    """'12.50' -> 1250: exact, as `Order`'s Decimal sum is for two decimal places."""
    return int(price.replace(".", ""))
