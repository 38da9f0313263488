"""Invoking a consumer directly with Lambda's MSK event, as its mapping would, and reading
what it answered: which records it processed and which it did not."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from devstack.msk_event import MAX_PAYLOAD_BYTES, offset_spans, reported_failures

# Room for the event's envelope (eventSource, ARN, bootstrap servers, grouping keys).
ENVELOPE_BYTES = 4096


def batches(
    records: Iterable[dict[str, Any]], batch_size: int, max_bytes: int = MAX_PAYLOAD_BYTES
) -> Iterator[list[dict[str, Any]]]:
    """Consecutive batches of at most `batch_size` records and `max_bytes` of event; a record
    too big for any batch goes alone (Lambda would refuse it, and the summary says so)."""
    batch: list[dict[str, Any]] = []
    size = ENVELOPE_BYTES
    for record in records:
        record_size = len(compact(record)) + 1
        if batch and (len(batch) >= batch_size or size + record_size > max_bytes):
            yield batch
            batch, size = [], ENVELOPE_BYTES
        batch.append(record)
        size += record_size
    if batch:
        yield batch


def compact(document: Any) -> str:
    """JSON as Lambda sends it: no spaces, so a payload measured here is the payload sent."""
    return json.dumps(document, separators=(",", ":"))


@dataclass
class Answer:
    """What one invocation did with its records."""

    ok: bool
    failed: list[tuple[str, int]]  # (topic-partition, offset) of records to try again
    error: str | None = None
    duplicates: int | None = None  # records the function found already done, if it says


@dataclass
class Tally:
    records: int = 0
    invocations: int = 0
    succeeded: int = 0
    failed: int = 0
    duplicates: int | None = None  # None: no answer said
    errors: list[str] = field(default_factory=list)

    def add(self, batch: Sequence[dict[str, Any]], answer: Answer) -> None:
        self.invocations += 1
        self.records += len(batch)
        self.failed += len(answer.failed)
        self.succeeded += len(batch) - len(answer.failed)
        if answer.duplicates is not None:
            self.duplicates = (self.duplicates or 0) + answer.duplicates
        if answer.error:
            self.errors.append(answer.error)

    def lines(self) -> list[str]:
        return [
            f"records      {self.records}",
            f"invocations  {self.invocations}",
            f"succeeded    {self.succeeded}",
            f"failed       {self.failed}",
            f"duplicates   {self.duplicates}  (records the function reported as already done)"
            if self.duplicates is not None
            else "duplicates   not reported by the function",
        ]


def invoke(
    lambda_client: Any,
    function: str,
    records: Sequence[dict[str, Any]],
    event: dict[str, Any] | str,
) -> Answer:
    """Invoke synchronously and read the answer the way the mapping reads it. `event` as text
    goes out unchanged (an on-failure record's payload, exactly as Lambda first sent it)."""
    payload = event if isinstance(event, str) else compact(event)
    try:
        response = lambda_client.invoke(
            FunctionName=function, InvocationType="RequestResponse", Payload=payload
        )
    except Exception as exc:  # throttled, too large, unreachable: nothing was processed
        return Answer(False, _all(records), f"{type(exc).__name__}: {exc}")
    answer_text = response["Payload"].read()
    try:
        answer = json.loads(answer_text) if answer_text else None
    except ValueError:
        answer = None
    if response.get("FunctionError"):
        detail = answer if isinstance(answer, dict) else {}
        message = f"{detail.get('errorType', 'error')}: {str(detail.get('errorMessage'))[:200]}"
        return Answer(False, _all(records), message)
    return read_answer(answer, records)


def read_answer(payload: Any, records: Sequence[dict[str, Any]]) -> Answer:
    """A function's answer: a partial batch response names failed records (each reported
    partition is retried from its lowest reported offset, and a response Lambda cannot read
    fails them all, as the mapping does: `reported_failures`); a summary
    with `archived` and `added` (the archiver's) tells how many were already archived."""
    if not isinstance(payload, dict):
        return Answer(True, [])
    duplicates = None
    if isinstance(payload.get("archived"), int) and isinstance(payload.get("added"), int):
        duplicates = payload["archived"] - payload["added"]
    present = {(f"{r['topic']}-{r['partition']}", r["offset"]) for r in records}
    lowest = reported_failures(payload, present)
    if lowest is None:  # Lambda would take the whole batch as failed
        reason = "unreadable batchItemFailures, or naming a record not in the event"
        return Answer(False, _all(records), reason, duplicates)
    failed = [
        (name, record["offset"])
        for record in records
        if (name := f"{record['topic']}-{record['partition']}") in lowest
        and record["offset"] >= lowest[name]
    ]
    return Answer(
        not failed, failed, f"{len(failed)} records reported failed" if failed else None, duplicates
    )


def _all(records: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(f"{r['topic']}-{r['partition']}", r["offset"]) for r in records]


def spans(records: Iterable[dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    """Each topic-partition's first and last offset and record count."""
    return offset_spans((r["topic"], r["partition"], r["offset"]) for r in records)
