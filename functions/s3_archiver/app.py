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
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.kafka import ConsumerRecords, kafka_consumer
from botocore.config import Config

from orderstream import settings
from orderstream.archive import CONTENT_ENCODING, CONTENT_TYPE, ArchiveOutcome, archive_batch
from orderstream.events import ORDER_EVENTS

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from mypy_boto3_s3 import S3Client

logger = Logger()
tracer = Tracer()
metrics = Metrics()

# Standard mode retries throttling (503 SlowDown), 5xx and connection errors with jittered
# exponential backoff. Adaptive mode's client-side rate limiter would only help many callers
# sharing one client; we make a few sequential puts. `total_max_attempts` counts the first
# try (botocore's `max_attempts` counts only retries). Worst case per object, 5 attempts with
# these timeouts plus backoff stay under two minutes; the function's Timeout must allow that.
S3_CONFIG: Final = Config(
    retries={"mode": "standard", "total_max_attempts": 5},
    connect_timeout=3,
    read_timeout=15,
    tcp_keepalive=True,
)


class S3ArchiveStore:
    """The archive bucket. One PutObject per object: S3 shows it whole or not at all."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def put(self, key: str, body: bytes, metadata: Mapping[str, str]) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            Metadata=dict(metadata),
            ContentType=CONTENT_TYPE,
            ContentEncoding=CONTENT_ENCODING,
        )


@functools.cache
def archive_store() -> S3ArchiveStore:
    """The container's store, built on first use so a missing bucket fails the invocation
    with its variable's name rather than the import."""
    client = boto3.client("s3", config=S3_CONFIG)
    return S3ArchiveStore(client, settings.required(settings.ARCHIVE_BUCKET))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
@kafka_consumer(schema_config=ORDER_EVENTS)
def lambda_handler(event: ConsumerRecords, context: LambdaContext) -> dict[str, int]:
    try:
        outcome = archive_batch(event.records, store=archive_store())
    except Exception:
        # Failing the invocation makes the mapping redeliver the whole batch; objects already
        # written are rewritten with the same bytes.
        logger.exception("Archiving the batch failed; the mapping will redeliver it")
        raise
    record_metrics(outcome)
    return outcome.summary()


def record_metrics(outcome: ArchiveOutcome) -> None:
    metrics.add_metric(name="RecordsArchived", unit=MetricUnit.Count, value=outcome.archived)
    metrics.add_metric(name="ObjectsWritten", unit=MetricUnit.Count, value=len(outcome.objects))
    metrics.add_metric(name="BytesWritten", unit=MetricUnit.Bytes, value=outcome.bytes_written)
    metrics.add_metric(name="PoisonRecordsArchived", unit=MetricUnit.Count, value=outcome.poison)
    for archived in outcome.objects:
        logger.info(
            "Archived object",
            key=archived.key,
            records=archived.records,
            first_offset=archived.first_offset,
            last_offset=archived.last_offset,
            bytes=archived.size,
            poison=archived.poison,
        )
        if archived.poison:
            logger.warning(
                "Poison records archived raw",
                key=archived.key,
                poison=archived.poison,
                samples=[{"offset": o, "error": e} for o, e in archived.poison_samples],
            )
