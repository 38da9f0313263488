"""The last invocations of each function, as the local stack made them: what the console shows.

The mapping emulator writes one entry per invocation with its own reading of the answer (a
response it cannot read fails the whole batch); the API and Lambda's Invoke API write theirs.
One entry also makes the mapping's log line, so the console and the log never disagree.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from devstack.functions import Invocation
from devstack.msk_event import offset_spans

Outcome = Literal["ok", "partial failure", "error"]
DEFAULT_KEPT = 50  # entries kept per function


@dataclass(frozen=True)
class Entry:
    function: str  # logical id
    source: str  # "mapping MskEvent", "api POST /orders", "invoke"
    started: float  # epoch seconds
    duration_ms: float  # as the caller waited: a cold start's init included
    outcome: Outcome
    detail: str  # the error, the failures reported, the HTTP status
    records: int | None = None  # None: not a batch of Kafka records
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # topic-partition -> offsets
    attempt: int = 0  # the mapping's retry number

    @property
    def where(self) -> str:
        """Each topic-partition's offsets: "order-placed-1@4..7 order-placed-3@0..0"."""
        return " ".join(f"{p}@{first}..{last}" for p, (first, last) in sorted(self.spans.items()))

    def describe(self) -> str:
        """The mapping emulator's log line for this invocation."""
        retry = f" retry {self.attempt}" if self.attempt else ""
        outcome = "ok" if self.outcome == "ok" else self.detail
        took = f"{self.duration_ms:7.0f} ms"
        return f"{self.records or 0:>5} records {self.where} {took}{retry} {outcome}"


def error_detail(result: Invocation) -> str:
    error = result.error or {}
    return f"error {error.get('errorType')}: {str(error.get('errorMessage'))[:120]}"


def batch_entry(
    function: str,
    source: str,
    positions: Sequence[tuple[str, int, int]],
    result: Invocation,
    started: float,
    failed: int,
    attempt: int = 0,
    unreadable: bool = False,
) -> Entry:
    """An invocation with Kafka records; `failed` is how many of them are to be retried, and
    `unreadable` that the function answered in a shape the mapping cannot read."""
    if not result.ok:
        outcome: Outcome = "error"
        detail = error_detail(result)
    elif unreadable:
        outcome = "error"
        detail = "error: response unreadable, the whole batch fails"
    elif failed:
        outcome, detail = "partial failure", f"{failed} item failures reported"
    else:
        outcome, detail = "ok", ""
    return Entry(
        function,
        source,
        started,
        result.duration_ms,
        outcome,
        detail,
        records=len(positions),
        spans={name: (first, last) for name, (first, last, _) in offset_spans(positions).items()},
        attempt=attempt,
    )


def call_entry(function: str, source: str, event: Any, result: Invocation, started: float) -> Entry:
    """An invocation by the API or by Lambda's Invoke API (a replay or a redrive, say)."""
    records = _msk_positions(event)
    if records is not None:
        failures = _reported_failures(result.payload) if result.ok else 0
        return batch_entry(function, source, records, result, started, failures)
    if not result.ok:
        return Entry(function, source, started, result.duration_ms, "error", error_detail(result))
    status = result.payload.get("statusCode") if isinstance(result.payload, Mapping) else None
    detail = f"HTTP {status}" if status is not None else ""
    outcome: Outcome = "error" if isinstance(status, int) and status >= 500 else "ok"
    return Entry(function, source, started, result.duration_ms, outcome, detail)


def _msk_positions(event: Any) -> list[tuple[str, int, int]] | None:
    """The (topic, partition, offset) of each record of an MSK event; None for other events.
    A record without whole-number positions is left out: the journal describes, it does not
    judge the event."""
    if not isinstance(event, Mapping) or event.get("eventSource") != "aws:kafka":
        return None
    batches = event.get("records")
    positions = []
    for batch in batches.values() if isinstance(batches, Mapping) else []:
        for record in batch if isinstance(batch, list) else []:
            if not isinstance(record, Mapping):
                continue
            partition, offset = record.get("partition"), record.get("offset")
            if isinstance(partition, int) and isinstance(offset, int):
                positions.append((str(record.get("topic")), partition, offset))
    return positions


def _reported_failures(payload: Any) -> int:
    failures = payload.get("batchItemFailures") if isinstance(payload, Mapping) else None
    return len(failures) if isinstance(failures, list) else 0


class Journal:
    """Thread-safe: the mappings' pollers, the API and the console all reach it."""

    def __init__(self, kept: int = DEFAULT_KEPT) -> None:
        self._kept = kept
        self._lock = threading.Lock()
        self._entries: dict[str, deque[Entry]] = {}

    def add(self, entry: Entry) -> None:
        with self._lock:
            self._entries.setdefault(entry.function, deque(maxlen=self._kept)).append(entry)

    def latest(self, function: str, count: int) -> list[Entry]:
        """Newest first."""
        with self._lock:
            entries = list(self._entries.get(function, ()))
        return entries[::-1][:count]

    def recording(
        self, function: str, source: str, invoke: Callable[[Any], Invocation]
    ) -> Callable[[Any], Invocation]:
        """`invoke`, with each call written down."""

        def call(event: Any) -> Invocation:
            started = time.time()
            result = invoke(event)
            # An event of a shape the journal cannot read: the caller's answer matters more
            # than the console's row.
            with contextlib.suppress(Exception):
                self.add(call_entry(function, source, event, result, started))
            return result

        return call
