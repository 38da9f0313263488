"""Replay: the archived records of a time range, handed to a consumer again, byte for byte.

The archive is filed by each record's own hour, so a range reads only its hours' objects; each
line is rebuilt into the record Lambda delivered (`orderstream.archive.lambda_record`) and the
records go to the function in offset order, in batches of its mapping's size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from devstack.msk_event import lambda_event
from operate.invoking import Tally, batches, invoke
from operate.where import Place, PlaceError
from orderstream import settings
from orderstream.archive import (
    Years,
    hour_prefix,
    lambda_record,
    line_facts,
    object_partition_and_block,
    read_lines,
)

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

ARCHIVE = "ArchiveBucket"
ARCHIVER = "S3ArchiverFunction"
MEMORY_MARGIN = timedelta(hours=1)


class RefusedError(RuntimeError):
    """The replay would do harm; the message says why and how to insist."""


@dataclass
class ReplayPlan:
    """What a replay covers: the objects to read, hour by hour, and what they hold in range.

    Records are not kept: a run reads the objects again and sends them as it goes, so memory
    holds a batch and an object however long the range (the price: each object is read twice).
    """

    bucket: str
    since_ms: int
    until_ms: int
    partition: int | None
    include_poison: bool
    hours: list[list[str]] = field(default_factory=list)  # object keys, by hour
    records: int = 0
    poison_left_out: int = 0
    oldest_ms: int | None = None
    offsets: dict[str, list[int]] = field(default_factory=dict)  # name -> first, last, count

    @property
    def objects(self) -> list[str]:
        return [key for keys in self.hours for key in keys]

    def describe(self) -> list[str]:
        lines = [f"objects      {len(self.objects)}", f"records      {self.records}"]
        if self.poison_left_out:
            lines.append(
                f"poison       {self.poison_left_out} left out: the target would dead-letter them "
                "again (--include-poison sends them)"
            )
        for name, (first, last, count) in sorted(self.offsets.items()):
            lines.append(f"  {name}: offsets {first}..{last} ({count} records)")
        return lines

    def chosen(self, key: str, body: bytes) -> tuple[list[dict[str, Any]], int]:
        """An object's records in range, as Lambda delivered them, and its poison left out."""
        records: list[dict[str, Any]] = []
        poison = 0
        for line in read_lines(body):
            record = lambda_record(line)
            if not self.since_ms <= record["timestamp"] < self.until_ms:
                continue
            if self.partition is not None and record["partition"] != self.partition:
                continue
            if not self.include_poison and line_facts(key, line)[1]:
                poison += 1
                continue
            records.append(record)
        return records, poison

    def count(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.records += 1
            stamp = record["timestamp"]
            self.oldest_ms = stamp if self.oldest_ms is None else min(self.oldest_ms, stamp)
            name = f"{record['topic']}-{record['partition']}"
            first, last, count = self.offsets.get(name, [record["offset"], record["offset"], 0])
            self.offsets[name] = [
                min(first, record["offset"]),
                max(last, record["offset"]),
                count + 1,
            ]


def hours(since: datetime, until: datetime, years: Years) -> list[datetime]:
    """Each UTC hour a record stamped in [since, until) can be filed under: its own hour inside
    the archive's years, or the edge hour where a record stamped outside them is filed."""
    first = datetime(years.first, 1, 1, tzinfo=UTC)
    last = datetime(years.last, 12, 31, 23, tzinfo=UTC)
    found = {first} if since < first else set()
    hour = max(since.astimezone(UTC), first).replace(minute=0, second=0, microsecond=0)
    while hour < until and hour <= last:
        found.add(hour)
        hour += timedelta(hours=1)
    if until > last + timedelta(hours=1):
        found.add(last)
    return sorted(found)


def plan(
    place: Place,
    topic: str,
    since: datetime,
    until: datetime,
    partition: int | None,
    include_poison: bool = True,
) -> ReplayPlan:
    """The archived records of `topic` stamped in [since, until), surveyed: without
    `include_poison`, records the archive keeps as poison are counted, not sent."""
    bucket = place.bucket(ARCHIVE)
    years = Years.parse(place.environment(ARCHIVER).get(settings.ARCHIVE_YEARS) or "")
    result = ReplayPlan(bucket, _ms(since), _ms(until), partition, include_poison)
    paginator = place.s3.get_paginator("list_objects_v2")
    for hour in hours(since, until, years):
        keys: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=hour_prefix(topic, hour)):
            for item in page.get("Contents", []):
                key = item["Key"]
                if partition is not None and object_partition_and_block(key)[0] != partition:
                    continue
                records, poison = result.chosen(key, _read(place, bucket, key))
                result.poison_left_out += poison
                if records:
                    keys.append(key)
                    result.count(records)
        if keys:
            result.hours.append(keys)
    return result


def prepare(
    place: Place,
    target: str,
    topic: str,
    since: datetime,
    until: datetime,
    partition: int | None = None,
    include_poison: bool = False,
    allow_resend: bool = False,
) -> ReplayPlan:
    """The plan a replay runs, after every check that can refuse it (the command line and the
    local console ask the same questions): raises ValueError, PlaceError or RefusedError."""
    if until <= since:
        raise ValueError("--until must come after --since")
    place.function(target)
    include_poison = include_poison or not dead_letters_poison(place, target)
    surveyed = plan(place, topic, since, until, partition, include_poison)
    if not allow_resend:
        check_memory(place, target, surveyed, now())
    return surveyed


def _read(place: Place, bucket: str, key: str) -> bytes:
    body: bytes = place.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def check_memory(place: Place, target: str, plan: ReplayPlan, now: datetime) -> None:
    """A target that remembers what it did only for a while (IDEMPOTENCY_EXPIRES_SECONDS: the
    email notifier's sent confirmations) would do again what it has forgotten."""
    raw = place.environment(target).get(settings.IDEMPOTENCY_EXPIRES_SECONDS)
    if not raw or plan.oldest_ms is None:
        return
    window = timedelta(seconds=int(raw))
    oldest = plan.oldest_ms
    # A margin for the replay's own duration and producer clocks a little ahead.
    if oldest < _ms(now - window + MEMORY_MARGIN):
        stamped = datetime.fromtimestamp(oldest / 1000, UTC).isoformat()
        raise RefusedError(
            f"{target} remembers what it did for {int(raw)} s ({window}); the oldest record "
            f"({stamped}) is older than that, so it may do it again (for the email notifier: "
            "mail the customer a second time). Narrow --since, or pass --allow-resend."
        )


def target_mapping(place: Place, target: str) -> tuple[int, str]:
    """The target's mapping's batch size and event source: replays look like its deliveries."""
    delivery = place.delivery(target)
    if delivery is None:
        raise PlaceError(f"{target} has no event-source mapping: it does not read the topic")
    return delivery


def run(
    place: Place,
    target: str,
    plan: ReplayPlan,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Tally:
    """The records in the mapping's batches, read object by object: memory holds one batch
    and one object however long the range."""
    batch_size, source = target_mapping(place, target)
    tally = Tally()
    function = place.function(target)
    for batch in batches(_stream(place, plan), batch_size):
        event = lambda_event(batch, source, place.bootstrap_servers)
        tally.add(batch, invoke(place.lambda_client, function, batch, event))
        progress(tally.records, plan.records)
    return tally


def _stream(place: Place, plan: ReplayPlan) -> Iterator[dict[str, Any]]:
    """Hour by hour; in an hour, partition by partition in offset order (an object is one
    partition's block of offsets). Across hours a partition's offsets follow its records'
    timestamps, which a producer's clock may not keep in offset order: the consumers are
    idempotent and do not depend on it."""
    for keys in plan.hours:
        for key in sorted(keys, key=object_partition_and_block):
            records = plan.chosen(key, _read(place, plan.bucket, key))[0]
            yield from sorted(records, key=lambda r: r["offset"])


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


def dead_letters_poison(place: Place, target: str) -> bool:
    """A consumer that writes what it cannot use to the dead-letter bucket."""
    return bool(place.environment(target).get(settings.DEAD_LETTER_BUCKET))
