"""The order model: what it accepts, what it refuses, and the total it computes."""

from __future__ import annotations

import copy
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from pydantic import ValidationError

from orderstream.models import MAX_ITEMS, MAX_UNIT_PRICE, Order, OrderRequest, compute_total
from tests.strategies import order_bodies

VALID: dict[str, Any] = {
    "customer": {"id": "c-42", "email": "ada@example.com", "name": "Ada Lovelace"},
    "items": [
        {"sku": "BOOK-001", "name": "Analytical Engine notes", "quantity": 2, "unit_price": "19.95"}
    ],
    "currency": "EUR",
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    *parents, leaf = path.split(".")
    target: Any = body
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if isinstance(target, list):
        target[int(leaf)] = value
    else:
        target[leaf] = value
    return body


def error_locations(body: dict[str, Any]) -> set[str]:
    with pytest.raises(ValidationError) as info:
        OrderRequest.model_validate(body)
    return {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}


def test_total_is_computed_from_items() -> None:
    body = copy.deepcopy(VALID)
    body["items"].append({"sku": "PEN", "name": "Pen", "quantity": 3, "unit_price": "0.1"})
    order = OrderRequest.model_validate(body).to_order()
    assert order.total == Decimal("40.20")
    assert order.model_dump(mode="json")["total"] == "40.20"


def test_order_id_is_kept_when_given_and_generated_when_absent() -> None:
    given_id = uuid.uuid4()
    assert (
        OrderRequest.model_validate({**VALID, "order_id": str(given_id)}).to_order().order_id
        == given_id
    )
    generated = {OrderRequest.model_validate(VALID).to_order().order_id for _ in range(3)}
    assert len(generated) == 3


@pytest.mark.parametrize(
    ("path", "value", "location"),
    [
        ("items.0.unit_price", 19.95, "items.0.unit_price"),  # a float loses cents: refused
        ("items.0.unit_price", "19.951", "items.0.unit_price"),
        ("items.0.unit_price", "-1.00", "items.0.unit_price"),
        ("items.0.unit_price", "1e3", "items.0.unit_price"),
        ("items.0.unit_price", "NaN", "items.0.unit_price"),
        ("items.0.unit_price", True, "items.0.unit_price"),
        ("items.0.quantity", 0, "items.0.quantity"),
        ("items.0.quantity", 1001, "items.0.quantity"),
        ("items.0.quantity", "2", "items.0.quantity"),
        ("items.0.quantity", 2.0, "items.0.quantity"),
        ("items.0.sku", "", "items.0.sku"),
        ("items.0.sku", "a b", "items.0.sku"),
        ("items.0.name", "x" * 201, "items.0.name"),
        ("currency", "EURO", "currency"),
        ("currency", "eur", "currency"),
        ("currency", "XAU", "currency"),  # gold is a code, not a currency for orders
        ("customer.email", "not-an-email", "customer.email"),
        ("customer.email", "a@" + "b" * 250 + ".com", "customer.email"),
        ("customer.name", "", "customer.name"),
        ("customer.name", "Ada\r\nBcc: victim@example.com", "customer.name"),
        ("customer.id", "c 42", "customer.id"),
        ("order_id", "not-a-uuid", "order_id"),
    ],
)
def test_invalid_fields_are_reported_by_location(path: str, value: Any, location: str) -> None:
    assert location in error_locations(with_change(path, value))


@pytest.mark.parametrize(
    "price",
    [-1, "-0.01", int(MAX_UNIT_PRICE) + 1, str(MAX_UNIT_PRICE + Decimal("0.01")), 10**30],
    ids=["int -1", "str -0.01", "int over the max", "str a cent over", "int 10^30"],
)
def test_unit_prices_outside_the_limits_are_refused_as_integers_and_strings(price: Any) -> None:
    assert "items.0.unit_price" in error_locations(with_change("items.0.unit_price", price))


@pytest.mark.parametrize(
    ("price", "cents"),
    [
        (0, Decimal("0.00")),
        ("0", Decimal("0.00")),
        (int(MAX_UNIT_PRICE), Decimal("9999999.00")),
        (str(MAX_UNIT_PRICE), MAX_UNIT_PRICE),
        (7, Decimal("7.00")),
        ("7.5", Decimal("7.50")),
    ],
)
def test_unit_prices_at_the_limits_are_accepted_to_the_cent(price: Any, cents: Decimal) -> None:
    body = with_change("items.0.unit_price", price)
    body["items"] = body["items"][:1]
    order = OrderRequest.model_validate(body).to_order()
    assert order.items[0].unit_price == cents
    assert str(order.items[0].unit_price) == str(cents)


def test_unknown_fields_and_client_totals_are_refused() -> None:
    assert "total" in error_locations({**VALID, "total": "0.01"})
    assert "customer.vip" in error_locations(with_change("customer.vip", True))


@pytest.mark.parametrize("count", [0, MAX_ITEMS + 1])
def test_item_count_is_bounded(count: int) -> None:
    body = {**VALID, "items": [VALID["items"][0]] * count}
    assert "items" in error_locations(body)


def test_an_order_whose_total_does_not_add_up_is_invalid() -> None:
    order = OrderRequest.model_validate(VALID).to_order().model_dump(mode="json")
    order["total"] = "0.01"
    with pytest.raises(ValidationError, match="does not equal the sum"):
        Order.model_validate(order)


@given(order_bodies())
def test_every_generated_valid_body_is_accepted_with_an_exact_total(body: dict[str, Any]) -> None:
    order = OrderRequest.model_validate(body).to_order()
    expected = sum(
        (Decimal(item["unit_price"]) * item["quantity"] for item in body["items"]), Decimal(0)
    )
    assert order.total == expected
    # The JSON form is a fixed point: validating what we serialized gives the same order.
    assert Order.model_validate_json(order.model_dump_json()) == order


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("unit_price", True, "Value error, price must be a decimal string such as '19.95'"),
        (
            "unit_price",
            "1.234",
            "Value error, price must be a decimal string with at most 2 decimal places, "
            "such as '19.95'",
        ),
        (
            "unit_price",
            1.5,
            "Value error, price must be a decimal string such as '19.95', not a JSON number",
        ),
        ("unit_price", 10**30, "Value error, amount has too many digits"),
    ],
)
def test_each_refused_price_says_why_in_its_own_words(field: str, value: Any, message: str) -> None:
    item = {"sku": "SKU-1", "name": "Item", "quantity": 1, "unit_price": "1.00", field: value}
    body = {**copy.deepcopy(VALID), "items": [item]}
    with pytest.raises(ValidationError) as refused:
        OrderRequest.model_validate(body)
    [error] = refused.value.errors()
    assert (error["loc"], error["msg"]) == (("items", 0, field), message)


def test_an_unknown_currency_is_named_in_the_refusal() -> None:
    with pytest.raises(ValidationError) as refused:
        OrderRequest.model_validate({**copy.deepcopy(VALID), "currency": "XYZ"})
    [error] = refused.value.errors()
    assert error["msg"] == (
        "Value error, must be an ISO 4217 currency code such as EUR or USD, not 'XYZ'"
    )


def test_the_total_of_no_items_is_zero_to_the_cent() -> None:
    total = compute_total([])
    assert (total, str(total)) == (Decimal(0), "0.00")


def test_a_control_character_in_a_name_is_refused_saying_which_kind() -> None:
    body = copy.deepcopy(VALID)
    body["customer"]["name"] = "Ada\r\nBcc: someone"
    with pytest.raises(ValidationError) as refused:
        OrderRequest.model_validate(body)
    [error] = refused.value.errors()
    assert (error["loc"], error["msg"]) == (
        ("customer", "name"),
        "Value error, must not contain control characters (such as CR or LF)",
    )
