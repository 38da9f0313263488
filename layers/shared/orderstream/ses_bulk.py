"""SES's SendBulkTemplatedEmail on the wire: the request for a set of confirmations, and
SES's per-destination answers read as deliveries (sent, or failed for now or for good)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from orderstream.email_content import Confirmation
from orderstream.text import MAX_DETAIL_CHARS, clip

#: SendBulkTemplatedEmail's limit of destinations per call.
MAX_DESTINATIONS_PER_CALL: Final = 50

# Per-destination statuses that a retry cannot fix: the record goes to the dead letters instead
# of blocking its partition. Every other status (throttling, paused sending, a missing template,
# "Failed") is about the account or the moment, so the order is retried.
PERMANENT_SES_STATUSES: Final = frozenset({"MessageRejected", "InvalidParameterValue"})


def bulk_request(
    confirmations: Sequence[Confirmation], *, sender: str, template: str
) -> dict[str, Any]:
    """SendBulkTemplatedEmail's arguments: one destination per confirmation, in order."""
    if not 1 <= len(confirmations) <= MAX_DESTINATIONS_PER_CALL:
        raise ValueError(
            f"a bulk send takes 1 to {MAX_DESTINATIONS_PER_CALL} destinations, "
            f"not {len(confirmations)}"
        )
    return {
        "Source": sender,
        "Template": template,
        # Required by the API; every destination brings all of its own data.
        "DefaultTemplateData": "{}",
        "Destinations": [
            {
                "Destination": {"ToAddresses": [c.recipient]},
                "ReplacementTemplateData": json.dumps(c.data, separators=(",", ":")),
            }
            for c in confirmations
        ],
    }


@dataclass(frozen=True, slots=True)
class Delivery:
    """SES's answer for one destination of a bulk call."""

    message_id: str | None = None
    error: str | None = None
    retryable: bool = True

    @property
    def sent(self) -> bool:
        return self.error is None


def deliveries(statuses: Sequence[Mapping[str, Any]]) -> list[Delivery]:
    """SendBulkTemplatedEmail's `Status` list, one entry per destination in request order."""
    answers = []
    for status in statuses:
        code = status.get("Status")
        message_id = status.get("MessageId")
        # SES always says "Success"; moto only gives the MessageId. Either means accepted.
        if code == "Success" or (code is None and message_id):
            answers.append(Delivery(message_id=message_id or ""))
        else:
            error = clip(
                f"{code or 'no status'}: {status.get('Error') or 'no detail'}", MAX_DETAIL_CHARS
            )
            answers.append(Delivery(error=error, retryable=code not in PERMANENT_SES_STATUSES))
    return answers
