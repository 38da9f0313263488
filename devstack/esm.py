"""An MSK event-source mapping, emulated: a Kafka consumer group that invokes a function.

Faithful to what Lambda does with the template's `Type: MSK` event: the event's own consumer
group, StartingPosition, BatchSize, MaximumBatchingWindowInSeconds, the 6 MB payload cap and
FilterCriteria; the event in Lambda's exact shape; offsets committed only after the function
succeeded; on errors, retries up to MaximumRetryAttempts, BisectBatchOnFunctionError,
ReportBatchItemFailures, then the on-failure destination (an S3 bucket here, as in the
template). At-least-once, like the real thing: a crash before the commit redelivers the batch.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from devstack.functions import Invocation
from devstack.msk_event import KafkaRecord, msk_event, msk_record

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # Lambda's synchronous invocation payload limit
DEFAULT_BATCHING_WINDOW_S = 0.5  # Lambda's default for Kafka sources


@dataclass(frozen=True)
class MappingSpec:
    """One `Type: MSK` event of a function, resolved."""

    function: str  # logical id
    name: str  # the event's name in the template
    event_source_arn: str
    topics: list[str]
    group_id: str
    starting_position: str = "LATEST"
    batch_size: int = 100
    batching_window_s: float = DEFAULT_BATCHING_WINDOW_S
    maximum_retry_attempts: int = -1  # -1: until it succeeds (Lambda's default)
    bisect_on_error: bool = False
    report_batch_item_failures: bool = False
    on_failure_bucket: str | None = None
    filters: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_event(cls, function: str, name: str, props: dict[str, Any]) -> MappingSpec:
        destination = props.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
        window = props.get("MaximumBatchingWindowInSeconds")
        return cls(
            function=function,
            name=name,
            event_source_arn=str(props["Stream"]),
            topics=list(props["Topics"]),
            group_id=str(props.get("ConsumerGroupId") or uuid.uuid4()),
            starting_position=str(props.get("StartingPosition", "LATEST")),
            batch_size=int(props.get("BatchSize", 100)),
            batching_window_s=DEFAULT_BATCHING_WINDOW_S if window is None else float(window),
            maximum_retry_attempts=int(props.get("MaximumRetryAttempts", -1)),
            bisect_on_error=bool(props.get("BisectBatchOnFunctionError", False)),
            report_batch_item_failures="ReportBatchItemFailures"
            in props.get("FunctionResponseTypes", []),
            # The template names the bucket by ARN (arn:aws:s3:::name).
            on_failure_bucket=str(destination).rsplit(":", 1)[-1] if destination else None,
            filters=[
                json.loads(f["Pattern"]) for f in props.get("FilterCriteria", {}).get("Filters", [])
            ],
        )


# ---------------------------------------------------------------------------- filtering


def _matches(pattern: Any, value: Any) -> bool:
    """Lambda's event-filtering rules (the subset Kafka mappings use)."""
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        return all(
            _field_matches(rule, value.get(key), key in value) for key, rule in pattern.items()
        )
    return False


def _field_matches(rule: Any, value: Any, present: bool) -> bool:
    if isinstance(rule, dict):
        return present and _matches(rule, value)
    if not isinstance(rule, list):
        return False
    values = value if isinstance(value, list) else [value]
    for condition in rule:
        if isinstance(condition, dict):
            if "exists" in condition:
                if condition["exists"] == present:
                    return True
                continue
            if not present:
                continue
            if "prefix" in condition and any(
                isinstance(v, str) and v.startswith(condition["prefix"]) for v in values
            ):
                return True
            if "anything-but" in condition:
                excluded = condition["anything-but"]
                excluded = excluded if isinstance(excluded, list) else [excluded]
                if all(v not in excluded for v in values):
                    return True
            if "numeric" in condition and any(
                isinstance(v, int | float) and _numeric(condition["numeric"], v) for v in values
            ):
                return True
        elif present and condition in values:
            return True
    return False


def _numeric(terms: Sequence[Any], number: float) -> bool:
    checks = {
        "=": lambda a, b: a == b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
    }
    return all(checks[op](number, bound) for op, bound in zip(terms[::2], terms[1::2], strict=True))


def passes_filters(filters: list[dict[str, Any]], record: dict[str, Any]) -> bool:
    """A record is delivered when any filter matches (or there are none). As in Lambda, a
    `value` pattern applies to the decoded value when it is JSON, else never matches."""
    if not filters:
        return True
    view = dict(record)
    try:
        view["value"] = json.loads(base64.b64decode(record["value"]))
    except ValueError:
        view.pop("value")
    return any(_matches(f, view) for f in filters)


# ---------------------------------------------------------------------------- the mapping


@dataclass
class BatchResult:
    invocations: int = 0
    delivered: int = 0
    failed_to_destination: int = 0
    filtered: int = 0


Invoke = Callable[[dict[str, Any]], Invocation]
Log = Callable[[str], None]


class EventSourceMapping:
    """Runs one mapping in a thread until `stop()`; commits only what the function processed."""

    def __init__(
        self,
        spec: MappingSpec,
        bootstrap_servers: str,
        invoke: Invoke,
        put_object: Callable[[str, str, bytes], None] | None = None,
        log: Log = print,
        retry_backoff_s: float = 0.5,
    ) -> None:
        self.spec = spec
        self.bootstrap_servers = bootstrap_servers
        self.invoke = invoke
        self.put_object = put_object
        self.log = log
        self.retry_backoff_s = retry_backoff_s
        self.totals = BatchResult()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: KafkaConsumer | None = None
        self._carry: list[KafkaRecord] = []  # fetched but past the payload cap: next batch
        self.error: BaseException | None = None

    # -- lifecycle

    def start(self) -> EventSourceMapping:
        self._thread = threading.Thread(
            target=self._run, name=f"esm-{self.spec.function}", daemon=True
        )
        self._thread.start()
        return self

    def _connect(self) -> KafkaConsumer:
        """A consumer that owns every partition of the topics, committing to the mapping's group.

        One poller per mapping, assigned all partitions rather than joining the group: the
        group still holds the committed offsets (what `status` and AWS show as the mapping's
        progress), but there is no rebalancing, so a restarted mapping resumes at once. (Tansu's
        group coordination was seen to wedge for good after quick join/leave cycles.)
        """
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.spec.group_id,
            client_id=f"devstack-esm-{self.spec.function}",
            enable_auto_commit=False,
            auto_offset_reset="earliest"
            if self.spec.starting_position == "TRIM_HORIZON"
            else "latest",
            max_poll_records=self.spec.batch_size,
        )
        partitions: list[TopicPartition] = []
        while not partitions and not self._stop.is_set():
            for topic in self.spec.topics:
                found = consumer.partitions_for_topic(topic) or set()
                partitions += [TopicPartition(topic, p) for p in sorted(found)]
            if not partitions:
                self._stop.wait(0.5)  # the topic is not there yet (or the broker is away)
        consumer.assign(partitions)
        return consumer

    def request_stop(self) -> None:
        """Start no new batch or retry; `stop()` then waits for the current invocation."""
        self._stop.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop polling; the thread leaves the group (closing its consumer) once the current
        invocation, if any, has returned. Nothing unprocessed is committed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop

    def _run(self) -> None:
        # The consumer lives and dies in this thread: kafka-python consumers are not
        # thread-safe, and closing it here always sends LeaveGroup, so a restarted mapping
        # rejoins the group at once.
        self._consumer = self._connect()
        try:
            self._loop()
        finally:
            self._consumer.close(autocommit=False)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                batch = self._collect()
                if batch:
                    self._process(batch)
                failures = 0
            except Exception as exc:
                # Like Lambda's pollers, a mapping outlives a broker outage: it logs, backs off
                # and resumes from the last committed offsets. Nothing was committed for the
                # batch in hand, so it is fetched and delivered again.
                failures += 1
                self.error = exc
                self.log(
                    f"{self.spec.function}: polling failed ({type(exc).__name__}: {exc}); retrying"
                )
                self._carry = []
                self._rewind()
                self._stop.wait(min(5.0, 0.2 * 2 ** min(failures, 5)))

    def _rewind(self) -> None:
        """Go back to the committed offsets, so records fetched but not processed come again."""
        assert self._consumer is not None
        try:
            for tp in self._consumer.assignment():
                committed = self._consumer.committed(tp)
                if committed is not None:
                    self._consumer.seek(tp, committed)
                elif self.spec.starting_position == "TRIM_HORIZON":
                    self._consumer.seek_to_beginning(tp)
        except Exception as exc:  # the broker is still away; the group rejoin will reset
            self.log(f"{self.spec.function}: could not rewind yet ({type(exc).__name__})")

    def _collect(self) -> list[KafkaRecord]:
        """One batch: BatchSize records, or the batching window, or the payload cap."""
        assert self._consumer is not None
        batch, self._carry = self._carry, []
        size = sum(_record_size(r) for r in batch) + 512
        opened = time.monotonic() if batch else None
        while not self._stop.is_set() and len(batch) < self.spec.batch_size:
            if opened is not None and time.monotonic() - opened >= self.spec.batching_window_s:
                break
            wait_ms = (
                200
                if opened is None
                else max(1, int((self.spec.batching_window_s - (time.monotonic() - opened)) * 1000))
            )
            fetched = self._consumer.poll(
                timeout_ms=wait_ms, max_records=self.spec.batch_size - len(batch)
            )
            for records in fetched.values():
                for record in records:
                    record_size = _record_size(record)
                    if batch and (size + record_size > MAX_PAYLOAD_BYTES or self._carry):
                        self._carry.append(record)
                        continue
                    batch.append(record)
                    size += record_size
            if batch and opened is None:
                opened = time.monotonic()
            if self._carry:
                break
        return batch

    def _process(self, batch: list[KafkaRecord]) -> None:
        delivered = [r for r in batch if passes_filters(self.spec.filters, msk_record(r))]
        self.totals.filtered += len(batch) - len(delivered)
        if delivered and not self._deliver(delivered, attempt=0):
            return  # stopped before the function succeeded: uncommitted, so redelivered
        self._commit(batch)

    def _deliver(self, records: list[KafkaRecord], attempt: int) -> bool:
        """Invoke until the records are processed or exhausted to the destination (True), or
        the mapping is stopped first (False)."""
        while not self._stop.is_set():
            event = msk_event(records, self.spec.event_source_arn, self.bootstrap_servers)
            result = self.invoke(event)
            self.totals.invocations += 1
            failed = self._failed_records(records, result)
            self.log(_describe(self.spec.function, records, result, attempt, len(failed)))
            if not failed:
                self.totals.delivered += len(records)
                return True
            self.totals.delivered += len(records) - len(failed)
            records = failed
            if self.spec.bisect_on_error and not result.ok and len(records) > 1:
                middle = len(records) // 2
                return self._deliver(records[:middle], attempt + 1) and self._deliver(
                    records[middle:], attempt + 1
                )
            if 0 <= self.spec.maximum_retry_attempts <= attempt:
                self._to_destination(records, result, attempt)
                return True
            attempt += 1
            self._stop.wait(min(5.0, self.retry_backoff_s * 2 ** min(attempt - 1, 4)))
        return False

    def _failed_records(self, records: list[KafkaRecord], result: Invocation) -> list[KafkaRecord]:
        """The records to retry: all of them on an error; with ReportBatchItemFailures, each
        reported partition from its lowest reported offset on (as Lambda resumes there)."""
        if not result.ok:
            return records
        if not self.spec.report_batch_item_failures or not isinstance(result.payload, dict):
            return []
        failures = result.payload.get("batchItemFailures") or []
        lowest: dict[str, int] = {}
        for failure in failures:
            item = failure.get("itemIdentifier") or {}
            try:
                partition, offset = str(item["partition"]), int(item["offset"])
            except (KeyError, TypeError, ValueError):
                return records  # a malformed response fails the whole batch, as in Lambda
            lowest[partition] = min(offset, lowest.get(partition, offset))
        return [
            r
            for r in records
            if f"{r.topic}-{r.partition}" in lowest
            and r.offset >= lowest[f"{r.topic}-{r.partition}"]
        ]

    def _to_destination(self, records: list[KafkaRecord], result: Invocation, attempt: int) -> None:
        self.totals.failed_to_destination += len(records)
        if not self.put_object or not self.spec.on_failure_bucket:
            self.log(
                f"{self.spec.function}: {len(records)} records dropped after {attempt} retries"
                " (no on-failure destination)"
            )
            return
        by_partition: dict[tuple[str, int], list[KafkaRecord]] = {}
        for record in records:
            by_partition.setdefault((record.topic, record.partition), []).append(record)
        now = datetime.now(UTC)
        for (topic, partition), group in by_partition.items():
            key = (
                f"aws/lambda/{self.spec.function}-{self.spec.name}/{topic}-{partition}/"
                f"{now:%Y/%m/%d/%Y-%m-%dT%H.%M.%S}-{uuid.uuid4()}"
            )
            body = {
                "version": "1.0",
                "timestamp": now.isoformat(),
                "requestContext": {
                    "requestId": str(uuid.uuid4()),
                    "functionArn": self.spec.function,
                    "condition": "RetryAttemptsExhausted",
                    "approximateInvokeCount": attempt + 1,
                },
                "responseContext": {
                    "statusCode": 200,
                    "executedVersion": "$LATEST",
                    "functionError": None if result.ok else "Unhandled",
                },
                "KafkaBatchInfo": {
                    "batchSize": len(group),
                    "topic": topic,
                    "partition": partition,
                    "firstOffset": group[0].offset,
                    "lastOffset": group[-1].offset,
                    "eventSourceArn": self.spec.event_source_arn,
                },
                "payload": msk_event(group, self.spec.event_source_arn, self.bootstrap_servers),
            }
            self.put_object(self.spec.on_failure_bucket, key, json.dumps(body).encode())
        self.log(
            f"{self.spec.function}: {len(records)} records sent to s3://{self.spec.on_failure_bucket}"
        )

    def _commit(self, batch: Iterable[KafkaRecord]) -> None:
        assert self._consumer is not None
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for record in batch:
            tp = TopicPartition(record.topic, record.partition)
            next_offset = record.offset + 1
            if tp not in offsets or offsets[tp].offset < next_offset:
                offsets[tp] = OffsetAndMetadata(next_offset, "", -1)
        try:
            self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The group rebalanced: the new owner re-reads from the last commit (at least once).
            self.log(
                f"{self.spec.function}: commit failed ({type(exc).__name__}); "
                "the batch will be redelivered"
            )


def _record_size(record: KafkaRecord) -> int:
    return len(json.dumps(msk_record(record)))


def _describe(
    function: str, records: list[KafkaRecord], result: Invocation, attempt: int, failed: int
) -> str:
    spans: dict[str, list[int]] = {}
    for record in records:
        spans.setdefault(f"{record.topic}-{record.partition}", []).append(record.offset)
    where = " ".join(f"{p}@{min(o)}..{max(o)}" for p, o in sorted(spans.items()))
    if result.ok and not failed:
        outcome = "ok"
    elif result.ok:
        outcome = f"{failed} item failures reported"
    else:
        error = result.error or {}
        outcome = f"error {error.get('errorType')}: {str(error.get('errorMessage'))[:120]}"
    retry = f" retry {attempt}" if attempt else ""
    took = f"{result.duration_ms:7.0f} ms"
    return f"{function:<24} {len(records):>5} records {where} {took}{retry} {outcome}"
