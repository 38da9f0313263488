"""The S3 archiver: every `order-placed` record, poison ones included, into the archive bucket.

The handler only wires Powertools and S3 around `orderstream.archive.archive_batch`. It never
imports kafka-python: the mapping hands it the records, and the import would only slow cold
starts.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.kafka import ConsumerRecords, kafka_consumer
from botocore.config import Config
from botocore.exceptions import ClientError

from orderstream import settings
from orderstream.archive import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    ArchivedBatch,
    StoredObject,
    WriteConflict,
    Years,
    archive_batch,
)
from orderstream.events import ORDER_EVENTS
from orderstream.redaction import masked_log_line

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from mypy_boto3_s3 import S3Client

logger = Logger(json_serializer=masked_log_line)
metrics = Metrics()

# Standard mode retries throttling (503 SlowDown), 5xx and connection errors with jittered
# exponential backoff. Adaptive mode's client-side rate limiter would only help many callers
# sharing one client; we make a few sequential calls. `total_max_attempts` counts the first
# try (botocore's `max_attempts` counts only retries). A batch touches a few objects per
# partition (an hour and 1,000 offsets each), each a read and a write, rarely a few more
# rounds when another poller races it; the function's Timeout (300 s) leaves room for many
# slow calls, and a batch that runs out fails whole and is merged again on its retry.
S3_CONFIG: Final = Config(
    retries={"mode": "standard", "total_max_attempts": 5},
    connect_timeout=3,
    read_timeout=15,
    tcp_keepalive=True,
)


class S3ArchiveStore:
    """The archive bucket, with S3's conditional writes (If-None-Match / If-Match)."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def get(self, key: str) -> StoredObject | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in {"NoSuchKey", "404"}:
                return None
            raise
        # botocore hands back the stored bytes: it does not undo Content-Encoding: gzip.
        return StoredObject(response["Body"].read(), response["ETag"])

    def put(
        self, key: str, body: bytes, metadata: Mapping[str, str], *, replaces: str | None
    ) -> None:
        condition = {"IfNoneMatch": "*"} if replaces is None else {"IfMatch": replaces}
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                Metadata=dict(metadata),
                ContentType=CONTENT_TYPE,
                ContentEncoding=CONTENT_ENCODING,
                **condition,  # type: ignore[arg-type]
            )
        except ClientError as exc:
            # 412: another writer's version is there now; 409 ConditionalRequestConflict: one
            # is being written; 404 NoSuchKey: the object read is gone. Each: read again.
            if _code(exc) in CONDITION_LOST:
                raise WriteConflict(f"{key}: {_code(exc)}") from exc
            raise


CONDITION_LOST: Final = frozenset(
    {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"}
)


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code") or status)


@functools.cache
def archive_store() -> S3ArchiveStore:
    """The container's store, built on first use so a missing bucket fails the invocation
    with its variable's name rather than the import."""
    client = boto3.client("s3", config=S3_CONFIG)
    return S3ArchiveStore(client, settings.required(settings.ARCHIVE_BUCKET))


@functools.cache
def archive_years() -> Years:
    return Years.parse(settings.required(settings.ARCHIVE_YEARS))


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=True)
@kafka_consumer(schema_config=ORDER_EVENTS)
def lambda_handler(event: ConsumerRecords, context: LambdaContext) -> dict[str, int]:
    try:
        outcome = archive_batch(event.records, store=archive_store(), years=archive_years())
    except Exception:
        # Failing the invocation makes the mapping redeliver the whole batch; the merge finds
        # the records already written and adds only the rest.
        logger.exception("Archiving the batch failed; the mapping will redeliver it")
        raise
    record_metrics(outcome)
    return outcome.summary()


def record_metrics(outcome: ArchivedBatch) -> None:
    metrics.add_metric(name="RecordsArchived", unit=MetricUnit.Count, value=outcome.archived)
    metrics.add_metric(name="RecordsAdded", unit=MetricUnit.Count, value=outcome.added)
    metrics.add_metric(name="ObjectsWritten", unit=MetricUnit.Count, value=len(outcome.written))
    metrics.add_metric(name="BytesWritten", unit=MetricUnit.Bytes, value=outcome.bytes_written)
    metrics.add_metric(name="PoisonRecordsArchived", unit=MetricUnit.Count, value=outcome.poison)
    metrics.add_metric(name="WriteConflicts", unit=MetricUnit.Count, value=outcome.conflicts)
    for archived in outcome.objects:
        logger.info(
            "Archived object" if archived.written else "Object already held the records",
            key=archived.key,
            delivered=archived.delivered,
            added=archived.added,
            records=archived.records,
            first_offset=archived.first_offset,
            last_offset=archived.last_offset,
            bytes=archived.size,
            conflicts=archived.conflicts,
        )
        if archived.poison_added:
            logger.warning(
                "Poison records archived raw",
                key=archived.key,
                poison=archived.poison_added,
                samples=[{"offset": o, "error": e} for o, e in archived.poison_samples],
            )
