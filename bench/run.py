"""`make bench`: every benchmark in one table, each figure a ratio to a baseline from the same run.

Parts (each in a fresh interpreter of its own, bounded in count and time, on 127.0.0.1 only):

* producer   POST /orders through the handler, warm, vs the same I/O done bare
* archiver   archive_batch on 10,000 x 1 KB records vs base64-decode + gzip (bench/archiver.py)
* email      SES calls (and time) per 1,000 orders, bulk vs one call per order (bench/emails.py)
* cold       import + init of each handler module in a fresh interpreter vs `import boto3`
* e2e        2,000 orders through the local stack: POST -> archived throughput, POST -> email

Prints one table and writes it, with the machine it ran on, into bench/README.md under
"Latest results". Nothing asserts on time: these are measurements, not tests.

    .venv/bin/python bench/run.py                      # everything (make bench)
    .venv/bin/python bench/run.py --parts producer,e2e # some parts; README left alone
    .venv/bin/python bench/run.py --quick              # a tenth of the counts; README left alone
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

from bench._common import ROOT, PartResult, Row, machine, percentile, progress
from devstack.context import LambdaContext

README: Final = ROOT / "bench" / "README.md"
RESULTS_HEADING: Final = "## Latest results"
# The whole bench stays under 10 minutes: each part gets its own limit, and no more than what
# is left of this budget (plus the grace period to stop, should it overrun).
BUDGET_S: Final = 540.0
STOP_GRACE_S: Final = 30.0  # a part stopped at its limit gets this long to stop its servers


@dataclass(frozen=True)
class Part:
    run: Callable[[PartResult, bool], None]
    limit_s: float


# ---------------------------------------------------------------------------- producer

PRODUCER_ORDERS: Final = 2_000
PRODUCER_WARMUP: Final = 50
# Powertools' DynamoDBPersistenceLayer: the conditional PutItem of the in-progress record.
IN_PROGRESS_CONDITION: Final = (
    "attribute_not_exists(#id) OR #expiry < :now OR "
    "(#status = :inprogress AND attribute_exists(#in_progress_expiry) AND "
    "#in_progress_expiry < :now_in_millis)"
)
COMPLETION_UPDATE: Final = (
    "SET #response_data = :response_data, #expiry = :expiry, #status = :status, "
    "#validation_key = :validation_key"
)


def sample_api_event() -> dict[str, Any]:
    event: dict[str, Any] = json.loads((ROOT / "events" / "api-post-order.json").read_text())
    return event


def producer(result: PartResult, quick: bool) -> None:
    """The handler in-process (REST proxy events, fresh order_ids) against a real broker and a
    moto_server table, interleaved order by order with the same I/O done bare."""
    from devstack.functions import load_functions, process_environment
    from devstack.stack import LocalStack

    orders = PRODUCER_ORDERS // 10 if quick else PRODUCER_ORDERS
    with tempfile.TemporaryDirectory(prefix="orderstream-bench-") as state:
        stack = LocalStack(state_dir=Path(state), outbox=None, log=lambda line: None)
        try:
            _, endpoint, resolver = stack.start_backing()
            spec = load_functions(resolver)["OrderApiFunction"]
            # The function's environment as the local stack gives it (broker, table, endpoint,
            # plaintext Kafka, the template's Powertools settings), in this process.
            env = process_environment(spec, endpoint)
            os.environ.update({k: v for k, v in env.items() if k != "PATH"})
            measure_producer(result, orders, PRODUCER_WARMUP)
        finally:
            from orderstream import kafka_client

            kafka_client.discard_producer()
            stack.stop()


def measure_producer(result: PartResult, orders: int, warmup: int) -> None:
    import copy
    import hashlib
    import uuid
    from unittest import mock

    import boto3
    from botocore.client import BaseClient
    from botocore.config import Config
    from kafka import KafkaProducer

    from functions.order_api import app
    from orderstream import kafka_client, settings
    from orderstream.events import KafkaMessage, OrderPlaced, to_message
    from orderstream.models import OrderRequest
    from orderstream.publishing import IDEMPOTENCY_KEY_PREFIX

    sample = sample_api_event()
    sample_body = json.loads(sample["body"])

    def handler_event() -> dict[str, Any]:
        event = copy.deepcopy(sample)
        event["body"] = json.dumps({**sample_body, "order_id": str(uuid.uuid4())})
        event["requestContext"]["requestId"] = str(uuid.uuid4())
        return event

    @dataclass(frozen=True)
    class BareOrder:
        order_id: str
        message: KafkaMessage
        key: str  # the idempotency record's, hashed as Powertools hashes it
        payload_hash: str

    def bare_order(n: int) -> BareOrder:
        body = {**sample_body, "order_id": str(uuid.uuid4())}
        order = OrderRequest.model_validate(body)
        message = to_message(OrderPlaced.new(order.to_order(), f"bench-bare-{n}"))
        digest = hashlib.sha256(json.dumps(body["order_id"]).encode()).hexdigest()
        payload = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return BareOrder(body["order_id"], message, f"{IDEMPOTENCY_KEY_PREFIX}#{digest}", payload)

    total = warmup + orders
    events = [handler_event() for _ in range(total)]
    bare_orders = [bare_order(n) for n in range(total)]

    table = settings.required(settings.IDEMPOTENCY_TABLE)
    topic = settings.order_topic()
    # The handler's own client settings and producer configuration: only the code differs.
    dynamodb = boto3.client(
        "dynamodb",
        config=Config(
            connect_timeout=1, read_timeout=2, retries={"mode": "standard", "max_attempts": 2}
        ),
    )
    bare_producer = KafkaProducer(
        **kafka_client.producer_config(settings.KafkaSettings.from_env())
        | {"client_id": "orderstream-bench-bare"}
    )

    steps: defaultdict[str, list[float]] = defaultdict(list)  # the bare side, step by step

    def bare(order: BareOrder) -> None:
        now = time.time()
        started = time.perf_counter()
        dynamodb.put_item(
            TableName=table,
            Item={
                "id": {"S": order.key},
                "expiration": {"N": str(int(now) + 86_400)},
                "status": {"S": "INPROGRESS"},
                "in_progress_expiration": {"N": str(int(now * 1000) + 29_000)},
                "validation": {"S": order.payload_hash},
            },
            ConditionExpression=IN_PROGRESS_CONDITION,
            ExpressionAttributeNames={
                "#id": "id",
                "#expiry": "expiration",
                "#in_progress_expiry": "in_progress_expiration",
                "#status": "status",
            },
            ExpressionAttributeValues={
                ":now": {"N": str(int(now))},
                ":now_in_millis": {"N": str(int(now * 1000))},
                ":inprogress": {"S": "INPROGRESS"},
            },
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        put = time.perf_counter()
        message = order.message
        report = bare_producer.send(
            topic, key=message.key, value=message.value, headers=message.headers
        ).get(timeout=10)
        sent = time.perf_counter()
        answer = {
            "order_id": order.order_id,
            "status": "accepted",
            "topic": report.topic,
            "partition": report.partition,
            "offset": report.offset,
        }
        dynamodb.update_item(
            TableName=table,
            Key={"id": {"S": order.key}},
            UpdateExpression=COMPLETION_UPDATE,
            ExpressionAttributeNames={
                "#expiry": "expiration",
                "#response_data": "data",
                "#status": "status",
                "#validation_key": "validation",
            },
            ExpressionAttributeValues={
                ":expiry": {"N": str(int(now) + 86_400)},
                ":response_data": {"S": json.dumps(answer)},
                ":status": {"S": "COMPLETED"},
                ":validation_key": {"S": order.payload_hash},
            },
        )
        if phase[0] == "bare":
            steps["PutItem"].append(put - started)
            steps["send().get()"].append(sent - put)
            steps["UpdateItem"].append(time.perf_counter() - sent)

    # Every AWS call either side makes, by operation: the two sides must do the same I/O.
    phase = ["warm-up"]
    calls: defaultdict[str, Counter[str]] = defaultdict(Counter)
    make_api_call = BaseClient._make_api_call  # type: ignore[attr-defined]

    def counting(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        calls[phase[0]][operation] += 1
        return make_api_call(client, operation, params)

    handler_s: list[float] = []
    bare_s: list[float] = []
    progress(f"producer: {warmup} warm-up + {orders:,} orders, handler and bare interleaved")
    try:
        with mock.patch.object(BaseClient, "_make_api_call", counting):
            for n in range(total):
                measured = n >= warmup
                # Alternate which side goes first, so neither always finds the other's warm caches.
                for side in ("handler", "bare") if n % 2 else ("bare", "handler"):
                    phase[0] = side if measured else "warm-up"
                    started = time.perf_counter()
                    if side == "handler":
                        response = app.lambda_handler(events[n], LambdaContext())
                        took = time.perf_counter() - started
                        if response["statusCode"] != 202:
                            raise RuntimeError(f"the handler answered {response}")
                        if measured:
                            handler_s.append(took)
                    else:
                        bare(bare_orders[n])
                        if measured:
                            bare_s.append(time.perf_counter() - started)
    finally:
        bare_producer.close(timeout=1)
        kafka_client.discard_producer()

    for q in (50, 99):
        result.rows.append(
            Row(
                f"producer: POST /orders p{q}, handler vs bare I/O",
                percentile(handler_s, q) * 1000,
                percentile(bare_s, q) * 1000,
                "ms",
            )
        )

    def per_order(side: str) -> str:
        return ", ".join(f"{op} {count / orders:g}" for op, count in sorted(calls[side].items()))

    overhead = (statistics.median(handler_s) - statistics.median(bare_s)) * 1000
    result.notes.append(
        f"producer: {orders:,} orders (after {warmup} warm-up), in-process handler with REST "
        "proxy events vs kafka-python send().get() + conditional PutItem + UpdateItem of the same "
        f"message to the same broker and table (moto_server). AWS calls per order: handler "
        f"{per_order('handler')}; bare {per_order('bare')}. Median overhead {overhead:.1f} ms; "
        "the bare side's medians: "
        + ", ".join(f"{step} {statistics.median(s) * 1000:.1f} ms" for step, s in steps.items())
        + "."
    )


# ---------------------------------------------------------------------------- archiver

ARCHIVER_RECORDS: Final = 10_000
ARCHIVER_REPEATS: Final = 5


def archiver(result: PartResult, quick: bool) -> None:
    from bench import archiver as bench_archiver
    from devstack.msk_event import msk_event, sample_order_records

    records_count = ARCHIVER_RECORDS // 10 if quick else ARCHIVER_RECORDS
    records = sample_order_records(records_count, 4)
    event = msk_event(records, bench_archiver.CLUSTER_ARN, "b-1.example:9098")
    value_bytes = sum(len(r.value or b"") for r in records)
    progress(f"archiver: {records_count:,} records, {ARCHIVER_REPEATS} repeats")
    bench_archiver.archive(event)  # warm-up: imports, deserializer cache
    archive_s, bare_s = [], []
    for _ in range(ARCHIVER_REPEATS):
        archive_s.append(bench_archiver.timed(bench_archiver.archive, event)[0])
        bare_s.append(bench_archiver.timed(bench_archiver.bare_decode_and_gzip, event)[0])
    result.rows.append(
        Row(
            f"archiver: {records_count:,} x {value_bytes / records_count / 1000:.0f} KB batch",
            statistics.median(archive_s) * 1000,
            statistics.median(bare_s) * 1000,
            "ms",
        )
    )
    result.notes.append(
        f"archiver: bench/archiver.py's measurement, median of {ARCHIVER_REPEATS}: "
        "archive_batch (Powertools decoding, JSON lines, gzip per partition, in-memory store) "
        "vs base64-decode + gzip of the same values."
    )


# ---------------------------------------------------------------------------- email

EMAIL_ORDERS: Final = 1_000
EMAIL_BATCH: Final = 100  # the template's BatchSize


def email(result: PartResult, quick: bool) -> None:
    from bench import emails as bench_email
    from devstack.msk_event import sample_order_records

    orders = EMAIL_ORDERS // 10 if quick else EMAIL_ORDERS
    bench_email.quiet_offline_environment()
    from moto import mock_aws

    progress(f"email: {orders:,} orders in batches of {EMAIL_BATCH}")
    records = sample_order_records(orders, 3, items_per_order=3)
    with mock_aws():
        template = bench_email.create_resources()
        bulk_calls, ledger_calls, bulk_s = bench_email.bulk(records, EMAIL_BATCH, template)
        bulk_sent = bench_email.ses_destinations()
        single_calls, single_s = bench_email.one_call_per_order(records, template)
        single_sent = bench_email.ses_destinations() - bulk_sent
    per_1000 = 1000 / orders
    result.rows.append(
        Row(
            "email: SES calls per 1,000 orders, bulk vs one per order",
            sum(bulk_calls.values()) * per_1000,
            sum(single_calls.values()) * per_1000,
            "calls",
        )
    )
    result.rows.append(
        Row(
            "email: time per 1,000 orders, bulk vs one per order",
            bulk_s * 1000 * per_1000,
            single_s * 1000 * per_1000,
            "ms",
        )
    )
    result.notes.append(
        f"email: {sum(ledger_calls.values()) / orders:.2f} DynamoDB calls per order "
        "(claim, then record as sent: 2 when nothing fails)."
    )
    result.notes.append(
        f"email: bench/emails.py, moto in-process; the notifier's handler in batches of "
        f"{EMAIL_BATCH} ({dict(bulk_calls)}, {bulk_sent:,} emails, plus {dict(ledger_calls)} "
        f"idempotency calls in its time) vs one SendTemplatedEmail per order ({single_sent:,} "
        "emails). The call count is what SES bills and throttles; the times are moto's."
    )


# ---------------------------------------------------------------------------- cold start

COLD_SAMPLES: Final = 5
HANDLERS: Final = ("order_api", "email_notifier", "s3_archiver", "topic_provisioner")
CONSUMERS: Final = frozenset({"email_notifier", "s3_archiver"})
# Runs in a fresh `python -I -S`, as the local stack's function host does: only the paths
# given, the clock around the import of the handler module (its module-level init included).
COLD_SCRIPT: Final = """
import sys, time
sys.path[:0] = sys.argv[1].split(":")
started = time.perf_counter()
__import__(sys.argv[2])
took = time.perf_counter() - started
print(took, int("kafka" in sys.modules), len(sys.modules))
"""
IMPORTTIME: Final = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


@dataclass(frozen=True)
class ColdTarget:
    name: str
    module: str
    paths: list[str]
    env: dict[str, str]
    cwd: Path


def cold_targets() -> list[ColdTarget]:
    from devstack import aws
    from devstack.functions import LAYER_SOURCE, load_functions, process_environment
    from devstack.stack import LOCAL_PARAMETERS
    from devstack.template import load_template

    template = load_template()
    resolver = aws.plan(template, LOCAL_PARAMETERS, "127.0.0.1:9092").resolver(
        template, LOCAL_PARAMETERS
    )
    site = [p for p in sys.path if p.endswith("site-packages")]
    # Nothing listens on the discard port: a handler that called AWS at import would fail fast.
    specs = {s.code_dir.name: s for s in load_functions(resolver).values()}
    env = process_environment(next(iter(specs.values())), "http://127.0.0.1:9")
    targets = [ColdTarget("import boto3", "boto3", [str(LAYER_SOURCE), *site], env, ROOT)]
    for name in HANDLERS:
        spec = specs[name]
        module = spec.handler.rpartition(".")[0]
        targets.append(
            ColdTarget(
                name,
                module,
                [str(spec.code_dir), str(LAYER_SOURCE), *site],
                process_environment(spec, "http://127.0.0.1:9"),
                spec.code_dir,
            )
        )
    return targets


def cold_import(target: ColdTarget, importtime: bool = False) -> tuple[float, bool, str]:
    flags = ["-X", "importtime"] if importtime else []
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            *flags,
            "-c",
            COLD_SCRIPT,
            os.pathsep.join(target.paths),
            target.module,
        ],
        env=target.env,
        cwd=target.cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"importing {target.name} failed: {done.stderr[-2000:]}")
    took, kafka, _ = done.stdout.split()
    return float(took), kafka == "1", done.stderr


def import_breakdown(stderr: str, top: int = 4) -> str:
    """Where the import time went, by top-level package (self times, which never overlap)."""
    by_package: Counter[str] = Counter()
    for line in stderr.splitlines():
        found = IMPORTTIME.match(line)
        if found:
            by_package[found.group(4).split(".")[0]] += int(found.group(1))
    total = sum(by_package.values()) or 1
    return ", ".join(f"{name} {share / total:.0%}" for name, share in by_package.most_common(top))


def cold(result: PartResult, quick: bool) -> None:
    targets = cold_targets()
    samples = 2 if quick else COLD_SAMPLES
    progress(f"cold: {len(targets)} modules x (1 discarded + {samples}) fresh interpreters")
    times: defaultdict[str, list[float]] = defaultdict(list)
    kafka: dict[str, bool] = {}
    for round_ in range(1 + samples):
        for target in targets:  # round-robin, so machine noise hits every module alike
            took, kafka[target.name], _ = cold_import(target)
            if round_:  # the first round compiles .pyc files and warms the file cache
                times[target.name].append(took)
    baseline = statistics.median(times["import boto3"]) * 1000
    for name in HANDLERS:
        imports = "imports kafka" if kafka[name] else "no kafka"
        if name in CONSUMERS and kafka[name]:
            imports = "IMPORTS KAFKA (a consumer must not)"
        result.rows.append(
            Row(
                f"cold start: {name} import + init ({imports})",
                statistics.median(times[name]) * 1000,
                baseline,
                "ms",
            )
        )
    breakdown = "; ".join(
        f"{t.name}: {import_breakdown(cold_import(t, importtime=True)[2])}"
        for t in targets
        if t.name in HANDLERS
    )
    result.notes.append(
        f"cold start: median of {samples} fresh `python -I -S` per module (after one discarded "
        "run that compiles .pyc), with the function's folder, the layer and site-packages on the "
        "path and its template environment; baseline a bare `import boto3` the same way. "
        "`kafka` checked in sys.modules after the import. Import time by package (-X "
        f"importtime self time): {breakdown}. The dev venv also holds awscrt and pyOpenSSL, "
        "which botocore imports when present and the Lambda layer does not ship: absolute "
        "times here run higher than in Lambda, for handlers and baseline alike."
    )


# ---------------------------------------------------------------------------- end to end

E2E_ORDERS: Final = 2_000
E2E_WARMUP: Final = 24
E2E_CLIENTS: Final = 8
E2E_DRAIN_S: Final = 150.0  # after the last POST, at most this long for the last archive/email
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
        import gzip

        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        listing = {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}
        listed = time.time()
        for key, etag in listing.items():
            if self.etags.get(key) == etag:
                continue  # unchanged since read; a merge adding records changes the ETag
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            self.etags[key] = etag
            lines = [json.loads(text) for text in gzip.decompress(body).splitlines()]
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

    pool = ThreadPoolExecutor(max_workers=E2E_CLIENTS, thread_name_prefix="client")
    try:
        return list(pool.map(lambda body: post_order(url, body), bodies))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # stopped early: drop what is queued


def e2e(result: PartResult, quick: bool) -> None:
    import uuid

    from devstack.stack import LocalStack

    orders = E2E_ORDERS // 10 if quick else E2E_ORDERS
    sample = json.loads(sample_api_event()["body"])

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
                progress(f"e2e: {E2E_WARMUP} warm-up orders")
                warm = post_all(url, bodies(E2E_WARMUP))
                if not drained(warm, time.monotonic() + 90):
                    raise RuntimeError("the warm-up orders were not archived and emailed in 90 s")
                warm_failures = len(log.matching(r"EmailNotifierFunction .* item failures"))
                warm_not_completed = Counter(notifier.not_completed)

                progress(f"e2e: {orders:,} orders from {E2E_CLIENTS} client threads")
                posted = post_all(url, bodies(orders))
                done = drained(posted, time.monotonic() + E2E_DRAIN_S)
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
    for q in (50, 99):
        result.rows.append(
            Row(
                f"e2e: POST -> email sent p{q} vs POST round trip p{q}",
                percentile(to_email, q) * 1000,
                percentile(round_trip, q) * 1000,
                "ms",
            )
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
        f"e2e: {len(posted):,} orders POSTed over HTTP by {E2E_CLIENTS} threads to the local "
        f"stack (4 order_api containers, batching window 1 s) after {E2E_WARMUP} warm-up "
        f"orders; {len(accepted):,} accepted"
        + (f", refused {dict(refused)}" if refused else "")
        + f". Archived once: {sum(1 for i in ids if archived_positions[i] == 1):,} "
        f"(more than once: {sum(1 for i in ids if archived_positions[i] > 1)}); emailed once "
        f"per moto: {sum(1 for i in ids if emailed[i] == 1):,} "
        f"(more than once: {sum(1 for i in ids if emailed[i] > 1)})"
        + ("." if done else f"; NOT ALL DRAINED within {E2E_DRAIN_S:.0f} s."),
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


# ---------------------------------------------------------------------------- the table

PARTS: Final[dict[str, Part]] = {
    "producer": Part(producer, 180),
    "archiver": Part(archiver, 60),
    "email": Part(email, 60),
    "cold": Part(cold, 90),
    "e2e": Part(e2e, 240),
}


def fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "n/a"
    if unit == "ms":
        return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "calls":
        return f"{value:,.0f} calls"
    return f"{value:,.0f} {unit}"


def render(results: list[PartResult], host: dict[str, str], seconds: float) -> str:
    lines = [
        "| benchmark | measured | baseline | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for part in results:
        for row in part.rows:
            ratio = "n/a" if row.ratio != row.ratio else f"{row.ratio:.2f}x"
            lines.append(
                f"| {row.benchmark} | {fmt(row.measured, row.unit)} | "
                f"{fmt(row.baseline, row.unit)} | {ratio} |"
            )
        if part.error:
            lines.append(f"| {part.part}: FAILED ({part.error[:150]}) | | | |")
    lines += ["", "Ratio = measured / baseline, both measured in this run."]
    lines += [f"- {note}" for part in results for note in part.notes]
    timing = ", ".join(f"{p.part} {p.seconds:.0f} s" for p in results)
    lines += [
        "",
        f"Machine: {host['nproc']} CPUs ({host['cpu']}), {host['system']}, Python "
        f"{host['python']}; {host['date']}. Whole bench {seconds:.0f} s ({timing}).",
    ]
    return "\n".join(lines)


def update_readme(table: str) -> None:
    text = README.read_text()
    start = text.find(RESULTS_HEADING)
    if start < 0:
        head, tail = text.rstrip() + "\n\n", ""
    else:
        head = text[:start]
        following = text.find("\n## ", start + len(RESULTS_HEADING))
        tail = "" if following < 0 else text[following:]
    section = f"{RESULTS_HEADING}\n\nFrom `make bench`:\n\n{table}\n"
    README.write_text(head + section + tail)


def run_part(name: str, limit_s: float, quick: bool) -> PartResult:
    """One part in a fresh interpreter; stopped (servers and all) when it exceeds its limit."""
    with tempfile.TemporaryDirectory(prefix="orderstream-bench-") as folder:
        result_file = Path(folder) / "result.json"
        command = [sys.executable, __file__, "--child", name, "--result", str(result_file)]
        # The handlers under test log to stdout, as in Lambda; here nobody reads it.
        child = subprocess.Popen(
            [*command, *(["--quick"] if quick else [])], stdout=subprocess.DEVNULL, cwd=ROOT
        )
        stopped = None
        try:
            child.wait(limit_s)
        except subprocess.TimeoutExpired:
            stopped = f"stopped at its time limit of {limit_s:.0f} s"
            child.terminate()  # the part's finally blocks stop its servers
            try:
                child.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        except BaseException:
            child.terminate()
            child.wait(STOP_GRACE_S)
            raise
        if result_file.exists():
            result = PartResult.from_dict(json.loads(result_file.read_text()))
        else:
            result = PartResult(name, error=f"exited with {child.returncode} and no result")
        if stopped:
            result.error = stopped
        return result


@contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM becomes SystemExit, so try/finally blocks stop the servers a part started."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def child(name: str, result_file: Path, quick: bool) -> None:
    result = PartResult(name)
    started = time.monotonic()
    try:
        with stopped_by_sigterm():
            PARTS[name].run(result, quick)
    except BaseException as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        result.seconds = time.monotonic() - started
        result_file.write_text(json.dumps(result.to_dict()))
        progress(f"{name}: {result.seconds:.0f} s" + (f" ({result.error})" if result.error else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    parser.add_argument("--quick", action="store_true", help="a tenth of the counts")
    parser.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.result, args.quick)
        return

    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = set(names) - PARTS.keys()
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    started = time.monotonic()
    results = []
    for name in names:
        left = BUDGET_S - (time.monotonic() - started)
        if left < 10:
            results.append(PartResult(name, error="skipped: the bench's time budget is spent"))
            continue
        results.append(run_part(name, min(PARTS[name].limit_s, left), args.quick))
    table = render(results, machine(), time.monotonic() - started)
    print(table)
    if names == list(PARTS) and not args.quick:
        update_readme(table)
        print(f"\nwritten to {README.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
