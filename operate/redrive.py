"""Redrive: what the consumers gave up on, handed to a consumer again after a fix.

Two sources in the dead-letter bucket:
- `failures`: the mappings' on-failure records (`aws/lambda/<mapping uuid>/...`), each a whole
  invocation (its `payload`) that exhausted its retries; it goes back to the function named in
  its `requestContext.functionArn`, or to --target.
- `dead-letters`: a consumer's poison records (`dead-letters/<consumer>/...`), each one record
  it could not use; it goes back to that consumer (the function whose POWERTOOLS_SERVICE_NAME
  is the consumer's name), or to --target.

An object is moved under `redriven/` only once the invocation succeeded for its records: no
failure reported, and for a dead letter, no new version of it (a consumer that still cannot
use the record writes its dead letter again). A second run finds nothing to redrive twice. The
dead-letter alarm counts arrivals under `dead-letters/` and `aws/lambda/` only, so a move is
not taken for a new failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from operate.invoking import Tally, invoke, lambda_event, spans
from operate.where import Place, PlaceError
from orderstream import dead_letter

DEAD_LETTERS = "DeadLetterBucket"
FAILURES_PREFIX = "aws/lambda/"
REDRIVEN_PREFIX = "redriven/"
SERVICE_NAME = "POWERTOOLS_SERVICE_NAME"

Source = Literal["failures", "dead-letters"]


@dataclass
class Item:
    """One object to redrive: its records, as an event for one function."""

    key: str
    version: str | None  # the S3 version redriven (the bucket is versioned)
    stamp: str  # what tells a rewrite apart: the version, else the last-modified time
    target: str  # logical id
    records: list[dict[str, Any]]
    event: dict[str, Any] = field(default_factory=dict)


@dataclass
class RedrivePlan:
    source: Source
    items: list[Item]

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for item in self.items for r in item.records]

    def describe(self) -> list[str]:
        lines = [f"objects      {len(self.items)}", f"records      {len(self.records)}"]
        for item in self.items:
            where = ", ".join(
                f"{name}@{first}..{last}" for name, (first, last, _) in spans(item.records).items()
            )
            lines.append(f"  {item.key} -> {item.target} ({len(item.records)} records: {where})")
        return lines


def plan(place: Place, source: Source, target: str | None) -> RedrivePlan:
    bucket = place.bucket(DEAD_LETTERS)
    prefix = FAILURES_PREFIX if source == "failures" else f"{dead_letter.PREFIX}/"
    if target is not None:
        place.function(target)  # an unknown target is bad usage, before anything is read
    items: list[Item] = []
    paginator = place.s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for listed in page.get("Contents", []):
            head = place.s3.get_object(Bucket=bucket, Key=listed["Key"])
            document = json.loads(head["Body"].read())
            version = head.get("VersionId")
            stamp = _stamp(head)
            if source == "failures":
                items.append(_failure(place, listed["Key"], version, stamp, document, target))
            else:
                items.append(_dead_letter(place, listed["Key"], version, stamp, document, target))
    return RedrivePlan(source, items)


def _stamp(head: dict[str, Any]) -> str:
    return str(head.get("VersionId") or head.get("LastModified"))


def _failure(
    place: Place,
    key: str,
    version: str | None,
    stamp: str,
    document: dict[str, Any],
    target: str | None,
) -> Item:
    payload = document.get("payload")
    event = json.loads(payload) if isinstance(payload, str) else payload
    if not isinstance(event, dict) or not isinstance(event.get("records"), dict):
        raise PlaceError(
            f"{key}: no invocation payload to redrive (is it an S3 on-failure record?)"
        )
    arn = str(document.get("requestContext", {}).get("functionArn", ""))
    logical_id = target or place.logical_id_of(arn)
    if logical_id is None:
        raise PlaceError(f"{key}: function {arn!r} is not in {place.description}; pass --target")
    records = [r for group in event["records"].values() for r in group]
    return Item(key, version, stamp, logical_id, records, event)


def _dead_letter(
    place: Place,
    key: str,
    version: str | None,
    stamp: str,
    document: dict[str, Any],
    target: str | None,
) -> Item:
    record = dead_letter.lambda_record(document)
    logical_id = target or _consumer_function(place, str(document.get("consumer", "")))
    if logical_id is None:
        raise PlaceError(
            f"{key}: no function of {place.description} is consumer {document.get('consumer')!r}"
            "; pass --target"
        )
    return Item(key, version, stamp, logical_id, [record])


def _consumer_function(place: Place, consumer: str) -> str | None:
    for logical_id in place.functions:
        if place.environment(logical_id).get(SERVICE_NAME) == consumer:
            return logical_id
    return None


def run(
    place: Place,
    plan: RedrivePlan,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Tally:
    bucket = place.bucket(DEAD_LETTERS)
    tally = Tally()
    total = len(plan.records)
    sources: dict[str, str] = {}
    for item in plan.items:
        event = item.event
        if not event:
            if item.target not in sources:
                mappings = place.mappings(item.target)
                sources[item.target] = (
                    str(mappings[0].get("EventSourceArn", "")) if mappings else ""
                )
            event = lambda_event(item.records, sources[item.target], place.bootstrap_servers)
        answer = invoke(place.lambda_client, place.function(item.target), item.records, event)
        if answer.ok and plan.source == "dead-letters" and _rewritten(place, bucket, item):
            answer.ok = False
            answer.failed = [(f"{r['topic']}-{r['partition']}", r["offset"]) for r in item.records]
            answer.error = f"{item.key}: the consumer dead-lettered it again"
        tally.add(item.records, answer)
        if answer.ok:
            _move(place, bucket, item)
        progress(tally.records, total)
    return tally


def _rewritten(place: Place, bucket: str, item: Item) -> bool:
    """Whether the consumer wrote the dead letter again while handling it."""
    return _stamp(place.s3.head_object(Bucket=bucket, Key=item.key)) != item.stamp


def _move(place: Place, bucket: str, item: Item) -> None:
    """Under redriven/, the version that was redriven; then off the source prefix."""
    source: dict[str, str] = {"Bucket": bucket, "Key": item.key}
    if item.version:
        source["VersionId"] = item.version
    place.s3.copy_object(Bucket=bucket, Key=REDRIVEN_PREFIX + item.key, CopySource=source)
    place.s3.delete_object(Bucket=bucket, Key=item.key)
