"""What each confirmation email says: the template data, made inert, and its recipient.

Nothing here calls AWS; the SES request is orderstream.ses_bulk's, the sending process
orderstream.confirmation's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from orderstream.events import OrderPlaced

# Customer text goes into the template data made *inert*: the characters any HTML-escaping
# renderer would change (Handlebars escapes & < > " ' ` =) are replaced by look-alikes, and
# bidirectional overrides (which can make text display reversed) are dropped. Why not rely on
# the renderer: SES's Handlebars escapes `{{x}}` in every part, so the plain-text part would
# show "O&#x27;Brien"; its raw `{{{x}}}` form is not understood by moto's renderer, which
# escapes nothing. With inert data both renderers produce the same bytes, safe in HTML and
# readable as text, and the tests can check the very output SES would send.
_INERT: Final = str.maketrans(
    {
        "&": "\uff06",  # FULLWIDTH AMPERSAND
        "<": "\uff1c",  # FULLWIDTH LESS-THAN SIGN
        ">": "\uff1e",  # FULLWIDTH GREATER-THAN SIGN
        '"': "\uff02",  # FULLWIDTH QUOTATION MARK
        "'": "\u2019",  # RIGHT SINGLE QUOTATION MARK, the typographic apostrophe
        "`": "\uff40",  # FULLWIDTH GRAVE ACCENT
        "=": "\uff1d",  # FULLWIDTH EQUALS SIGN
        **dict.fromkeys(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)])),
    }
)
#: What no value in the template data contains.
ESCAPED_BY_RENDERERS: Final = frozenset("&<>\"'`=")


def inert(text: str) -> str:
    """`text` with nothing a renderer would escape or a mail client would act on."""
    return text.translate(_INERT)


def money(amount: Decimal) -> str:
    return f"{amount:.2f}"


def template_data(event: OrderPlaced) -> dict[str, Any]:
    """The data of OrderConfirmationTemplate (template.yaml): every leaf a string.

    Strings only: moto's renderer fails on anything else, and SES prints numbers as given.
    Each item repeats the currency because inside `{{#each items}}` only the item's own fields
    resolve in both renderers.
    """
    order = event.order
    return {
        "customer_name": inert(order.customer.name),
        "order_id": str(order.order_id),
        "currency": order.currency,
        "total": money(order.total),
        "items": [
            {
                "name": inert(item.name),
                "sku": inert(item.sku),
                "quantity": str(item.quantity),
                "unit_price": money(item.unit_price),
                "line_total": money(item.line_total),
                "currency": order.currency,
            }
            for item in order.items
        ],
    }


@dataclass(frozen=True, slots=True)
class Confirmation:
    """One email: to whom, for which order, with which template data."""

    order_id: str
    recipient: str
    data: Mapping[str, Any]


def confirmation_for(event: OrderPlaced, redirect_to: str | None = None) -> Confirmation:
    """The customer's confirmation, addressed to `redirect_to` instead when it is set.

    The recipient is the bare address, never "Name <address>": customer text stays out of
    every header, so no name can inject one.
    """
    return Confirmation(
        order_id=event.order_id,
        recipient=redirect_to or str(event.order.customer.email),
        data=template_data(event),
    )
