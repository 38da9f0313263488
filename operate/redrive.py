"""Redrive: what the consumers gave up on, handed to a consumer again after a fix.

Two sources in the dead-letter bucket: the mappings' on-failure records (whole invocations)
and the consumers' dead letters (one record each). An object moves under `redriven/` only once
its records were handled. Why a move is never lost or doubled: docs/design.md, "Redrive".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from devstack.msk_event import lambda_event
from operate.invoking import Tally, batches, invoke, spans
from operate.where import Place, PlaceError
from orderstream import dead_letter

DEAD_LETTERS = "DeadLetterBucket"
FAILURES_PREFIX = "aws/lambda/"
REDRIVEN_PREFIX = "redriven/"
REDRIVEN_VERSION = "redriven-version"  # object metadata on the copy
SERVICE_NAME = "POWERTOOLS_SERVICE_NAME"

Source = Literal["failures", "dead-letters"]


@dataclass
class Item:
    """One object to redrive: its records, as an event for one function."""

    key: str
    version: str | None  # the S3 version redriven (the bucket is versioned)
    modified: Any  # its LastModified
    target: str  # logical id
    records: list[dict[str, Any]]
    payload: str | None = None  # an on-failure record's invocation, as Lambda sent it
    finish_only: bool = False  # copied under redriven/ by an interrupted run: delete only


@dataclass
class RedrivePlan:
    source: Source
    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, why)

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for item in self.items if not item.finish_only for r in item.records]

    def describe(self) -> list[str]:
        lines = [f"objects      {len(self.items)}", f"records      {len(self.records)}"]
        for item in self.items:
            if item.finish_only:
                lines.append(f"  {item.key}: already redriven, its move is finished")
                continue
            where = ", ".join(
                f"{name}@{first}..{last}" for name, (first, last, _) in spans(item.records).items()
            )
            lines.append(f"  {item.key} -> {item.target} ({len(item.records)} records: {where})")
        for key, why in self.skipped:
            lines.append(f"  skipped {key}: {why}")
        return lines


def plan(place: Place, source: Source, target: str | None) -> RedrivePlan:
    bucket = place.bucket(DEAD_LETTERS)
    prefix = FAILURES_PREFIX if source == "failures" else f"{dead_letter.PREFIX}/"
    if target is not None:
        place.function(target)  # an unknown target is bad usage, before anything is read
    result = RedrivePlan(source, [])
    paginator = place.s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for listed in page.get("Contents", []):
            key = listed["Key"]
            try:
                obtained = place.s3.get_object(Bucket=bucket, Key=key)
                document = json.loads(obtained["Body"].read())
                version = obtained.get("VersionId")
                if source == "failures":
                    item = _failure(place, key, document, target)
                else:
                    item = _dead_letter(place, key, document, target)
            except (PlaceError, ValueError, KeyError, TypeError) as exc:
                result.skipped.append((key, str(exc)))
                continue
            item.version, item.modified = version, obtained.get("LastModified")
            item.finish_only = _copied_already(place, bucket, item)
            result.items.append(item)
    return result


def _failure(place: Place, key: str, document: dict[str, Any], target: str | None) -> Item:
    payload = document.get("payload")
    event = json.loads(payload) if isinstance(payload, str) else payload
    if not isinstance(event, dict) or not isinstance(event.get("records"), dict):
        raise PlaceError("no invocation payload to redrive (is it an S3 on-failure record?)")
    arn = str(document.get("requestContext", {}).get("functionArn", ""))
    logical_id = target or place.logical_id_of(arn)
    if logical_id is None:
        raise PlaceError(f"function {arn!r} is not in {place.description}; pass --target")
    records = [r for group in event["records"].values() for r in group]
    text = payload if isinstance(payload, str) else json.dumps(event, separators=(",", ":"))
    return Item(key, None, None, logical_id, records, payload=text)


def _dead_letter(place: Place, key: str, document: dict[str, Any], target: str | None) -> Item:
    record = dead_letter.lambda_record(document)
    consumer = str(document.get("consumer", ""))
    logical_id = target or _consumer_function(place, consumer)
    if logical_id is None:
        raise PlaceError(f"no function of {place.description} is consumer {consumer!r}")
    return Item(key, None, None, logical_id, [record])


def _consumer_function(place: Place, consumer: str) -> str | None:
    for logical_id in place.consumers():
        if place.environment(logical_id).get(SERVICE_NAME) == consumer:
            return logical_id
    return None


def _copied_already(place: Place, bucket: str, item: Item) -> bool:
    """A copy of this very version under redriven/: the last run stopped before the delete."""
    if item.version is None:
        return False
    try:
        head = place.s3.head_object(Bucket=bucket, Key=REDRIVEN_PREFIX + item.key)
    except ClientError:
        return False
    return bool(head.get("Metadata", {}).get(REDRIVEN_VERSION) == item.version)


def run(
    place: Place,
    plan: RedrivePlan,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Tally:
    bucket = place.bucket(DEAD_LETTERS)
    tally = Tally()
    total = len(plan.records)
    for key, why in plan.skipped:
        tally.errors.append(f"{key}: skipped: {why}")
        tally.failed += 1
    for item in [i for i in plan.items if i.finish_only]:
        try:
            _remove(place, bucket, item)
        except (BotoCoreError, ClientError) as exc:
            tally.errors.append(f"{item.key}: {type(exc).__name__}: {exc}")
            tally.failed += 1
    for group in _invocations(place, [i for i in plan.items if not i.finish_only]):
        _redrive(place, bucket, plan.source, group, tally)
        progress(tally.records, total)
    return tally


def _invocations(place: Place, items: list[Item]) -> Iterator[list[Item]]:
    """An on-failure record is one invocation, as it failed; dead letters for one consumer go
    together, in batches of its mapping's size under Lambda's payload cap."""
    by_target: dict[str, list[Item]] = {}
    for item in items:
        if item.payload is not None:
            yield [item]
        else:
            by_target.setdefault(item.target, []).append(item)
    for target, letters in by_target.items():
        size, _ = place.delivery(target) or (1, "")
        of_record = {id(item.records[0]): item for item in letters}
        for batch in batches([item.records[0] for item in letters], size):
            yield [of_record[id(record)] for record in batch]


def _redrive(place: Place, bucket: str, source: Source, group: list[Item], tally: Tally) -> None:
    """One invocation for the group; then each object moves if its records went through."""
    target = group[0].target
    records = [r for item in group for r in item.records]
    event: dict[str, Any] | str
    if group[0].payload is not None:
        event = group[0].payload
    else:
        _, arn = place.delivery(target) or (1, "")
        event = lambda_event(records, arn, place.bootstrap_servers)
    answer = invoke(place.lambda_client, place.function(target), records, event)
    failed = set(answer.failed)
    for item in group:
        mine = [(f"{r['topic']}-{r['partition']}", r["offset"]) for r in item.records]
        if any(ref in failed for ref in mine):
            continue
        try:
            if source == "dead-letters" and _rewritten(place, bucket, item):
                answer.failed += mine
                tally.errors.append(f"{item.key}: the consumer dead-lettered it again")
                continue
            _move(place, bucket, item)
        except (BotoCoreError, ClientError) as exc:
            answer.failed += mine
            tally.errors.append(f"{item.key}: {type(exc).__name__}: {exc}")
    tally.add(records, answer)


def _rewritten(place: Place, bucket: str, item: Item) -> bool:
    """Whether the consumer wrote the dead letter again while handling it."""
    head = place.s3.head_object(Bucket=bucket, Key=item.key)
    return (head.get("VersionId"), head.get("LastModified")) != (item.version, item.modified)


def _move(place: Place, bucket: str, item: Item) -> None:
    """Under redriven/, the version that was redriven (and which one); then off its prefix."""
    source: dict[str, str] = {"Bucket": bucket, "Key": item.key}
    metadata: dict[str, str] = {}
    if item.version:
        source["VersionId"] = item.version
        metadata[REDRIVEN_VERSION] = item.version
    place.s3.copy_object(
        Bucket=bucket,
        Key=REDRIVEN_PREFIX + item.key,
        CopySource=source,
        Metadata=metadata,
        MetadataDirective="REPLACE",
    )
    _remove(place, bucket, item)


def _remove(place: Place, bucket: str, item: Item) -> None:
    """Hide the object under a delete marker, unless a newer version (a failure written again
    meanwhile) would be hidden with it: then the marker goes and that version stays current."""
    marker = place.s3.delete_object(Bucket=bucket, Key=item.key).get("VersionId")
    if not marker or not item.version:
        return
    # S3 lists a key's versions most recently stored first: one before the redriven one was
    # stored after it (timestamps, to the second, cannot tell).
    listed = place.s3.list_object_versions(Bucket=bucket, Prefix=item.key)
    versions = [v["VersionId"] for v in listed.get("Versions", []) if v["Key"] == item.key]
    if versions and versions[0] != item.version:
        place.s3.delete_object(Bucket=bucket, Key=item.key, VersionId=marker)
