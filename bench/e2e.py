"""End to end: orders POSTed over HTTP to the local stack until archived and emailed.

.venv/bin/python bench/run.py --parts e2e
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench._common import ROOT, PartResult, Row, percentile, percentile_rows, progress

ORDERS: Final = 2_000
WARMUP: Final = 24
CLIENTS: Final = 8
DRAIN_S: Final = 150.0  # after the last POST, at most this long for the last archive/email
POLL_S: Final = 0.25
LOG_TIME: Final = "%Y-%m-%d %H:%M:%S,%f%z"  # Powertools Logger's timestamp


@dataclass
class Posted:
    order_id: str
    started: float  # wall clock, like the functions' log timestamps
    answered: float
    status: int


class StackLog:
    """The local stack's own log (API and mapping lines), kept in memory."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)

    def matching(self, pattern: str) -> list[str]:
        with self._lock:
            return [line for line in self.lines if re.search(pattern, line)]


class ArchiveWatch:
    """Polls the archive bucket; the first time each order_id was seen in an archived line."""

    def __init__(self, endpoint: str, bucket: str) -> None:
        from devstack import aws

        self.s3 = aws.client("s3", endpoint)
        self.bucket = bucket
        self.etags: dict[str, str] = {}  # key -> the ETag last read (a merge grows an object)
        self.first_seen: dict[str, float] = {}
        self.positions: dict[tuple[int, int], str] = {}
        self.error: str | None = None
        self._lock = threading.Lock()

    def watch(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # reported in the notes; the next listing retries
                self.error = f"{type(exc).__name__}: {exc}"
            stop.wait(POLL_S)

    def seen(self) -> set[str]:
        with self._lock:
            return set(self.first_seen)

    def poll(self) -> None:
        from orderstream.archive import read_lines

        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        listing = {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}
        listed = time.time()
        for key, etag in listing.items():
            if self.etags.get(key) == etag:
                continue  # unchanged since read; a merge adding records changes the ETag
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            self.etags[key] = etag
            lines = [json.loads(text) for text in read_lines(body)]
            with self._lock:
                for line in lines:
                    if not line.get("value"):
                        continue
                    order_id = line["value"]["order"]["order_id"]
                    self.first_seen.setdefault(order_id, listed)
                    self.positions[(line["partition"], line["offset"])] = order_id


class NotifierLog:
    """The email notifier's own log: its "Batch confirmed" line lists the order_ids it sent,
    stamped when the invocation finished (so an upper bound on when SES took each one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sent: dict[str, float] = {}
        self.not_completed: Counter[str] = Counter()  # "stage: detail" -> orders
        self.item_failure_batches = 0

    def read(self) -> None:
        from datetime import datetime

        self.sent, self.not_completed = {}, Counter()
        text = self.path.read_text() if self.path.exists() else ""
        for raw in text.splitlines():
            if not raw.startswith("{"):
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # a line still being written
            message = line.get("message")
            if message == "Batch confirmed":
                at = datetime.strptime(line["timestamp"], LOG_TIME).timestamp()
                for order_id in line.get("order_ids", []):
                    self.sent.setdefault(order_id, at)
            elif message == "Confirmations not completed":
                reason = f"{line.get('stage')}: {line.get('detail')}"
                self.not_completed[reason] += len(line.get("order_ids", []))


def emails_in_moto(endpoint: str) -> Counter[str]:
    """order_id -> confirmations SES accepted (moto's own record, read once at the end)."""
    from devstack import aws
    from devstack.mail import emailed_order_ids

    return emailed_order_ids(aws.MotoServer.data_at(endpoint))


def post_order(url: str, body: dict[str, Any]) -> Posted:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 -- http://127.0.0.1 only
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    started = time.time()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            status = response.status
            response.read()
    except urllib.error.HTTPError as error:
        status = error.code
    return Posted(body["order_id"], started, time.time(), status)


def post_all(url: str, bodies: list[dict[str, Any]]) -> list[Posted]:
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=CLIENTS, thread_name_prefix="client")
    try:
        return list(pool.map(lambda body: post_order(url, body), bodies))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # stopped early: drop what is queued


def part(result: PartResult, quick: bool) -> None:
    from devstack.stack import LocalStack

    orders = ORDERS // 10 if quick else ORDERS
    sample = json.loads(json.loads((ROOT / "events" / "api-post-order.json").read_text())["body"])

    def bodies(count: int) -> list[dict[str, Any]]:
        return [
            {
                **sample,
                "order_id": str(uuid.uuid4()),
                "customer": {**sample["customer"], "email": f"customer{n}@example.com"},
            }
            for n in range(count)
        ]

    log = StackLog()
    with tempfile.TemporaryDirectory(prefix="orderstream-bench-") as state:
        stack = LocalStack(
            broker_port=0,
            aws_port=0,
            api_port=0,
            state_dir=Path(state),
            outbox=None,
            max_batching_window_s=1.0,
            log=log,
        )
        try:
            progress("e2e: starting the local stack")
            info = stack.start()
            url = info.api_url + "/orders"
            archive = ArchiveWatch(info.aws_endpoint, info.buckets["ArchiveBucket"])
            notifier = NotifierLog(Path(state) / "logs" / "EmailNotifierFunction.log")

            # The bucket is listed all along, while the POSTs run too: an order's archive time
            # is when a listing first showed it.
            watching = threading.Event()
            watcher = threading.Thread(
                target=archive.watch, args=(watching,), name="archive-watch", daemon=True
            )
            watcher.start()

            def drained(posted: list[Posted], deadline: float) -> bool:
                ids = {p.order_id for p in posted if p.status == 202}
                while time.monotonic() < deadline:
                    notifier.read()
                    if ids <= archive.seen() and ids <= notifier.sent.keys():
                        return True
                    time.sleep(POLL_S)
                return False

            try:
                # Warm-up: containers started, consumer groups joined, every path taken once.
                progress(f"e2e: {WARMUP} warm-up orders")
                warm = post_all(url, bodies(WARMUP))
                if not drained(warm, time.monotonic() + 90):
                    raise RuntimeError("the warm-up orders were not archived and emailed in 90 s")
                warm_failures = len(log.matching(r"EmailNotifierFunction .* item failures"))
                warm_not_completed = Counter(notifier.not_completed)

                progress(f"e2e: {orders:,} orders from {CLIENTS} client threads")
                posted = post_all(url, bodies(orders))
                done = drained(posted, time.monotonic() + DRAIN_S)
            finally:
                watching.set()
                watcher.join(10)
            fetch = time.perf_counter()
            emailed = emails_in_moto(info.aws_endpoint)
            fetch_s = time.perf_counter() - fetch
            e2e_results(result, posted, archive, notifier, emailed, done)
            retried = len(log.matching(r"EmailNotifierFunction .* item failures"))
            not_completed = notifier.not_completed - warm_not_completed
            result.notes.append(
                f"e2e: {retried - warm_failures} notifier invocations reported item failures "
                f"(orders not completed, by reason: {dict(not_completed) or 'none'}); "
                f"{len(log.matching(r'error|stopped'))} error lines from the mappings; one read "
                f"of moto's /moto-api/data.json at the end took {fetch_s:.2f} s"
                + (f"; a listing of the archive failed: {archive.error}." if archive.error else ".")
            )
        finally:
            stack.stop()


def e2e_results(
    result: PartResult,
    posted: list[Posted],
    archive: ArchiveWatch,
    notifier: NotifierLog,
    emailed: Counter[str],
    done: bool,
) -> None:
    accepted = [p for p in posted if p.status == 202]
    ids = {p.order_id for p in accepted}
    first_post = min(p.started for p in posted)
    last_answer = max(p.answered for p in posted)
    archived = [archive.first_seen[i] for i in ids if i in archive.first_seen]
    last_archived = max(archived) if archived else math.nan
    result.rows.append(
        Row(
            "e2e: orders/s, POST -> archived vs POST -> 202",
            len(archived) / (last_archived - first_post),
            len(accepted) / (last_answer - first_post),
            "orders/s",
        )
    )
    round_trip = [p.answered - p.started for p in accepted]
    to_email = [
        notifier.sent[p.order_id] - p.started for p in accepted if p.order_id in notifier.sent
    ]
    result.rows += percentile_rows(
        "e2e: POST -> email sent p{q} vs POST round trip p{q}", to_email, round_trip
    )
    emailed_last = max((notifier.sent[i] for i in ids if i in notifier.sent), default=math.nan)
    to_archive = [
        archive.first_seen[p.order_id] - p.started
        for p in accepted
        if p.order_id in archive.first_seen
    ]
    archived_positions = Counter(archive.positions.values())
    refused = Counter(p.status for p in posted if p.status != 202)
    result.notes += [
        f"e2e: {len(posted):,} orders POSTed over HTTP by {CLIENTS} threads to the local "
        f"stack (4 order_api containers, batching window 1 s) after {WARMUP} warm-up "
        f"orders; {len(accepted):,} accepted"
        + (f", refused {dict(refused)}" if refused else "")
        + f". Archived once: {sum(1 for i in ids if archived_positions[i] == 1):,} "
        f"(more than once: {sum(1 for i in ids if archived_positions[i] > 1)}); emailed once "
        f"per moto: {sum(1 for i in ids if emailed[i] == 1):,} "
        f"(more than once: {sum(1 for i in ids if emailed[i] > 1)})"
        + ("." if done else f"; NOT ALL DRAINED within {DRAIN_S:.0f} s."),
        "e2e: throughput runs from the first POST to the last order seen in the archive bucket "
        f"(polled every {POLL_S} s); its baseline is the intake rate of the same POSTs (first "
        "POST to last 202), so 1.0 means the consumers keep pace with the API. An email counts "
        "as sent at the end of the notifier invocation whose log lists its order_id, an upper "
        "bound; its baseline is the same POSTs' round trip.",
    ]
    result.notes.append(
        f"e2e: POST -> archived p50 {percentile(to_archive, 50):.1f} s, p99 "
        f"{percentile(to_archive, 99):.1f} s; emails went out at "
        f"{len(to_email) / (emailed_last - first_post):.0f} orders/s (first POST to last email)."
    )
