"""Bounded text: reasons and details go into logs, dead letters and archive lines, and one
hostile record must not make any of them unbounded."""

from __future__ import annotations


def clip(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its start and "..." in `limit` in all."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
