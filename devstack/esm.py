"""An MSK event-source mapping, emulated: Kafka consumers that invoke a function, as Lambda's do.

Held to the Lambda developer guide, never to what our consumers need: batching, several
pollers with overlapping ranges on a rebalance, commits after success, the error-handling
controls and the on-failure destination. What is emulated and from which AWS page:
docs/design.md, "The event-source mapping emulator".
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
from devstack.journal import Entry, batch_entry
from devstack.msk_event import (
    MAX_PAYLOAD_BYTES,
    KafkaRecord,
    msk_event,
    msk_record,
    reported_failures,
)

DEFAULT_BATCHING_WINDOW_S = 0.5  # Lambda's default for Kafka sources
# "When you configure both infinite retries and an on-failure destination, Lambda automatically
# applies a maximum of 10 retry attempts." (Configuring error handling controls for Kafka...)
RETRIES_WITH_DESTINATION = 10
# The on-failure record's condition for records past MaximumRecordAgeInSeconds is not in the
# guide (only RetryAttemptsExhausted and MaximumPayloadSizeExceeded are): docs/deploy.md lists it.
CONDITION_RETRIES = "RetryAttemptsExhausted"
CONDITION_AGE = "RecordAgeExceeded"
_ERROR_CONTROLS = (
    "MaximumRetryAttempts",
    "MaximumRecordAgeInSeconds",
    "BisectBatchOnFunctionError",
    "FunctionResponseTypes",
)


class MappingConfigError(ValueError):
    """A mapping Lambda would refuse to create; the message names the property."""


POLL_SLICE_MS = 200  # how long a poller waits for records before it looks at its stop flag


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
    maximum_record_age_s: int = -1  # -1: no limit
    bisect_on_error: bool = False
    report_batch_item_failures: bool = False
    on_failure_bucket: str | None = None
    filters: list[dict[str, Any]] = field(default_factory=list)
    maximum_pollers: int = 1
    function_arn: str | None = None  # the function's own ARN (physical name), once known

    @property
    def uuid(self) -> str:
        """A stable stand-in for the mapping's UUID (it names the on-failure objects)."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"orderstream:{self.function}/{self.name}"))

    @property
    def retries(self) -> int:
        if self.maximum_retry_attempts == -1 and self.on_failure_bucket:
            return RETRIES_WITH_DESTINATION
        return self.maximum_retry_attempts

    @classmethod
    def from_event(cls, function: str, name: str, props: dict[str, Any]) -> MappingSpec:
        _check(function, name, props)
        destination = props.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
        window = props.get("MaximumBatchingWindowInSeconds")
        pollers = props.get("ProvisionedPollerConfig") or {}
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
            maximum_record_age_s=int(props.get("MaximumRecordAgeInSeconds", -1)),
            bisect_on_error=bool(props.get("BisectBatchOnFunctionError", False)),
            report_batch_item_failures="ReportBatchItemFailures"
            in props.get("FunctionResponseTypes", []),
            # The template names the bucket by ARN (arn:aws:s3:::name).
            on_failure_bucket=str(destination).rsplit(":", 1)[-1] if destination else None,
            filters=[
                json.loads(f["Pattern"]) for f in props.get("FilterCriteria", {}).get("Filters", [])
            ],
            maximum_pollers=int(pollers.get("MaximumPollers", 1)),
        )


def _check(function: str, name: str, props: dict[str, Any]) -> None:
    """The documented limits: msk-esm-parameters, kafka-retry-configurations and
    kafka-scaling-modes in the Lambda guide."""

    def refuse(reason: str) -> None:
        raise MappingConfigError(f"{function}.Events.{name}: {reason}")

    def within(key: str, low: int, high: int, infinite: bool = False) -> None:
        if key not in props:
            return
        value = int(props[key])
        if not (low <= value <= high or (infinite and value == -1)):
            allowed = f"{low}-{high}" + (" or -1" if infinite else "")
            refuse(f"{key} must be {allowed}, not {value}")

    within("BatchSize", 1, 10_000)
    within("MaximumBatchingWindowInSeconds", 0, 300)
    within("MaximumRetryAttempts", 0, 10_000, infinite=True)
    within("MaximumRecordAgeInSeconds", 60, 604_800, infinite=True)
    pollers = props.get("ProvisionedPollerConfig")
    if pollers is None:
        used = [key for key in _ERROR_CONTROLS if key in props]
        if used:
            refuse(f"{', '.join(used)} need provisioned mode (ProvisionedPollerConfig)")
        return
    low, high = int(pollers.get("MinimumPollers", 1)), int(pollers.get("MaximumPollers", 200))
    if not 1 <= low <= 200 or not 1 <= high <= 2000 or high < low:
        refuse(f"pollers must be 1 <= MinimumPollers ({low}) <= MaximumPollers ({high}) <= 2000")


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
    refused_commits: int = 0  # a poller committed a partition it had lost in a rebalance


Invoke = Callable[[dict[str, Any]], Invocation]
Log = Callable[[str], None]
Record = Callable[[Entry], None]
PutObject = Callable[[str, str, bytes], None]


class EventSourceMapping:
    """Runs one mapping until `stop()`: a coordinator that assigns partitions to pollers."""

    def __init__(
        self,
        spec: MappingSpec,
        bootstrap_servers: str,
        invoke: Invoke,
        put_object: PutObject | None = None,
        log: Log = print,
        journal: Record | None = None,
        retry_backoff_s: float = 0.5,
        refresh_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.bootstrap_servers = bootstrap_servers
        self.invoke = invoke
        self.put_object = put_object
        self.log = log
        self.journal = journal
        self.retry_backoff_s = retry_backoff_s
        self.refresh_s = refresh_s
        self.clock = clock
        self.totals = BatchResult()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rebalance = threading.Event()
        self._thread: threading.Thread | None = None
        self._pollers: list[_Poller] = []
        self._partitions: list[TopicPartition] = []
        self._generation = 0

    # -- lifecycle

    def start(self) -> EventSourceMapping:
        self._thread = threading.Thread(
            target=self._coordinate, name=f"esm-{self.spec.function}", daemon=True
        )
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Start no new batch or retry; `stop()` then waits for the current invocations."""
        self._stop.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop polling; each poller closes its consumer once its current invocation, if any,
        has returned. Nothing unprocessed is committed."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        for poller in self._pollers:
            poller.join(max(0.0, deadline - time.monotonic()))

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def rebalance(self) -> None:
        """Move every partition to another poller now, as a Kafka group rebalance does."""
        self._rebalance.set()

    def assignment(self) -> dict[int, list[TopicPartition]]:
        """Which poller owns which partitions (tests, status)."""
        return {p.index: sorted(p.owned()) for p in self._pollers}

    # -- the coordinator

    def _coordinate(self) -> None:
        metadata: KafkaConsumer | None = None
        shift = 0
        try:
            while not self._stop.is_set():
                try:
                    if metadata is None:
                        metadata = KafkaConsumer(
                            bootstrap_servers=self.bootstrap_servers,
                            client_id=f"devstack-esm-{self.spec.function}-metadata",
                        )
                    found = self._discover(metadata)
                except Exception as exc:  # the broker is away: keep the current assignment
                    self.error = exc
                    self._stop.wait(min(self.refresh_s, 1.0))
                    continue
                moved = self._rebalance.is_set()
                if not found:
                    self._rebalance.clear()  # nothing to move yet
                if found and (found != self._partitions or moved):
                    if moved:
                        shift += 1
                        self._rebalance.clear()
                    self._assign(found, shift)
                    self._partitions = found
                # A topic that does not exist yet is looked for often; later, at `refresh_s`.
                deadline = time.monotonic() + (0.2 if not found else self.refresh_s)
                while time.monotonic() < deadline and not self._rebalance.is_set():
                    if self._stop.wait(0.05):
                        break
        finally:
            if metadata is not None:
                metadata.close()

    def _discover(self, metadata: KafkaConsumer) -> list[TopicPartition]:
        metadata.topics()  # a metadata request: partitions added since are seen
        found: list[TopicPartition] = []
        for topic in self.spec.topics:
            found += [
                TopicPartition(topic, p) for p in sorted(metadata.partitions_for_topic(topic) or ())
            ]
        return found

    def _assign(self, partitions: list[TopicPartition], shift: int) -> None:
        """Round-robin over min(MaximumPollers, partitions) pollers, rotated by `shift`."""
        wanted = max(1, min(self.spec.maximum_pollers, len(partitions)))
        while len(self._pollers) < wanted:
            poller = _Poller(self, len(self._pollers))
            self._pollers.append(poller)
            poller.start()
        self._generation += 1
        plan: dict[int, set[TopicPartition]] = {p.index: set() for p in self._pollers}
        for i, tp in enumerate(partitions):
            plan[(i + shift) % wanted].add(tp)
        for poller in self._pollers:
            poller.reassign(plan[poller.index], self._generation)
        self.log(
            f"{self.spec.function}: assignment {self._generation}: "
            + "; ".join(
                f"poller {i} <- {','.join(str(tp.partition) for tp in sorted(tps)) or '-'}"
                for i, tps in sorted(plan.items())
            )
        )

    # -- shared by the pollers

    def count(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self.totals, name, getattr(self.totals, name) + value)

    def to_destination(
        self, records: list[KafkaRecord], condition: str, result: Invocation | None, attempt: int
    ) -> None:
        """One on-failure object for the discarded records, in the guide's shape for Kafka."""
        self.count(failed_to_destination=len(records))
        if not self.put_object or not self.spec.on_failure_bucket:
            self.log(
                f"{self.spec.function}: {len(records)} records dropped ({condition}; "
                "no on-failure destination)"
            )
            return
        key, body = on_failure_record(
            self.spec, self.bootstrap_servers, records, condition, result, attempt, self.clock()
        )
        self.put_object(self.spec.on_failure_bucket, key, body)
        self.log(
            f"{self.spec.function}: {len(records)} records sent to "
            f"s3://{self.spec.on_failure_bucket}/{key} ({condition})"
        )


def on_failure_record(
    spec: MappingSpec,
    bootstrap_servers: str,
    records: Sequence[KafkaRecord],
    condition: str,
    result: Invocation | None,
    attempt: int,
    now_s: float,
) -> tuple[str, bytes]:
    """The S3 key and body Lambda writes for a discarded Kafka batch.

    Body: the guide's invocation record for Kafka ("Capturing discarded batches for Amazon MSK
    and self-managed Apache Kafka event sources"): requestContext, responseContext, version,
    timestamp, KafkaBatchInfo (recordsInfo per "<topic>-<partition>", offsets as strings) and,
    for S3 only, `payload`: the invocation's event as an escaped JSON string. Key: the guide
    documents it for Kinesis and DynamoDB (aws/lambda/<ESM-UUID>/<shardID>/YYYY/MM/DD/
    YYYY-MM-DDTHH.MM.SS-<random UUID>); for Kafka the first record's "<topic>-<partition>"
    stands in the shard's place, which docs/deploy.md lists to confirm.
    """
    now = datetime.fromtimestamp(now_s, UTC)
    event = msk_event(records, spec.event_source_arn, bootstrap_servers)
    payload = json.dumps(event)
    first = records[0]
    key = (
        f"aws/lambda/{spec.uuid}/{first.topic}-{first.partition}/"
        f"{now:%Y/%m/%d/%Y-%m-%dT%H.%M.%S}-{uuid.uuid4()}"
    )
    records_info: dict[str, dict[str, str]] = {}
    for name, group in event["records"].items():
        records_info[name] = {
            "firstRecordOffset": str(group[0]["offset"]),
            "lastRecordOffset": str(group[-1]["offset"]),
            "firstRecordTimestamp": _iso(group[0]["timestamp"]),
            "lastRecordTimestamp": _iso(group[-1]["timestamp"]),
        }
    body = {
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": spec.function_arn
            or f"arn:aws:lambda:{_region(spec)}:{_account(spec)}:function:{spec.function}",
            "condition": condition,
            "approximateInvokeCount": attempt + 1 if result is not None else attempt,
        },
        "responseContext": None
        if result is None
        else {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": None if result.ok else "Unhandled",
        },
        "version": "1.0",
        "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "KafkaBatchInfo": {
            "batchSize": len(records),
            "eventSourceArn": spec.event_source_arn,
            "bootstrapServers": bootstrap_servers,
            "payloadSize": len(payload.encode()),
            "recordsInfo": records_info,
        },
        "payload": payload,
    }
    return key, json.dumps(body).encode()


def _iso(timestamp_ms: int) -> str:
    try:
        at = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return str(timestamp_ms)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _region(spec: MappingSpec) -> str:
    parts = spec.event_source_arn.split(":")
    return parts[3] if len(parts) > 4 else "local"


def _account(spec: MappingSpec) -> str:
    parts = spec.event_source_arn.split(":")
    return parts[4] if len(parts) > 4 else "000000000000"


class _Poller:
    """One event poller: its own consumer, the partitions the coordinator gave it, one
    invocation at a time."""

    def __init__(self, mapping: EventSourceMapping, index: int) -> None:
        self.mapping = mapping
        self.spec = mapping.spec
        self.index = index
        self._lock = threading.Lock()
        self._owned: set[TopicPartition] = set()
        self._since: dict[TopicPartition, int] = {}  # the assignment that gave each partition
        self._pending: tuple[set[TopicPartition], int] | None = None
        self._consumer: KafkaConsumer | None = None
        self._carry: list[KafkaRecord] = []  # fetched but past the payload cap: next batch
        self._thread = threading.Thread(
            target=self._run, name=f"esm-{self.spec.function}-{index}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def owned(self) -> set[TopicPartition]:
        with self._lock:
            return set(self._owned)

    def reassign(self, partitions: set[TopicPartition], generation: int) -> None:
        """Take effect before this poller's next fetch; an invocation in flight runs on."""
        with self._lock:
            for tp in partitions - self._owned:
                self._since[tp] = generation
            self._owned = set(partitions)
            self._pending = (set(partitions), generation)

    def held_since(self, generation: int) -> set[TopicPartition]:
        """The partitions this poller has owned without a break since `generation`."""
        with self._lock:
            return {tp for tp in self._owned if self._since.get(tp, 0) <= generation}

    @property
    def generation(self) -> int:
        return self.mapping._generation

    @property
    def _stop(self) -> threading.Event:
        return self.mapping._stop

    def _log(self, message: str) -> None:
        self.mapping.log(f"{self.spec.function}[{self.index}]: {message}")

    # -- the loop

    def _run(self) -> None:
        # The consumer lives and dies in this thread: kafka-python consumers are not thread-safe.
        # It is assigned partitions rather than joining the group (Tansu's group coordination was
        # seen to wedge after quick join/leave cycles): the group still holds the committed
        # offsets, and the coordinator plays the group's part, rebalances included.
        failures = 0
        while self._consumer is None and not self._stop.is_set():
            try:
                self._consumer = KafkaConsumer(
                    bootstrap_servers=self.mapping.bootstrap_servers,
                    group_id=self.spec.group_id,
                    client_id=f"devstack-esm-{self.spec.function}-{self.index}",
                    enable_auto_commit=False,
                    auto_offset_reset="earliest"
                    if self.spec.starting_position == "TRIM_HORIZON"
                    else "latest",
                    max_poll_records=self.spec.batch_size,
                )
            except Exception as exc:  # the broker is away: a poller waits for it, as Lambda's do
                failures += 1
                self.mapping.error = exc
                self._log(f"cannot reach the broker yet ({type(exc).__name__}); retrying")
                self._stop.wait(min(5.0, 0.2 * 2 ** min(failures, 5)))
        if self._consumer is None:
            return
        try:
            self._loop()
        finally:
            self._consumer.close(autocommit=False)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._take_assignment()
                generation = self.generation
                batch = self._collect()
                if batch:
                    self._process(batch, generation)
                failures = 0
            except Exception as exc:
                # Like Lambda's pollers, a mapping outlives a broker outage: it logs, backs off
                # and resumes from the last committed offsets. Nothing was committed for the
                # batch in hand, so it is fetched and delivered again.
                failures += 1
                self.mapping.error = exc
                self._log(f"polling failed ({type(exc).__name__}: {exc}); retrying")
                self._carry = []
                self._rewind(self._consumer_assignment())
                self._stop.wait(min(5.0, 0.2 * 2 ** min(failures, 5)))

    def _consumer_assignment(self) -> set[TopicPartition]:
        assert self._consumer is not None
        return set(self._consumer.assignment())

    def _take_assignment(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        partitions, _generation = pending
        assert self._consumer is not None
        self._consumer.assign(sorted(partitions))
        # An eager rebalance: every partition, kept or gained, restarts from the group's
        # committed offset (a gained one whatever another poller is still doing with it), and
        # records fetched before it are dropped.
        self._carry = []
        self._rewind(partitions)

    def _rewind(self, partitions: Iterable[TopicPartition]) -> None:
        """Go back to the committed offsets, so records fetched but not processed come again."""
        assert self._consumer is not None
        try:
            for tp in partitions:
                committed = self._consumer.committed(tp)
                if committed is not None:
                    self._consumer.seek(tp, committed)
                elif self.spec.starting_position == "TRIM_HORIZON":
                    self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek_to_end(tp)
        except Exception as exc:  # the broker is still away; the next failure rewinds again
            self._log(f"could not rewind yet ({type(exc).__name__})")

    def _collect(self) -> list[KafkaRecord]:
        """One batch: BatchSize records, or the batching window, or the payload cap."""
        assert self._consumer is not None
        if not self._consumer_assignment():
            self._stop.wait(0.2)
            return []
        batch: list[KafkaRecord] = []
        size = 512
        carried, self._carry = self._carry, []
        for record in carried:  # what the last batch could not hold, under the same cap
            size = self._take(batch, size, record)
        if self._carry:
            return batch
        opened = time.monotonic() if batch else None
        while not self._stop.is_set() and len(batch) < self.spec.batch_size:
            if opened is not None and time.monotonic() - opened >= self.spec.batching_window_s:
                break
            with self._lock:
                if self._pending is not None:
                    break  # reassigned: deliver what is in hand, then take the new partitions
            # At most POLL_SLICE_MS at a time, whatever the window (the archiver's is 60 s): a
            # stop is seen within a slice, not at the window's end.
            left_ms = (
                POLL_SLICE_MS
                if opened is None
                else max(1, int((self.spec.batching_window_s - (time.monotonic() - opened)) * 1000))
            )
            wait_ms = min(POLL_SLICE_MS, left_ms)
            fetched = self._consumer.poll(
                timeout_ms=wait_ms, max_records=self.spec.batch_size - len(batch)
            )
            for records in fetched.values():
                for record in records:
                    size = self._take(batch, size, record)
            if batch and opened is None:
                opened = time.monotonic()
            if self._carry:
                break
        return batch

    def _take(self, batch: list[KafkaRecord], size: int, record: KafkaRecord) -> int:
        """Add `record` to `batch` under the payload cap, else carry it (and every record after
        it, to keep offset order) to the next batch; the batch's new size."""
        record_size = _record_size(record)
        if batch and (size + record_size > MAX_PAYLOAD_BYTES or self._carry):
            self._carry.append(record)
            return size
        batch.append(record)
        return size + record_size

    def _process(self, batch: list[KafkaRecord], generation: int) -> None:
        delivered = [r for r in batch if passes_filters(self.spec.filters, msk_record(r))]
        self.mapping.count(filtered=len(batch) - len(delivered))
        if delivered and not self._deliver(delivered, attempt=0):
            # Stopped, or some partitions moved away mid-delivery: nothing is committed, and
            # the partitions still owned go back to their committed offsets, so no record the
            # function has not processed is skipped.
            if not self._stop.is_set():
                involved = {TopicPartition(r.topic, r.partition) for r in [*batch, *self._carry]}
                self._carry = []
                self._rewind(self.owned() & involved)
            return
        self._commit(batch, generation)

    def _expired(self, records: list[KafkaRecord]) -> list[KafkaRecord]:
        """Records past MaximumRecordAgeInSeconds: never sent to the function again."""
        if self.spec.maximum_record_age_s < 0:
            return []
        oldest_ms = (self.mapping.clock() - self.spec.maximum_record_age_s) * 1000
        return [r for r in records if r.timestamp < oldest_ms]

    def _deliver(self, records: list[KafkaRecord], attempt: int) -> bool:
        """Invoke until the records are processed or sent to the destination (True), or the
        mapping stops or the poller loses their partitions first (False)."""
        while not self._stop.is_set():
            owned = self.owned()
            mine = [r for r in records if TopicPartition(r.topic, r.partition) in owned]
            if not mine:
                self._log("partitions moved to another poller mid-retry; leaving them to it")
                return False
            records = mine
            expired = self._expired(records)
            if expired:
                self.mapping.to_destination(expired, CONDITION_AGE, None, attempt)
                gone = {id(r) for r in expired}
                records = [r for r in records if id(r) not in gone]
                if not records:
                    return True
            event = msk_event(records, self.spec.event_source_arn, self.mapping.bootstrap_servers)
            started = time.time()
            result = self.mapping.invoke(event)
            self.mapping.count(invocations=1)
            failed, unreadable = failed_records(self.spec, records, result)
            entry = batch_entry(
                self.spec.function,
                f"mapping {self.spec.name}",
                [(r.topic, r.partition, r.offset) for r in records],
                result,
                started,
                len(failed),
                attempt,
                unreadable=unreadable,
            )
            self._log(entry.describe())
            if self.mapping.journal is not None:
                self.mapping.journal(entry)
            if not failed:
                self.mapping.count(delivered=len(records))
                return True
            self.mapping.count(delivered=len(records) - len(failed))
            if self.spec.bisect_on_error and not result.ok and len(failed) > 1:
                # Splitting does not count against the retry quota (the guide says so for
                # streams; the Kafka page is silent): each half starts at this attempt.
                middle = len(failed) // 2
                return self._deliver(failed[:middle], attempt) and self._deliver(
                    failed[middle:], attempt
                )
            records = failed
            if 0 <= self.spec.retries <= attempt:
                self.mapping.to_destination(records, CONDITION_RETRIES, result, attempt)
                return True
            attempt += 1
            self._stop.wait(min(5.0, self.mapping.retry_backoff_s * 2 ** min(attempt - 1, 4)))
        return False

    def _commit(self, batch: Iterable[KafkaRecord], generation: int) -> None:
        assert self._consumer is not None
        owned = self.held_since(generation)
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        refused: set[TopicPartition] = set()
        for record in batch:
            tp = TopicPartition(record.topic, record.partition)
            if tp not in owned:
                refused.add(tp)  # Kafka refuses a commit for a partition lost since the fetch
                continue
            next_offset = record.offset + 1
            if tp not in offsets or offsets[tp].offset < next_offset:
                offsets[tp] = OffsetAndMetadata(next_offset, "", -1)
        if refused:
            self.mapping.count(refused_commits=len(refused))
            self._log(
                "commit refused for "
                + ",".join(f"{tp.topic}-{tp.partition}" for tp in sorted(refused))
                + " (rebalanced away): their new owner delivers them again"
            )
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            self._log(f"commit failed ({type(exc).__name__}); the batch will be redelivered")


def failed_records(
    spec: MappingSpec, records: list[KafkaRecord], result: Invocation
) -> tuple[list[KafkaRecord], bool]:
    """The records to retry: all of them on an error or a response Lambda cannot read; with
    ReportBatchItemFailures, each reported partition from its lowest reported offset on. And
    whether the function answered but its response could not be read."""
    if not result.ok:
        return records, False
    if not spec.report_batch_item_failures:
        return [], False
    reported = reported_failures(
        result.payload, {(f"{r.topic}-{r.partition}", r.offset) for r in records}
    )
    if reported is None:
        return records, True  # "treated as failure and entire batch will be retried"
    failed = [
        r
        for r in records
        if f"{r.topic}-{r.partition}" in reported
        and r.offset >= reported[f"{r.topic}-{r.partition}"]
    ]
    return failed, False


def _record_size(record: KafkaRecord) -> int:
    return len(json.dumps(msk_record(record)))
