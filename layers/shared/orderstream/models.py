"""The order as a client sends it and as the pipeline carries it.

`OrderRequest` is the body of `POST /orders`; `Order` is what goes into the event, with an
order_id always set and a total we computed. The total is never taken from a client: a request
that carries one is rejected, and an event whose total does not add up is invalid.
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)

from orderstream.currencies import ISO_4217

MAX_ITEMS = 100
MAX_QUANTITY = 1000
MAX_UNIT_PRICE = Decimal("9999999.99")
CENT = Decimal("0.01")

# Digits only: no exponent, sign, NaN or Infinity can sneak in through Decimal's own parser.
_PRICE_TEXT = re.compile(r"\d{1,15}(?:\.\d{1,2})?")
# C0 controls, DEL and C1 controls: a CR/LF in a name is never legitimate and is how mail
# header injection starts, so it is refused at the door rather than escaped downstream only.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _price_from_json(value: Any) -> Any:
    """Accept money as a decimal string or an integer, never a float (floats lose cents)."""
    if isinstance(value, bool):
        raise ValueError("price must be a decimal string such as '19.95'")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        if not _PRICE_TEXT.fullmatch(value):
            raise ValueError(
                "price must be a decimal string with at most 2 decimal places, such as '19.95'"
            )
        return Decimal(value)
    if isinstance(value, Decimal):
        return value
    raise ValueError("price must be a decimal string such as '19.95', not a JSON number")


def _to_cents(amount: Decimal) -> Decimal:
    try:
        return amount.quantize(CENT)
    except InvalidOperation:
        # More digits than Decimal's 28-digit context holds (an integer price of 10**30):
        # a refusal like any other, not an arithmetic error that escapes validation.
        raise ValueError("amount has too many digits") from None


def _no_control_characters(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (such as CR or LF)")
    return value


_MONEY_SCHEMA = {
    "type": "string",
    "pattern": r"^\d{1,15}(\.\d{1,2})?$",
    "description": "Decimal amount as a string, at most 2 decimal places, e.g. '19.95'",
    "examples": ["19.95"],
}
# The JSON schema says what the wire carries (a decimal string), not pydantic's Decimal view.
Money = Annotated[
    Decimal,
    BeforeValidator(_price_from_json),
    Field(ge=0, decimal_places=2),
    AfterValidator(_to_cents),
    # Money travels as a string: a JSON number would be read back as a float by most clients.
    PlainSerializer(lambda d: str(d), return_type=str, when_used="json"),
    WithJsonSchema(_MONEY_SCHEMA, mode="serialization"),
    WithJsonSchema(
        {"anyOf": [_MONEY_SCHEMA, {"type": "integer", "minimum": 0}]}, mode="validation"
    ),
]
_UNIT_PRICE_SCHEMA = {**_MONEY_SCHEMA, "pattern": r"^\d{1,7}(\.\d{1,2})?$"}
UnitPrice = Annotated[
    Money,
    Field(le=MAX_UNIT_PRICE),
    WithJsonSchema(_UNIT_PRICE_SCHEMA, mode="serialization"),
    WithJsonSchema(
        {"anyOf": [_UNIT_PRICE_SCHEMA, {"type": "integer", "minimum": 0, "maximum": 9999999}]},
        mode="validation",
    ),
]


Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_control_characters)]
Quantity = Annotated[int, Field(strict=True, ge=1, le=MAX_QUANTITY)]
Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
CustomerId = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]


def _iso_currency(code: str) -> str:
    if code not in ISO_4217:
        raise ValueError(f"must be an ISO 4217 currency code such as EUR or USD, not {code!r}")
    return code


Currency = Annotated[
    str, Field(min_length=3, max_length=3, pattern=r"^[A-Z]{3}$"), AfterValidator(_iso_currency)
]


class StrictModel(BaseModel):
    """Unknown fields are errors, and models are immutable once validated."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, str_strip_whitespace=False, defer_build=True
    )


MAX_EMAIL = 254
# The common address, which email_validator takes as it is: a dot-atom of lower-case letters,
# digits and `_+-`; a domain of two or more labels of letters and digits joined by single
# hyphens (so no Punycode and no "ab--" label), lower case, ending in a letter.
PLAIN_ADDRESS: Final = r"^[a-z0-9_+-]+(?:\.[a-z0-9_+-]+)*@(?:[a-z0-9]+(?:-[a-z0-9]+)*\.)+[a-z]+$"
_PLAIN_ADDRESS = re.compile(PLAIN_ADDRESS)
# email_validator's limits (RFC 5321): local part, domain, one label.
_LOCAL_MAX: Final = 64
_DOMAIN_MAX: Final = 253
_LABEL_MAX: Final = 63
# email_validator's SPECIAL_USE_DOMAIN_NAMES, all top-level labels. Written out rather than
# imported: importing email_validator compiles its Unicode patterns (some 20 ms of a cold
# start), which a plain address never needs. tests/unit/test_plain_events.py holds this set to
# be a superset of the library's, so an upgrade that adds a name fails there.
_SPECIAL_USE_TLDS: Final = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})


def plain_address(text: str) -> bool:
    """True only for an address email_validator accepts and gives back unchanged as its
    ASCII form (tests/unit/test_plain_events.py checks thousands against it)."""
    # fullmatch: a Python `$` also matches before a final newline, which Rust's does not.
    if len(text) > MAX_EMAIL or not _PLAIN_ADDRESS.fullmatch(text):
        return False
    local, _, domain = text.partition("@")
    return (
        len(local) <= _LOCAL_MAX
        and len(domain) <= _DOMAIN_MAX
        and all(len(label) <= _LABEL_MAX for label in domain.split("."))
        and domain.rpartition(".")[2] not in _SPECIAL_USE_TLDS
    )


def _sendable_address(text: str) -> str:
    """The address as SES takes it: 7-bit ASCII, an internationalised domain in its ASCII
    (Punycode) form. A non-ASCII local part cannot be sent without SMTPUTF8, which SES lacks:
    it is refused here, at the API, rather than by SES for the whole bulk call later."""
    if plain_address(text):
        return text
    # Imported on first use: it compiles large Unicode patterns, which a function that only
    # meets plain addresses never needs at its cold start.
    from email_validator import EmailNotValidError, validate_email

    try:
        address = validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(f"value is not a valid email address: {exc}") from None
    ascii_address = address.ascii_email or ""
    if len(ascii_address) > MAX_EMAIL:
        raise ValueError(f"the address is longer than {MAX_EMAIL} characters in ASCII form")
    return ascii_address


Email = Annotated[
    str,
    Field(max_length=MAX_EMAIL, json_schema_extra={"format": "email"}),
    AfterValidator(_sendable_address),
]


class Customer(StrictModel):
    id: CustomerId
    email: Email
    name: Name


class LineItem(StrictModel):
    sku: Sku
    name: Name
    quantity: Quantity
    unit_price: UnitPrice

    @property
    def line_total(self) -> Decimal:
        return (self.unit_price * self.quantity).quantize(CENT)


class _OrderContent(StrictModel):
    customer: Customer
    items: Annotated[list[LineItem], Field(min_length=1, max_length=MAX_ITEMS)]
    currency: Currency


def compute_total(items: list[LineItem]) -> Decimal:
    return sum((item.line_total for item in items), Decimal(0)).quantize(CENT)


class OrderRequest(_OrderContent):
    """Body of `POST /orders`."""

    order_id: uuid.UUID | None = Field(
        default=None, description="Client-chosen UUID; doubles as the idempotency key."
    )

    def to_order(self, new_id: uuid.UUID | None = None) -> Order:
        """Fix the order_id (the client's, else `new_id`, else a random one) and the total."""
        order_id = self.order_id or new_id or uuid.uuid4()
        return Order(
            order_id=order_id,
            customer=self.customer,
            items=self.items,
            currency=self.currency,
            total=compute_total(self.items),
        )


class Order(_OrderContent):
    """An accepted order as carried by events: id always set, total computed by us."""

    order_id: uuid.UUID
    total: Money

    @model_validator(mode="after")
    def _total_adds_up(self) -> Self:
        expected = compute_total(self.items)
        if self.total != expected:
            raise ValueError(f"total {self.total} does not equal the sum of the items {expected}")
        return self
