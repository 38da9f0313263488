"""Replay: the archived records of a time range, handed to a consumer again, byte for byte.

The archive is filed by each record's own hour, so a range reads only its hours' objects; each
line is rebuilt into the record Lambda delivered (`orderstream.archive.lambda_record`) and the
records go to the function in offset order, in batches of its mapping's size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from operate.invoking import Tally, batches, invoke, lambda_event, spans

__all__ = [
    "RefusedError",
    "ReplayPlan",
    "Tally",
    "check_memory",
    "now",
    "parse_time",
    "plan",
    "run",
]
from operate.where import Place, PlaceError
from orderstream import settings
from orderstream.archive import TOPICS_DIR, lambda_record, read_lines

ARCHIVE = "ArchiveBucket"
DEFAULT_BATCH_SIZE = 100  # a function without a mapping: Lambda's default for Kafka


class RefusedError(RuntimeError):
    """The replay would do harm; the message says why and how to insist."""


@dataclass
class ReplayPlan:
    objects: list[str]
    records: list[dict[str, Any]]

    def describe(self) -> list[str]:
        lines = [f"objects      {len(self.objects)}", f"records      {len(self.records)}"]
        for name, (first, last, count) in spans(self.records).items():
            lines.append(f"  {name}: offsets {first}..{last} ({count} records)")
        return lines


def hours(since: datetime, until: datetime) -> Iterator[datetime]:
    """Each UTC hour that a record stamped in [since, until) can be filed under."""
    hour = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    while hour < until:
        yield hour
        hour += timedelta(hours=1)


def plan(
    place: Place, topic: str, since: datetime, until: datetime, partition: int | None
) -> ReplayPlan:
    """The archived records of `topic` stamped in [since, until), in partition and offset order."""
    bucket = place.bucket(ARCHIVE)
    since_ms, until_ms = _ms(since), _ms(until)
    objects: list[str] = []
    records: list[dict[str, Any]] = []
    paginator = place.s3.get_paginator("list_objects_v2")
    for hour in hours(since, until):
        prefix = (
            f"{TOPICS_DIR}/{topic}/year={hour.year:04d}/month={hour.month:02d}"
            f"/day={hour.day:02d}/hour={hour.hour:02d}/"
        )
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if partition is not None and f"{topic}+{partition}+" not in key.rsplit("/", 1)[-1]:
                    continue
                body = place.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                chosen = [
                    record
                    for record in (lambda_record(line) for line in read_lines(body))
                    if since_ms <= record["timestamp"] < until_ms
                    and (partition is None or record["partition"] == partition)
                ]
                if chosen:
                    objects.append(key)
                    records += chosen
    records.sort(key=lambda r: (r["topic"], r["partition"], r["offset"]))
    return ReplayPlan(objects, records)


def check_memory(place: Place, target: str, plan: ReplayPlan, now: datetime) -> None:
    """A target that remembers what it did only for a while (IDEMPOTENCY_EXPIRES_SECONDS: the
    email notifier's sent confirmations) would do again what it has forgotten."""
    raw = place.environment(target).get(settings.IDEMPOTENCY_EXPIRES_SECONDS)
    if not raw or not plan.records:
        return
    window = timedelta(seconds=int(raw))
    oldest = min(r["timestamp"] for r in plan.records)
    if oldest < _ms(now - window):
        stamped = datetime.fromtimestamp(oldest / 1000, UTC).isoformat()
        raise RefusedError(
            f"{target} remembers what it did for {int(raw)} s ({window}); the oldest record "
            f"({stamped}) is older than that, so it may do it again (for the email notifier: "
            "mail the customer a second time). Narrow --since, or pass --allow-resend."
        )


def target_mapping(place: Place, target: str) -> tuple[int, str]:
    """The target's mapping's batch size and event source: replays look like its deliveries."""
    mappings = place.mappings(target)
    if not mappings:
        raise PlaceError(f"{target} has no event-source mapping: it does not read the topic")
    mapping = mappings[0]
    return int(mapping.get("BatchSize") or DEFAULT_BATCH_SIZE), str(
        mapping.get("EventSourceArn", "")
    )


def run(
    place: Place,
    target: str,
    plan: ReplayPlan,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Tally:
    batch_size, source = target_mapping(place, target)
    tally = Tally()
    function = place.function(target)
    for batch in batches(plan.records, batch_size):
        event = lambda_event(batch, source, place.bootstrap_servers)
        tally.add(batch, invoke(place.lambda_client, function, batch, event))
        progress(tally.records, len(plan.records))
    return tally


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time (2026-11-30T09:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def now() -> datetime:
    return datetime.fromtimestamp(time.time(), UTC)
