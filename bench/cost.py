"""What an order costs: every billable call the pipeline makes per accepted order, counted.

Orders are POSTed to the local stack; every AWS request the functions make is seen by the stack's
AWS proxy (a fault that never fires, only counts), every Lambda invocation with its Init Duration
and Duration by a wrapper on the function host, the Kafka bytes are read back from the archive
(each record's key, value and headers), and the log bytes are what the functions wrote.
docs/capacity.md turns these counts into money with AWS's prices. Rows are per order: the
baseline is the order count, so the ratio is the count per order.

    .venv/bin/python bench/run.py --parts cost
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

from bench._common import ROOT, PartResult, Row, progress
from bench.e2e import ArchiveWatch, NotifierLog, post_all

ORDERS: Final = 400
WARMUP: Final = 16
# The local stack's window (the notifier's, and the archiver's capped to it) for each run.
BATCHING_WINDOWS_S: Final = (1.0, 5.0)
BATCH_DEPENDENT: Final = frozenset(
    {
        "Lambda invocations, all functions",
        "Lambda GB-seconds x 1,000, all functions",
        "SES API calls",
        "S3 requests",
        "S3 bytes put",
    }
)
DRAIN_S: Final = 120.0


class Meter:
    """Counts what is billed, while `on`: AWS operations, SES recipients, S3 bytes, Lambda."""

    def __init__(self) -> None:
        self.on = False
        self.calls: Counter[str] = Counter()
        self.lambda_ms: Counter[str] = Counter()  # billed ms (1 ms granularity) per function
        self.invocations: Counter[str] = Counter()
        self._lock = threading.Lock()

    def see(self, request: Any) -> bool:
        """A Fault's predicate: counts the request and never matches."""
        if not self.on:
            return False
        counted: Counter[str] = Counter()
        target = request.headers.get("X-Amz-Target", "")
        if target.startswith("DynamoDB_"):
            counted[f"DynamoDB {target.rsplit('.', 1)[-1]}"] += 1
        elif request.action:
            counted[f"SES {request.action}"] += 1
            if request.action.startswith("SendBulk"):
                form = parse_qs(request.body.decode(errors="replace"))
                counted["SES recipients"] += sum(
                    len(values) for key, values in form.items() if ".ToAddresses.member." in key
                )
            elif request.action.startswith("Send"):
                counted["SES recipients"] += 1
        elif request.path.count("/") >= 2 and not request.query:  # /bucket/key: an object
            verb = {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject"}
            counted[f"S3 {verb.get(request.method, request.method)}"] += 1
            if request.method == "PUT":
                counted["S3 bytes put"] += len(request.body)
        else:
            counted[f"S3 {request.method} {request.query.split('=')[0] or 'bucket'}"] += 1
        with self._lock:
            self.calls.update(counted)
        return False

    def invoked(self, function: str, init_ms: float, invoke_ms: float) -> None:
        if self.on:
            with self._lock:
                self.invocations[function] += 1
                # Lambda bills Duration rounded up to the millisecond, and the Init phase too.
                self.lambda_ms[function] += math.ceil(init_ms + invoke_ms)


@dataclass
class Measured:
    window_s: float
    posted: int
    accepted: int
    meter: Meter
    memory: dict[str, int]  # MB by function
    deliveries: dict[str, int]
    kafka_bytes: int
    log_bytes: int


def part(result: PartResult, quick: bool) -> None:
    orders = ORDERS // 4 if quick else ORDERS
    first = measure(orders, BATCHING_WINDOWS_S[0])
    for what, count in counts(first):
        result.rows.append(Row(f"cost: {what} per order", count, first.accepted, "n"))
    result.notes.append(note(first))
    # The same orders with longer batching: what depends on batch size, and how.
    longer = measure(orders, BATCHING_WINDOWS_S[1])
    for what, count in counts(longer):
        if what in BATCH_DEPENDENT:
            label = f"cost, {longer.window_s:.0f} s batching window: {what} per order"
            result.rows.append(Row(label, count, longer.accepted, "n"))
    result.notes.append(note(longer))


def counts(m: Measured) -> list[tuple[str, float]]:
    calls = m.meter.calls
    gb_s = {f: ms / 1000 * m.memory[f] / 1024 for f, ms in m.meter.lambda_ms.items()}
    dynamodb = {k: v for k, v in calls.items() if k.startswith("DynamoDB")}
    s3_requests = {k: v for k, v in calls.items() if k.startswith("S3 ") and "bytes" not in k}
    return [
        ("API Gateway requests", m.posted),
        ("Lambda invocations, all functions", sum(m.meter.invocations.values())),
        ("Lambda GB-seconds x 1,000, all functions", sum(gb_s.values()) * 1000),
        ("DynamoDB write and read calls", sum(dynamodb.values())),
        ("SES API calls", sum(v for k, v in calls.items() if k.startswith("SES Send"))),
        ("SES recipients", calls["SES recipients"]),
        ("S3 requests", sum(s3_requests.values())),
        ("S3 bytes put", calls["S3 bytes put"]),
        ("Kafka record bytes in (key, value, headers)", m.kafka_bytes),
        ("function log bytes (CloudWatch Logs ingestion)", m.log_bytes),
    ]


def note(m: Measured) -> str:
    invocations = m.meter.invocations
    consumers = ", ".join(
        f"{f} {invocations[f]} invocations ({m.accepted / invocations[f]:.1f} orders each)"
        for f in sorted(invocations)
    )
    return (
        f"cost, batching window {m.window_s:.0f} s: {m.accepted} orders accepted of "
        f"{m.posted} POSTed to the local stack (after {WARMUP} warm-up orders), counted until "
        f"each was archived and emailed. Invocations: {consumers}. Billed Lambda ms (Init + "
        "Duration, rounded up per invocation) by function: "
        + ", ".join(
            f"{f} {ms:,} ms at {m.memory[f]} MB" for f, ms in sorted(m.meter.lambda_ms.items())
        )
        + ". AWS requests by operation: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(m.meter.calls.items()) if "bytes" not in k)
        + f". Records delivered by the mappings: {m.deliveries} (Kafka bytes out = in x each "
        "consumer group's deliveries per record). Kafka bytes are the records' own bytes; the "
        "wire adds record-batch framing (about 70 bytes per batch and 10-20 per record)."
    )


def measure(orders: int, window_s: float) -> Measured:
    from devstack import functions
    from devstack.faults import Fault
    from devstack.stack import LocalStack

    meter = Meter()
    real_invoke = functions.FunctionHost.invoke

    def metered_invoke(host: Any, event: Any, request_id: str | None = None) -> Any:
        outcome = real_invoke(host, event, request_id)
        meter.invoked(host.spec.logical_id, outcome.init_ms, outcome.invoke_ms)
        return outcome

    functions.FunctionHost.invoke = metered_invoke  # type: ignore[method-assign,assignment]
    sample = json.loads(json.loads((ROOT / "events" / "api-post-order.json").read_text())["body"])

    def bodies(count: int, first: int) -> list[dict[str, Any]]:
        return [
            {
                **sample,
                "order_id": str(uuid.uuid4()),
                "customer": {**sample["customer"], "email": f"customer{first + n}@example.com"},
            }
            for n in range(count)
        ]

    with tempfile.TemporaryDirectory(prefix="orderstream-cost-") as state:
        stack = LocalStack(
            state_dir=Path(state),
            outbox=None,
            max_batching_window_s=window_s,
            log=lambda line: None,
            faults=True,
        )
        try:
            progress(f"cost: the local stack, batching window {window_s:.0f} s, AWS counted")
            info = stack.start()
            assert stack.aws_faults is not None
            stack.aws_faults.add(Fault(meter.see, 0, b""))
            archive = ArchiveWatch(info.aws_endpoint, info.buckets["ArchiveBucket"])
            notifier = NotifierLog(Path(state) / "logs" / "EmailNotifierFunction.log")
            url = info.api_url + "/orders"

            def drain(ids: set[str]) -> bool:
                deadline = time.monotonic() + DRAIN_S
                while time.monotonic() < deadline:
                    archive.poll()
                    notifier.read()
                    if ids <= archive.seen() and ids <= notifier.sent.keys():
                        return True
                    time.sleep(0.25)
                return False

            warm = post_all(url, bodies(WARMUP, 0))
            if not drain({p.order_id for p in warm if p.status == 202}):
                raise RuntimeError("the warm-up orders were not archived and emailed")
            time.sleep(window_s * 2)  # the last warm-up invocations have ended
            progress(f"cost: {orders} orders, every billable call counted")
            logs = Path(state) / "logs"
            log_bytes = -sum(f.stat().st_size for f in logs.glob("*.log"))
            meter.on = True
            before = {m.spec.function: m.totals.delivered for m in stack.mappings}
            posted = post_all(url, bodies(orders, WARMUP))
            accepted = {p.order_id for p in posted if p.status == 202}
            drained = drain(accepted)
            time.sleep(window_s * 2)
            meter.on = False
            log_bytes += sum(f.stat().st_size for f in logs.glob("*.log"))
            kafka_bytes = record_bytes(info.aws_endpoint, info.buckets["ArchiveBucket"], accepted)
            memory = {s.logical_id: s.memory_mb for s in stack.functions.values()}
            deliveries = {
                m.spec.function: m.totals.delivered - before[m.spec.function]
                for m in stack.mappings
            }
        finally:
            functions.FunctionHost.invoke = real_invoke  # type: ignore[method-assign]
            stack.stop()
    if not drained:
        raise RuntimeError(f"not every order was archived and emailed within {DRAIN_S:.0f} s")
    return Measured(
        window_s, len(posted), len(accepted), meter, memory, deliveries, kafka_bytes, log_bytes
    )


def record_bytes(endpoint: str, bucket: str, ids: set[str]) -> int:
    """Key + value + header bytes of the archived records of these orders."""
    from devstack import aws
    from orderstream.archive import lambda_record, read_lines

    s3 = aws.client("s3", endpoint)
    total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="topics/"):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for line in read_lines(body):
                if not any(i.encode() in line for i in ids):
                    continue
                record = lambda_record(line)
                total += _b64len(record.get("value")) + _b64len(record.get("key"))
                for header in record["headers"]:
                    for name, octets in header.items():
                        total += len(name.encode()) + len(octets or [])
    return total


def _b64len(text: str | None) -> int:
    import base64

    return 0 if text is None else len(base64.b64decode(text))
