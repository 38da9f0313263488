"""Customer e-mail addresses never reach the logs: every function logs through this."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_EMAIL = re.compile(r"[^\s@\"'<>()\[\],;:\\]+@([^\s@\"'<>()\[\],;:\\]+)")


def mask_emails(value: Any) -> Any:
    """Replace every e-mail address's local part with *** in anything about to be logged."""
    if isinstance(value, str):
        return _EMAIL.sub(r"***@\1", value)
    if isinstance(value, Mapping):
        return {mask_emails(k): mask_emails(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [mask_emails(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return mask_emails(str(value))  # what json.dumps(default=str) would write, masked


def masked_log_line(record: Mapping[str, Any]) -> str:
    """A Powertools Logger `json_serializer` that masks addresses anywhere in the record."""
    return json.dumps(mask_emails(record), separators=(",", ":"))
