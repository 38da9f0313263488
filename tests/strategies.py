"""Hypothesis strategies for valid orders, shared by the test suites."""

from __future__ import annotations

import string
from decimal import Decimal
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

from orderstream.currencies import ISO_4217
from orderstream.models import MAX_ITEMS, MAX_QUANTITY


def examples(count: int) -> int:
    """A property test's own example count, never above the profile's (10 under mutation)."""
    return min(count, settings().max_examples)


# Printable text without controls, including non-ASCII, quotes and markup.
text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x85"),
    min_size=1,
    max_size=200,
)
sku = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
prices = st.decimals(min_value=0, max_value=Decimal("9999999.99"), places=2).map(str)
emails = st.builds(
    "{}@{}.{}".format,
    st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=20),
    st.text(string.ascii_lowercase, min_size=1, max_size=20),
    st.sampled_from(["com", "org", "net", "de", "co"]),
)


def line_items(max_items: int = MAX_ITEMS) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(
        st.fixed_dictionaries(
            {
                "sku": sku,
                "name": text,
                "quantity": st.integers(1, MAX_QUANTITY),
                "unit_price": prices,
            }
        ),
        min_size=1,
        max_size=max_items,
    )


def order_bodies(max_items: int = 20) -> st.SearchStrategy[dict[str, Any]]:
    """Request bodies of `POST /orders` that must be accepted."""
    return st.fixed_dictionaries(
        {
            "customer": st.fixed_dictionaries(
                {
                    "id": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", fullmatch=True),
                    "email": emails,
                    "name": text,
                }
            ),
            "items": line_items(max_items),
            "currency": st.sampled_from(sorted(ISO_4217)),
        },
        optional={"order_id": st.uuids().map(str)},
    )
