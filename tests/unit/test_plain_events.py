"""plain_events.plainly_valid: a fast yes that is never wrong, and that our own events get.

"Never wrong": whenever it says True, the full path (the archive's strict JSON reading, then
`OrderPlaced.model_validate`) accepts the same text. Checked on every mutation of an event we
could think of, on random addresses against email_validator, and on random JSON values; and on
the archive itself, whose lines are the same bytes with the fast path as without it.
"""

from __future__ import annotations

import json
import random
import string
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.msk_event import PlainRecord, msk_record, sample_order_records
from orderstream import archive, events, models, plain_events
from orderstream.archive import archive_line
from orderstream.events import OrderPlaced, to_message
from orderstream.models import Customer, LineItem, Order, OrderRequest
from orderstream.plain_events import plainly_valid
from tests.strategies import examples, order_bodies
from tests.unit.test_archive import consumer_record


def full_path_accepts(text: str) -> bool:
    """What the archive decided before the fast path: strict JSON, then the model."""
    try:
        parsed = json.loads(
            text,
            object_pairs_hook=archive._object_without_repeats,
            parse_constant=archive._refuse_constant,
            parse_float=archive._finite_float,
        )
        OrderPlaced.model_validate(parsed)
    except (ValueError, RecursionError):  # ValidationError and JSONDecodeError are ValueErrors
        return False
    return True


def event_text(**changes: Any) -> str:
    """A canonical event as our producer writes it, with the order's fields changed."""
    order = Order(
        order_id=uuid.UUID("5b0c4d1e-8f2a-4c3b-9d7e-000000000000"),
        customer=Customer(id="c-42", email="ada@example.com", name="Ada Lovelace"),
        items=[
            LineItem(sku="SKU-1", name="Espresso beans", quantity=2, unit_price=Decimal("12.5")),
            LineItem(sku="SKU-2", name="Filter papers", quantity=1, unit_price=Decimal("3")),
        ],
        currency="EUR",
        total=Decimal("28.00"),
    )
    event = OrderPlaced(
        event_id=uuid.UUID("e0e0e0e0-0000-4000-8000-000000000000"),
        occurred_at=datetime(2026, 11, 25, 14, 2, 8, tzinfo=UTC),
        correlation_id="req-0000",
        order=order,
    )
    text = to_message(event).value.decode()
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new, 1)
    return text


def test_the_event_type_it_knows_is_the_one_events_defines() -> None:
    literal = plain_events._Event.__annotations__["event_type"]
    assert events.EVENT_TYPE in str(literal)
    assert plainly_valid(event_text())


def test_every_event_our_producer_writes_is_decided_plainly() -> None:
    texts = [r.value.decode() for r in sample_order_records(50, 3) if r.value]
    texts.append(event_text())
    assert all(map(plainly_valid, texts))
    assert all(map(full_path_accepts, texts))


@settings(max_examples=examples(200), deadline=None)
@given(body=order_bodies(max_items=8), moment=st.datetimes(timezones=st.just(UTC)))
def test_any_valid_order_our_api_would_publish_is_decided_plainly_unless_it_holds_escapes(
    body: dict[str, Any], moment: datetime
) -> None:
    order = OrderRequest.model_validate(body).to_order()
    event = OrderPlaced.new(order, correlation_id="req-1", occurred_at=moment)
    text = to_message(event).value.decode()
    # Left to the full path: an escape (a quote or backslash in a name), and a string that
    # starts with a colon, whose opening quote and colon count like a key's end.
    if "\\" not in text and not any(s.startswith(":") for s in strings(json.loads(text))):
        assert plainly_valid(text)
    else:
        assert not plainly_valid(text)


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def mutations() -> Iterator[tuple[str, str]]:
    """(what, text): an event changed in one way that may or may not leave it valid."""
    base = event_text()
    parsed = json.loads(base)

    def with_(path: tuple[str | int, ...], value: Any) -> str:
        changed = json.loads(base)
        target = changed
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        return json.dumps(changed, separators=(",", ":"), ensure_ascii=False)

    def without(path: tuple[str | int, ...]) -> str:
        changed = json.loads(base)
        target = changed
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]
        return json.dumps(changed, separators=(",", ":"), ensure_ascii=False)

    leaves: dict[tuple[str | int, ...], list[Any]] = {
        ("event_id",): [
            "E0E0E0E0-0000-4000-8000-000000000000",
            "e0e0e0e00000400080000000000000000",
            "{e0e0e0e0-0000-4000-8000-000000000000}",
            "e0e0e0e0-0000-4000-8000-00000000000",
            "",
            7,
        ],
        ("event_type",): ["order-cancelled", "Order-placed", None],
        ("schema_version",): [2, 0, True, 1.0, "1", -0],
        ("occurred_at",): [
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T14:02:60Z",
            "2026-11-25T14:02:08+01:00",
            "2026-11-25T14:02:08",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "2026-11-25T14:02:08.1234567Z",
            "2026-11-25 14:02:08Z",
            1795615328,
        ],
        ("correlation_id",): ["", "req 1", "x" * 129, "x" * 128, "réq", "req\x7f"],
        ("order", "order_id"): ["5B0C4D1E-8F2A-4C3B-9D7E-000000000000", "nope", None],
        ("order", "currency"): ["XXX", "eur", "EURO", "USD", "JPY"],
        ("order", "total"): ["28.01", "28", "28.0", "28.000", "-28.00", "2.8e1", 28, 28.0],
        ("order", "customer", "id"): ["", ".c", "c" * 64, "c" * 65, "c:42", "c/42"],
        ("order", "customer", "name"): [
            "",
            "x" * 200,
            "x" * 201,
            "Ada\x85Lovelace",
            "Ada\x7fLovelace",
            "Ada\tLovelace",
            "Ada\u2028Lovelace",
            "Zoë Ωmega 李",
            "<img src=x onerror=alert(1)>",
        ],
        ("order", "items", 0, "quantity"): [0, 1001, 1000, 2.0, True, "2", -2],
        ("order", "items", 0, "unit_price"): [
            "12.5",
            "12",
            "12.500",
            "-12.50",
            "12,50",
            "\u0661\u0662.\u0665\u0660",  # Arabic-Indic digits, which Decimal reads
            "9999999.99",
            "10000000.00",
            12,
            12.5,
        ],
        ("order", "items", 0, "sku"): ["", "-SKU", "S" * 64, "S" * 65, "SKU 1"],
        ("order", "items", 0, "name"): ["", "Beans\nand more", 'Beans "dark"'],
    }
    for path, values in leaves.items():
        for value in values:
            yield f"{path}={value!r}", with_(path, value)
    for path in [
        ("event_type",),
        ("schema_version",),
        ("order", "total"),
        ("order", "customer"),
        ("order", "customer", "email"),
        ("order", "items", 0, "sku"),
    ]:
        yield f"without {path}", without(path)
    for path in [(), ("order",), ("order", "customer"), ("order", "items", 0)]:
        changed = json.loads(base)
        target = changed
        for step in path:
            target = target[step]
        target["extra"] = 1
        yield f"extra key in {path}", json.dumps(changed, separators=(",", ":"))
    yield "no items", with_(("order", "items"), [])
    item = parsed["order"]["items"][1]
    yield "101 items", with_(("order", "items"), [item] * 101)
    yield "100 items, total wrong", with_(("order", "items"), [item] * 100)
    yield "items not a list", with_(("order", "items"), item)
    for key in [
        '"currency":"EUR"',
        '"sku":"SKU-1"',
        '"event_id":"e0e0e0e0-0000-4000-8000-000000000000"',
    ]:
        yield f"{key} twice", base.replace(key, f"{key},{key}", 1)
        changed_key = key.replace('":"', '":"0', 1)
        yield f"{key} twice, first differs", base.replace(key, f"{changed_key},{key}", 1)
    yield "pretty", json.dumps(parsed, indent=2)
    yield "spaces", json.dumps(parsed)
    yield "space before a colon", base.replace('"currency":', '"currency" :', 1)
    # A repeated key whose colon is spaced must not hide from the key count.
    for space in [" ", "\t", "\n", "\r", "  \n "]:
        yield (
            f"repeated key, {space!r} before one colon",
            base.replace(
                '"correlation_id":"req-0000"',
                f'"correlation_id":"x","correlation_id"{space}:"req-0000"',
                1,
            ),
        )
        yield (
            f"repeated key in an item, {space!r} before its colon",
            base.replace('"sku":"SKU-1"', f'"sku":"X","sku"{space}:"SKU-1"', 1),
        )
    yield "a value opening with a colon", base.replace("Ada Lovelace", ": Ada", 1)
    yield "BOM", "\ufeff" + base
    yield "trailing garbage", base + "x"
    yield "trailing comma", base[:-1] + ",}"
    yield "two documents", base + base
    yield "NaN", base.replace('"schema_version":1', '"schema_version":NaN', 1)
    yield "Infinity total", base.replace('"total":"28.00"', '"total":Infinity', 1)
    yield "escaped letter", base.replace("Ada Lovelace", "Ad\\u0061 Lovelace", 1)
    yield "escaped quote in a name", base.replace("Ada Lovelace", 'Ada \\"Lovelace\\"', 1)
    yield "not an object", json.dumps([parsed])
    yield "null", "null"
    yield "deep", base[:-1] + ',"x":' + "[" * 5000 + "]" * 5000 + "}"
    yield "non-breaking space between tokens", base.replace(",", ",\u00a0", 1)


@pytest.mark.parametrize(("what", "text"), list(mutations()))
def test_a_yes_is_never_given_to_what_the_model_refuses(what: str, text: str) -> None:
    if plainly_valid(text):
        assert full_path_accepts(text), what


def test_the_mutations_reach_both_answers() -> None:
    decided = [plainly_valid(text) for _, text in mutations()]
    accepted = [full_path_accepts(text) for _, text in mutations()]
    assert sum(decided) >= 10  # valid mutations are decided plainly...
    assert sum(a and not d for a, d in zip(accepted, decided, strict=True)) >= 10  # ...or not
    assert sum(not a for a in accepted) >= 60


def test_the_special_use_names_cover_email_validators() -> None:
    from email_validator import SPECIAL_USE_DOMAIN_NAMES

    assert all("." not in name for name in SPECIAL_USE_DOMAIN_NAMES)  # a top-level check works
    assert set(SPECIAL_USE_DOMAIN_NAMES) <= models._SPECIAL_USE_TLDS


@pytest.mark.parametrize(
    "address",
    [
        "ada@example.com\n",
        "ada@example.com\r\n",
        "\nada@example.com",
        "ada@example.com ",
        "Ada@example.com",
        "ada@Example.com",
        "ada..b@example.com",
        ".ada@example.com",
        "ada.@example.com",
        "ada@-example.com",
        "ada@example-.com",
        "ada@ex--ample.com",
        "ada@xn--bcher-kva.com",
        "ada@example.c0m",
        "ada@example.test",
        "ada@localhost",
        "ada@example",
        "a" * 65 + "@example.com",
        "ada@" + "a" * 64 + ".com",
    ],
)
def test_an_address_near_the_edge_is_not_plain(address: str) -> None:
    assert not models.plain_address(address)


def test_a_newline_after_an_address_is_refused_as_before() -> None:
    """email_validator refuses it; a `$` that matched before the newline once let it through."""
    with pytest.raises(ValueError, match="valid email address"):
        models.Customer(id="c-1", email="ada@example.com\n", name="Ada")


def random_addresses(count: int, seed: int) -> Iterator[str]:
    """Addresses near the edge of what email_validator takes: dots, hyphens, case, length,
    special-use and numeric top-level domains, Punycode-like labels."""
    pick = random.Random(seed)
    plain = string.ascii_lowercase + string.digits + "._+-"
    wide = string.ascii_letters + string.digits + "._+-!#$%&'*/=?^`{|}~"
    label_chars = string.ascii_lowercase + string.digits + "-" + "A_"
    tlds = [
        "com",
        "de",
        "test",
        "local",
        "localhost",
        "invalid",
        "onion",
        "arpa",
        "c0m",
        "7",
        "x",
        "example",
        "io",
        "co.uk",
        "xn--p1ai",
    ]
    for _ in range(count):
        chars = plain if pick.random() < 0.7 else wide
        local = "".join(pick.choice(chars) for _ in range(pick.choice([1, 2, 5, 20, 64, 65])))
        labels = [
            "".join(
                pick.choice(label_chars if pick.random() < 0.3 else string.ascii_lowercase)
                for _ in range(pick.choice([1, 2, 3, 4, 8, 63, 64]))
            )
            for _ in range(pick.choice([0, 1, 1, 2, 3]))
        ]
        if pick.random() < 0.1:
            labels.append("xn--" + "".join(pick.choice("abc") for _ in range(4)))
        domain = ".".join([*labels, pick.choice(tlds)])
        yield f"{local}@{domain}"


def test_a_yes_on_an_address_is_a_yes_of_email_validator() -> None:
    base = json.loads(event_text())
    fast_yes = plain = 0
    for address in random_addresses(10_000, seed=20261201):
        base["order"]["customer"]["email"] = address
        text = json.dumps(base, separators=(",", ":"), ensure_ascii=False)
        if plainly_valid(text):
            fast_yes += 1
            assert full_path_accepts(text), address
            # The address the notifier sends to is email_validator's ASCII form of it.
            built = plain_events.plain_event(json.loads(text))
            assert built == OrderPlaced.model_validate_json(text), address
        if models.plain_address(address):
            plain += 1
            from email_validator import validate_email

            checked = validate_email(address, check_deliverability=False, allow_smtputf8=False)
            assert checked.ascii_email == address
    assert fast_yes >= 1000  # the test saw many addresses decided plainly
    assert plain >= fast_yes


json_leaves: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
)
json_values: st.SearchStrategy[Any] = (
    json_leaves
    | st.lists(json_leaves, max_size=3)
    | st.dictionaries(
        st.text(max_size=5), json_leaves | st.lists(json_leaves, max_size=2), max_size=3
    )
)


@settings(max_examples=examples(300), deadline=None)
@given(
    path=st.sampled_from(
        [
            ("event_id",),
            ("schema_version",),
            ("occurred_at",),
            ("order", "total"),
            ("order", "customer"),
            ("order", "customer", "name"),
            ("order", "items"),
            ("order", "items", 0),
            ("order", "items", 0, "quantity"),
            ("order", "items", 0, "unit_price"),
        ]
    ),
    value=json_values,
)
def test_any_json_value_anywhere_keeps_the_yes_sound(
    path: tuple[str | int, ...], value: Any
) -> None:
    changed = json.loads(event_text())
    target = changed
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    text = json.dumps(changed, separators=(",", ":"), ensure_ascii=False)
    if plainly_valid(text):
        assert full_path_accepts(text)


def archive_lines(records: list[PlainRecord]) -> list[bytes]:
    return [archive_line(consumer_record(msk_record(r))).data for r in records]


def test_the_archive_writes_the_same_bytes_with_and_without_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts = [text for _, text in mutations()] + [event_text()]
    records = [
        PlainRecord(
            b"k", text.encode(), [("h", b"v"), ("n", None)], "order-placed", 1, n, 1_795_615_328_000
        )
        for n, text in enumerate(texts)
    ] + sample_order_records(20, 2)
    with_fast = archive_lines(records)
    never: Callable[[str], bool] = lambda text: False  # noqa: E731
    monkeypatch.setattr(archive, "plainly_valid", never)
    assert archive_lines(records) == with_fast
    assert sum(b'"error":null' in line for line in with_fast) >= 30


@settings(max_examples=examples(200), deadline=None)
@given(body=order_bodies(max_items=8), moment=st.datetimes(timezones=st.just(UTC)))
def test_a_plain_event_is_the_event_the_model_makes(body: dict[str, Any], moment: datetime) -> None:
    order = OrderRequest.model_validate(body).to_order()
    event = OrderPlaced.new(order, correlation_id="req-1", occurred_at=moment)
    payload = json.loads(to_message(event).value)
    built = plain_events.plain_event(payload)
    validated = OrderPlaced.model_validate(payload)
    if built is None:  # a name starting with a colon is fine here: only the text counts keys
        pytest.fail(f"not decided plainly: {payload}")
    assert built == validated
    assert built.model_dump() == validated.model_dump()
    assert built.model_dump_json() == validated.model_dump_json()
    assert built.model_fields_set == validated.model_fields_set
    assert built.order.model_fields_set == validated.order.model_fields_set
    assert [type(v) for v in built.model_dump().values()] == [
        type(v) for v in validated.model_dump().values()
    ]
    assert built.occurred_at.tzinfo is validated.occurred_at.tzinfo


@pytest.mark.parametrize(("what", "text"), list(mutations()))
def test_a_plain_event_is_never_built_from_what_the_model_refuses(what: str, text: str) -> None:
    try:
        payload = json.loads(text)
    except ValueError:
        return
    built = plain_events.plain_event(payload)
    if built is not None:
        assert built == OrderPlaced.model_validate(payload), what
