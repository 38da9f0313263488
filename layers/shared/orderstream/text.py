"""Bounded text: reasons and details go into logs, dead letters and archive lines, and one
hostile record must not make any of them unbounded."""

from __future__ import annotations

from typing import Final

#: The longest detail of a failure kept for the logs and the batch's report (an SES answer, a
#: ledger or dead-letter error).
MAX_DETAIL_CHARS: Final = 300


def clip(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its start and "..." in `limit` in all."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
