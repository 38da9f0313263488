"""A quick yes for the events our own producer writes; never a no.

`OrderPlaced` validation costs about 70 us a record in Python validators (email_validator alone
about 25), eight times what decoding and compressing the record cost. The archiver reads every
record, and its throughput per partition must keep up with what MSK takes in per partition.

`plainly_valid(text)` is True only when a validator that runs in pydantic-core's Rust accepts the
text against narrower rules than `OrderPlaced`'s (every key present and no other, canonical
UUIDs, a UTC time stamp ending in Z, integers only where the model wants integers, prices as
strings of ASCII digits, an address of letters, digits and `._+-`), the text holds no escape and
no key twice, and the order's total adds up. Each narrower rule implies the model's, so True
means `OrderPlaced.model_validate` accepts the value `json.loads` makes of the text; False means
only "not decided here": the caller validates in full, and every error message stays the model's.
`tests/unit/test_plain_events.py` holds it to that.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal, TypedDict

from email_validator import SPECIAL_USE_DOMAIN_NAMES
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config

from orderstream.currencies import ISO_4217
from orderstream.events import SCHEMA_VERSION
from orderstream.models import MAX_ITEMS, MAX_QUANTITY

# email_validator's limits (RFC 5321): local part, domain, one label.
_LOCAL_MAX: Final = 64
_DOMAIN_MAX: Final = 253
_LABEL_MAX: Final = 63
_SPECIAL_USE: Final = tuple(SPECIAL_USE_DOMAIN_NAMES)

_UUID = Annotated[
    str,
    Field(strict=True, pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
]
_NAME = Annotated[
    str, Field(strict=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")
]
# Dot-atom of a subset of atext; a domain of two or more labels of letters and digits joined by
# single hyphens (so no Punycode and no "ab--" label), lower case only, ending in a letter.
_EMAIL = Annotated[
    str,
    Field(
        strict=True,
        max_length=254,
        pattern=r"^[a-z0-9_+-]+(?:\.[a-z0-9_+-]+)*@(?:[a-z0-9]+(?:-[a-z0-9]+)*\.)+[a-z]+$",
    ),
]
# Cents always written out, as the model writes money: "12.50", never "12.5" or "12".
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


@with_config(_CLOSED)
class _Customer(TypedDict):
    id: Annotated[
        str,
        Field(strict=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"),
    ]
    email: _EMAIL
    name: _NAME


@with_config(_CLOSED)
class _Item(TypedDict):
    sku: Annotated[
        str,
        Field(strict=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"),
    ]
    name: _NAME
    quantity: Annotated[int, Field(strict=True, ge=1, le=MAX_QUANTITY)]
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
    correlation_id: Annotated[
        str, Field(strict=True, min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
    ]
    order: _Order


_EVENTS: Final = TypeAdapter(_Event)
_KEYS_BESIDE_ITEMS: Final = (
    len(_Event.__annotations__) + len(_Order.__annotations__) + len(_Customer.__annotations__)
)
_KEYS_PER_ITEM: Final = len(_Item.__annotations__)


def plainly_valid(text: str) -> bool:
    """True only if `OrderPlaced.model_validate(json.loads(text))` accepts the text; see above."""
    if "\\" in text:
        return False  # without escapes every quote is a string's edge, so keys can be counted
    try:
        event = _EVENTS.validate_json(text)
    except ValidationError:
        return False
    order = event["order"]
    items = order["items"]
    return (
        # Every object had its keys and no others; a repeated key (the last would win) would
        # show as one key too many.
        text.count('":') == _KEYS_BESIDE_ITEMS + _KEYS_PER_ITEM * len(items)
        and _utc_stamp_is_a_time(event["occurred_at"])
        and _plain_address(order["customer"]["email"])
        and _cents(order["total"]) == sum(_cents(i["unit_price"]) * i["quantity"] for i in items)
    )


def _utc_stamp_is_a_time(stamp: str) -> bool:
    try:
        datetime.fromisoformat(stamp)  # no month 13, no February 30, no second 60
    except ValueError:
        return False
    return True


def _plain_address(address: str) -> bool:
    """What email_validator's checks come to for an address the pattern above already fits."""
    local, domain = address.split("@")
    return (
        len(local) <= _LOCAL_MAX
        and len(domain) <= _DOMAIN_MAX
        and all(len(label) <= _LABEL_MAX for label in domain.split("."))
        and not any(domain == d or domain.endswith("." + d) for d in _SPECIAL_USE)
    )


def _cents(price: str) -> int:
    """'12.50' -> 1250: exact, as `Order`'s Decimal sum is for two decimal places."""
    return int(price.replace(".", ""))
