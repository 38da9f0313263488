"""How much the S3 archiver costs over the least any archiver must do.

Times `archive_batch` (Powertools decoding, one JSON line per record, gzip per partition, an
in-memory store) on a batch of 1 KB `order-placed` records in Lambda's MSK event shape, against
a bare base64-decode + gzip of the same values measured in the same run, and prints both and
their ratio (medians over repeats, the two interleaved so machine noise hits both alike).
Also reports the peak memory `archive_batch` allocates beyond the event it is given.

    .venv/bin/python bench/archiver.py [--records 10000] [--partitions 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import statistics
import time
import tracemalloc
from collections.abc import Callable, Mapping
from typing import Any, Final

from aws_lambda_powertools.utilities.kafka import ConsumerRecords

from bench._common import CLUSTER_ARN, PartResult, Row, progress
from devstack.msk_event import msk_event, sample_order_records
from orderstream.archive import COMPRESS_LEVEL, StoredObject, Years, archive_batch
from orderstream.events import ORDER_EVENTS

YEARS = Years(2024, 2099)


class MemoryStore:
    """An empty bucket: every object is new, as for a first delivery."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def get(self, key: str) -> StoredObject | None:
        body = self.objects.get(key)
        return None if body is None else StoredObject(body, str(len(body)))

    def put(
        self, key: str, body: bytes, metadata: Mapping[str, str], *, replaces: str | None
    ) -> None:
        self.objects[key] = body


def archive(event: dict[str, Any]) -> int:
    store = MemoryStore()
    archive_batch(
        ConsumerRecords(event, schema_config=ORDER_EVENTS).records, store=store, years=YEARS
    )
    return sum(map(len, store.objects.values()))


def bare_decode_and_gzip(event: dict[str, Any]) -> int:
    """The floor: each value base64-decoded into its partition's gzip stream, nothing else."""
    size = 0
    for group in event["records"].values():
        buffer = io.BytesIO()
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=buffer, compresslevel=COMPRESS_LEVEL, mtime=0
        ) as stream:
            for record in group:
                stream.write(base64.b64decode(record["value"]))
                stream.write(b"\n")
        size += len(buffer.getvalue())
    return size


def timed(run: Callable[[dict[str, Any]], int], event: dict[str, Any]) -> tuple[float, int]:
    started = time.perf_counter()
    size = run(event)
    return time.perf_counter() - started, size


PART_RECORDS: Final = 10_000
PART_REPEATS: Final = 5


def part(result: PartResult, quick: bool) -> None:
    records_count = PART_RECORDS // 10 if quick else PART_RECORDS
    records = sample_order_records(records_count, 4)
    event = msk_event(records, CLUSTER_ARN, "b-1.example:9098")
    value_bytes = sum(len(r.value or b"") for r in records)
    progress(f"archiver: {records_count:,} records, {PART_REPEATS} repeats")
    archive(event)  # warm-up: imports, deserializer cache
    archive_s, bare_s = [], []
    for _ in range(PART_REPEATS):
        archive_s.append(timed(archive, event)[0])
        bare_s.append(timed(bare_decode_and_gzip, event)[0])
    result.rows.append(
        Row(
            f"archiver: {records_count:,} x {value_bytes / records_count / 1000:.0f} KB batch",
            statistics.median(archive_s) * 1000,
            statistics.median(bare_s) * 1000,
            "ms",
        )
    )
    steps = ", ".join(f"{name} {us:.1f}" for name, us in step_costs(event).items())
    big, records_6mb, event_mb = six_mb_event()
    peak_mb = peak_allocation(big) / 1e6
    result.notes.append(
        f"archiver: bench/archiver.py's measurement, median of {PART_REPEATS}: "
        "archive_batch (Powertools decoding, JSON lines, gzip per partition, in-memory store) "
        "vs base64-decode + gzip of the same values. Where a record's time goes (us per "
        f"record, each step alone): {steps}. Peak memory on a batch at Lambda's 6 MB payload "
        f"limit ({records_6mb:,} records, a {event_mb:.2f} MB event, 6 MiB at most): "
        f"archive_batch allocates {peak_mb:.1f} MB beyond the event (tracemalloc)."
    )


def step_costs(event: dict[str, Any], count: int = 2000) -> dict[str, float]:
    """Microseconds per record of each step of an archive line, timed alone on the batch."""
    import json

    from orderstream import archive as steps
    from orderstream.dead_letter import original_value
    from orderstream.events import OrderPlaced
    from orderstream.plain_events import plainly_valid

    records = list(ConsumerRecords(event, schema_config=ORDER_EVENTS).records)[:count]
    values = [v for v in map(original_value, records) if v is not None]
    raws = [base64.b64decode(v) for v in values]
    gzip_input = b"".join(r + b"\n" for r in raws)
    timings = {
        "base64-decode": lambda: [base64.b64decode(v, validate=True) for v in values],
        "gzip": lambda: gzip.compress(gzip_input, compresslevel=COMPRESS_LEVEL, mtime=0),
        "json.loads alone, the least any check of the JSON costs": lambda: [
            json.loads(r) for r in raws
        ],
        "plain_events.plainly_valid, which decides our events": lambda: [
            plainly_valid(r.decode()) for r in raws
        ],
        "strict JSON + OrderPlaced validation, for other producers' records": lambda: [
            OrderPlaced.model_validate(
                json.loads(
                    r,
                    object_pairs_hook=steps._object_without_repeats,
                    parse_constant=steps._refuse_constant,
                    parse_float=steps._finite_float,
                )
            )
            for r in raws
        ],
        "key and headers": lambda: [
            (list(steps._header_fields(r.original_headers)), steps._key(r.original_key))
            for r in records
        ],
        "archive_line, all of it": lambda: [steps.archive_line(r) for r in records],
    }
    costs = {}
    for name, run in timings.items():
        best = min(timed_call(run) for _ in range(3))
        costs[name] = best / len(records) * 1e6
    return costs


def timed_call(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def six_mb_event() -> tuple[dict[str, Any], int, float]:
    """The largest batch of sample records whose event fits Lambda's 6 MB payload."""
    import json

    count = 4000
    while True:
        event = msk_event(sample_order_records(count, 4), CLUSTER_ARN, "b-1.example:9098")
        size = len(json.dumps(event))
        if size <= 6 * 1024 * 1024 or count <= 100:
            return event, count, size / 1e6
        count -= 100


def peak_allocation(event: dict[str, Any]) -> int:
    tracemalloc.start()
    try:
        archive(event)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    records = sample_order_records(args.records, args.partitions)
    event = msk_event(records, CLUSTER_ARN, "b-1.example:9098")
    value_bytes = sum(len(r.value or b"") for r in records)
    payload = sum(
        len(r["value"]) + len(r.get("key", "")) for g in event["records"].values() for r in g
    )

    archive_times, bare_times = [], []
    archive(event)  # warm-up: imports, deserializer cache
    for _ in range(args.repeats):
        seconds, archive_size = timed(archive, event)
        archive_times.append(seconds)
        seconds, bare_size = timed(bare_decode_and_gzip, event)
        bare_times.append(seconds)

    tracemalloc.start()
    archive(event)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    archive_median = statistics.median(archive_times)
    bare_median = statistics.median(bare_times)
    print(
        f"batch: {args.records:,} records over {args.partitions} partitions, "
        f"values {value_bytes / args.records:,.0f} B on average "
        f"({value_bytes / 1e6:.1f} MB; {payload / 1e6:.1f} MB as base64 in the event)"
    )
    print(
        f"archive_batch        median {archive_median * 1000:8.1f} ms  "
        f"({args.records / archive_median:,.0f} records/s, {archive_size / 1e6:.2f} MB gzip)"
    )
    print(
        f"bare decode + gzip   median {bare_median * 1000:8.1f} ms  "
        f"({args.records / bare_median:,.0f} records/s, {bare_size / 1e6:.2f} MB gzip)"
    )
    print(f"ratio archive / bare: {archive_median / bare_median:.2f}x  ({args.repeats} repeats)")
    print(f"archive_batch peak allocation beyond the event: {peak / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
