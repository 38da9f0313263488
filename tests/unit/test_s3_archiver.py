"""The archiver's Lambda handler against moto S3, fed Lambda's MSK event shape."""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any
from urllib.parse import unquote

import boto3
import pytest
from aws_lambda_powertools.utilities.kafka import ConsumerRecords
from botocore.awsrequest import AWSPreparedRequest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from devstack.context import LambdaContext
from devstack.msk_event import msk_event, sample_order_records
from orderstream import settings
from orderstream.archive import WriteConflict
from orderstream.events import ORDER_EVENTS
from tests.fakes import emitted_metric_units, emitted_metrics, in_this_thread, logger_output
from tests.samples import load_event, template_archive_years
from tests.unit.conftest import s3_with_bucket

BUCKET = "orderstream-archive-test"
HOUR_14 = "topics/order-placed/year=2026/month=11/day=25/hour=14"
SAMPLE_KEYS = [
    f"{HOUR_14}/order-placed+0+00000000000000000000.jsonl.gz",
    f"{HOUR_14}/order-placed+1+00000000000000000000.jsonl.gz",
    f"{HOUR_14}/order-placed+2+00000000000000000000.jsonl.gz",
]
CLUSTER_ARN = "arn:aws:kafka:eu-west-1:123456789012:cluster/orderstream/6f1a2b3c-s1"


@pytest.fixture
def s3(aws: None) -> Any:
    return s3_with_bucket(BUCKET)


@pytest.fixture
def archiver(s3: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The handler module, imported once the test environment (metrics namespace) is set."""
    from functions.s3_archiver import app

    monkeypatch.setenv(settings.ARCHIVE_BUCKET, BUCKET)
    monkeypatch.setenv(settings.ARCHIVE_YEARS, template_archive_years())
    app.archive_store.cache_clear()
    app.archive_years.cache_clear()
    yield app
    app.archive_store.cache_clear()


def invoke(archiver: ModuleType, event: dict[str, Any]) -> Any:
    return archiver.lambda_handler(event, LambdaContext(function_name="orderstream-s3-archiver"))


def three_partition_event() -> dict[str, Any]:
    """msk-orders.json (partitions 0 and 1) plus msk-poison.json (partition 2)."""
    event = load_event("msk-orders.json")
    event["records"] |= load_event("msk-poison.json")["records"]
    return event


def archive_contents(s3: Any) -> dict[str, bytes]:
    listing = s3.list_objects_v2(Bucket=BUCKET)
    return {
        item["Key"]: s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        for item in listing.get("Contents", [])
    }


def lines_of(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gzip.decompress(body).decode().splitlines()]


def inject_put_failures(archiver: ModuleType, key_part: str, times: int | None = None) -> list[str]:
    """Make PutObject for keys containing `key_part` fail to connect, `times` times (None:
    always). Raising ahead of moto keeps the request from reaching it, as a real network
    failure would; returning an error response instead would still let moto store the object.
    Returns the attempts it failed."""
    attempts: list[str] = []

    def fail(request: AWSPreparedRequest, **_: Any) -> None:
        if key_part in unquote(request.url) and (times is None or len(attempts) < times):
            attempts.append(request.url)
            raise EndpointConnectionError(endpoint_url=request.url)

    archiver.archive_store().client.meta.events.register_first("before-send.s3.PutObject", fail)
    return attempts


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore sleeps between attempts via time.sleep; record the delays instead."""
    delays: list[float] = []
    monkeypatch.setattr("botocore.endpoint.time.sleep", in_this_thread(delays.append, time.sleep))
    return delays


# --- tests -------------------------------------------------------------------------------------


def test_three_partitions_become_three_objects(
    archiver: ModuleType, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    event = three_partition_event()

    summary = invoke(archiver, event)

    contents = archive_contents(s3)
    assert sorted(contents) == SAMPLE_KEYS
    assert summary == {
        "archived": 8,
        "added": 8,
        "poison": 1,
        "objects": 3,
        "bytes": sum(map(len, contents.values())),
        "conflicts": 0,
    }
    groups = sorted(event["records"].values(), key=lambda group: group[0]["partition"])
    for key, group in zip(SAMPLE_KEYS, groups, strict=True):
        lines = lines_of(contents[key])
        assert [line["offset"] for line in lines] == [raw["offset"] for raw in group]
        for line, raw in zip(lines, group, strict=True):
            assert line["key"].encode() == base64.b64decode(raw["key"])
            assert [(h["name"], h["value"].encode()) for h in line["headers"]] == [
                (name, bytes(octets)) for chunk in raw["headers"] for name, octets in chunk.items()
            ]
            if line["error"] is None:
                assert line["value"] == json.loads(base64.b64decode(raw["value"]))
            else:
                assert line["value_base64"] == raw["value"]
    head = s3.head_object(Bucket=BUCKET, Key=SAMPLE_KEYS[1])
    assert head["ContentType"] == "application/x-ndjson"
    assert head["ContentEncoding"] == "gzip"
    assert head["Metadata"] == {
        "record-count": "3",
        "first-offset": "140",
        "last-offset": "142",
        "poison-count": "0",
    }
    out = capsys.readouterr().out
    assert emitted_metric_units(out) | {"ColdStart": None} == {
        "RecordsArchived": "Count",
        "RecordsAdded": "Count",
        "ObjectsWritten": "Count",
        "BytesWritten": "Bytes",
        "PoisonRecordsArchived": "Count",
        "WriteConflicts": "Count",
        "ColdStart": None,
    }
    assert emitted_metrics(out) | {"ColdStart": None} == {
        "RecordsArchived": 8.0,
        "RecordsAdded": 8.0,
        "ObjectsWritten": 3.0,
        "BytesWritten": float(summary["bytes"]),
        "PoisonRecordsArchived": 1.0,
        "WriteConflicts": 0.0,
        "ColdStart": None,
    }


def test_same_batch_twice_writes_no_second_version(archiver: ModuleType, s3: Any) -> None:
    invoke(archiver, three_partition_event())
    first = archive_contents(s3)

    summary = invoke(archiver, three_partition_event())

    assert (summary["archived"], summary["added"], summary["objects"]) == (8, 0, 0)
    assert archive_contents(s3) == first
    assert sorted(first) == SAMPLE_KEYS
    versions = s3.list_object_versions(Bucket=BUCKET).get("Versions", [])
    assert len(versions) == 3


def test_overlapping_redeliveries_merge_through_s3s_conditional_writes(
    archiver: ModuleType, s3: Any
) -> None:
    records = sample_order_records(60, partitions=1)
    invoke(archiver, msk_event(records[:40], CLUSTER_ARN, "b-1.example:9098"))
    invoke(archiver, msk_event(records[20:60], CLUSTER_ARN, "b-1.example:9098"))
    invoke(archiver, msk_event(records[:10], CLUSTER_ARN, "b-1.example:9098"))

    contents = archive_contents(s3)
    offsets = sorted(line["offset"] for body in contents.values() for line in lines_of(body))
    assert offsets == list(range(60))
    s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": key} for key in contents]})
    invoke(archiver, msk_event(records, CLUSTER_ARN, "b-1.example:9098"))
    assert archive_contents(s3) == contents  # the bytes of one clean delivery


def test_a_write_that_loses_the_race_reads_again_and_merges(archiver: ModuleType, s3: Any) -> None:
    """Another poller writes between this one's read and write: S3 answers 412 to the If-Match
    put, and the archiver merges with what the other wrote."""
    records = sample_order_records(30, partitions=1)
    invoke(archiver, msk_event(records[:5], CLUSTER_ARN, "b-1.example:9098"))
    [key] = archive_contents(s3)
    other = boto3.client("s3")
    slipped_in: list[str] = []

    def other_poller(params: dict[str, Any], **_: Any) -> None:
        if params.get("IfMatch") and not slipped_in:
            slipped_in.append(params["Key"])
            store = archiver.S3ArchiveStore(other, BUCKET)
            archiver.archive_batch(
                ConsumerRecords(
                    msk_event(records[10:30], CLUSTER_ARN, "b-1.example:9098"), ORDER_EVENTS
                ).records,
                store=store,
                years=archiver.archive_years(),
            )

    archiver.archive_store().client.meta.events.register(
        "provide-client-params.s3.PutObject", other_poller
    )
    summary = invoke(archiver, msk_event(records[:20], CLUSTER_ARN, "b-1.example:9098"))

    assert slipped_in == [key]
    assert (
        summary["conflicts"] == 1
    )  # the race; its create-first try that met the object is not one
    [body] = archive_contents(s3).values()
    assert [line["offset"] for line in lines_of(body)] == list(range(30))


@pytest.mark.parametrize(
    ("status", "code"), [(409, "ConditionalRequestConflict"), (412, "PreconditionFailed")]
)
def test_s3s_condition_answers_are_conflicts_and_others_are_errors(
    archiver: ModuleType, status: int, code: str
) -> None:
    store = archiver.S3ArchiveStore(boto3.client("s3"), BUCKET)
    answers = iter([(status, code)])

    def answer(**_: Any) -> None:
        # Raised ahead of moto, which would otherwise store the object whatever we answer.
        found = next(answers, None)
        if found is not None:
            error: Any = {
                "Error": {"Code": found[1], "Message": "m"},
                "ResponseMetadata": {"HTTPStatusCode": found[0]},
            }
            raise ClientError(error, "PutObject")

    store.client.meta.events.register_first("before-send.s3.PutObject", answer)
    with pytest.raises(WriteConflict, match=code):
        store.put("topics/x", b"body", {}, replaces=None)
    store.put("topics/x", b"body", {}, replaces=None)  # the next attempt goes through
    assert store.get("topics/x") is not None
    with pytest.raises(WriteConflict, match="PreconditionFailed"):
        store.put("topics/x", b"other", {}, replaces=None)  # moto's own 412: it exists


@pytest.mark.parametrize("sample", ["msk-poison.json", "msk-null-key.json"])
def test_poison_and_null_key_samples_are_archived_and_the_handler_succeeds(
    archiver: ModuleType, s3: Any, sample: str
) -> None:
    event = load_event(sample)
    [group] = event["records"].values()

    summary = invoke(archiver, event)

    [body] = archive_contents(s3).values()
    lines = lines_of(body)
    assert len(lines) == len(group) == summary["archived"]
    for line, raw in zip(lines, group, strict=True):
        if "key" not in raw:
            assert (line["key"], line["key_encoding"]) == (None, None)
        if raw["offset"] == 241:  # the poison record
            assert line["value"] is None
            assert line["value_base64"] == raw["value"]
            assert line["error"].startswith("value is not UTF-8 JSON")
        else:
            assert line["error"] is None
            assert line["value"]["event_type"] == "order-placed"
    assert summary["poison"] == (1 if sample == "msk-poison.json" else 0)


@pytest.mark.slow
def test_a_batch_of_10000_one_kilobyte_orders_is_archived(archiver: ModuleType, s3: Any) -> None:
    records = sample_order_records(10_000, partitions=4)
    assert 900 <= len(records[0].value or b"") <= 1100
    event = msk_event(records, CLUSTER_ARN, "b-1.example:9098")

    summary = invoke(archiver, event)

    contents = archive_contents(s3)
    assert summary["archived"] == 10_000
    assert summary["objects"] == len(contents)
    assert summary["poison"] == 0
    for partition in range(4):
        keys = sorted(k for k in contents if f"/order-placed+{partition}+" in k)
        offsets = [line["offset"] for key in keys for line in lines_of(contents[key])]
        assert sorted(offsets) == list(range(2_500))  # each once, across hours and blocks
    assert {k.rsplit("+", 1)[1] for k in contents} == {
        f"{block:020d}.jsonl.gz" for block in (0, 1000, 2000)
    }


@pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")
def test_a_failed_write_fails_the_batch_and_leaves_no_object_for_its_partition(
    archiver: ModuleType, s3: Any, no_backoff: list[float]
) -> None:
    failed = inject_put_failures(archiver, "order-placed+1+")

    with pytest.raises(EndpointConnectionError):
        invoke(archiver, three_partition_event())

    assert len(failed) == 5  # the retry config's max_attempts, all used
    assert len(no_backoff) == 4
    # Partition 0 went first and is complete; 1 failed, so 2 was never tried.
    before_retry = archive_contents(s3)
    assert sorted(before_retry) == SAMPLE_KEYS[:1]

    # The mapping redelivers the batch; S3 is healthy again.
    archiver.archive_store.cache_clear()
    summary = invoke(archiver, three_partition_event())

    after_retry = archive_contents(s3)
    assert sorted(after_retry) == SAMPLE_KEYS
    assert after_retry[SAMPLE_KEYS[0]] == before_retry[SAMPLE_KEYS[0]]
    assert (summary["added"], summary["objects"]) == (6, 2)  # partition 0 was already there


def test_a_transient_s3_error_is_retried_within_the_invocation(
    archiver: ModuleType, s3: Any, no_backoff: list[float]
) -> None:
    failed = inject_put_failures(archiver, "order-placed+2+", times=2)

    summary = invoke(archiver, three_partition_event())

    assert len(failed) == 2
    assert summary["objects"] == 3
    assert sorted(archive_contents(s3)) == SAMPLE_KEYS


@pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")
def test_a_missing_bucket_setting_fails_with_its_name(
    archiver: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(settings.ARCHIVE_BUCKET)
    with pytest.raises(settings.ConfigurationError, match=settings.ARCHIVE_BUCKET):
        invoke(archiver, three_partition_event())


def test_the_handler_never_imports_kafka_python() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from functions.s3_archiver import app; "
        "print(any(m == 'kafka' or m.startswith('kafka.') for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_a_write_whose_answer_was_lost_is_found_archived_and_not_written_twice(
    archiver: ModuleType, s3: Any
) -> None:
    """The PUT reached S3 and was stored, its answer timed out, botocore retried it, and the
    retry met the object it had itself written (412): the archiver reads, finds its records
    there and writes nothing more; S3 holds one version. (It cannot tell its own lost write
    from an identical one by another poller, so it counts the records as already there.)"""
    records = sample_order_records(10, partitions=1)[1:]  # not a block's first: read, then write
    other = boto3.client("s3")
    sent: list[dict[str, Any]] = []
    lost: list[str] = []

    def remember(params: dict[str, Any], **_: Any) -> None:
        sent.append(dict(params))

    def arrives_but_the_answer_is_lost(**_: Any) -> None:
        if not lost:  # raised where botocore retries, as it does a read timeout
            lost.append(sent[-1]["Key"])
            other.put_object(**sent[-1])  # what S3 received and stored
            raise ReadTimeoutError(endpoint_url="https://s3")

    events = archiver.archive_store().client.meta.events
    events.register("provide-client-params.s3.PutObject", remember)
    events.register_first("before-send.s3.PutObject", arrives_but_the_answer_is_lost)
    summary = invoke(archiver, msk_event(records, CLUSTER_ARN, "b-1.example:9098"))

    assert len(lost) == 1
    assert (summary["archived"], summary["added"], summary["objects"]) == (9, 0, 0)
    [body] = archive_contents(s3).values()
    assert [line["offset"] for line in lines_of(body)] == list(range(1, 10))
    assert len(s3.list_object_versions(Bucket=BUCKET)["Versions"]) == 1


def test_an_if_match_write_to_an_object_deleted_since_is_a_conflict(archiver: ModuleType) -> None:
    """S3 answers 404 NoSuchKey when the object read is gone: read again, then create."""
    store = archiver.S3ArchiveStore(boto3.client("s3"), BUCKET)
    with pytest.raises(WriteConflict, match="NoSuchKey"):
        store.put("topics/gone", b"body", {}, replaces='"0123456789abcdef0123456789abcdef"')


def test_the_s3_error_code_is_the_errors_own_or_else_the_http_status(archiver: ModuleType) -> None:
    code = archiver._code

    def error(response: Any) -> ClientError:
        return ClientError(response, "PutObject")

    both = {"Error": {"Code": "PreconditionFailed"}, "ResponseMetadata": {"HTTPStatusCode": 412}}
    assert code(error(both)) == "PreconditionFailed"
    assert code(error({"ResponseMetadata": {"HTTPStatusCode": 412}})) == "412"
    assert code(error({"Error": {}, "ResponseMetadata": {"HTTPStatusCode": 409}})) == "409"
    assert code(error({"Error": {"Code": "SlowDown"}})) == "SlowDown"  # no metadata at all


def test_a_get_answered_by_a_bare_404_is_an_object_not_there(archiver: ModuleType) -> None:
    bare_404: Any = {"Error": {"Code": "404"}, "ResponseMetadata": {"HTTPStatusCode": 404}}

    class HeadLike:
        def get_object(self, **_: Any) -> Any:
            raise ClientError(bare_404, "GetObject")

    assert archiver.S3ArchiveStore(HeadLike(), BUCKET).get("k") is None


def test_each_object_is_logged_with_what_the_batch_did_to_it(
    archiver: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    from orderstream.archive import ArchivedBatch, ArchivedObject

    def an_object(key: str, added: int, samples: tuple[tuple[int, str], ...]) -> ArchivedObject:
        return ArchivedObject(
            key=key,
            first_offset=10,
            last_offset=19,
            records=10,
            poison=len(samples),
            delivered=7,
            added=added,
            size=321 if added else 0,
            conflicts=2,
            poison_added=len(samples),
            poison_samples=samples,
        )

    batch = ArchivedBatch((an_object("k1", 5, ((12, "bad json"),)), an_object("k2", 0, ())))
    try:
        with logger_output(archiver.logger) as output:
            archiver.record_metrics(batch)
    finally:
        archiver.metrics.clear_metrics()
    fields = ("message", "level", "key", "delivered", "added", "records", "first_offset")
    lines = [json.loads(x) for x in output.getvalue().splitlines()]
    assert [{f: line.get(f) for f in fields} for line in lines] == [
        dict(zip(fields, ("Archived object", "INFO", "k1", 7, 5, 10, 10), strict=True)),
        dict(
            zip(
                fields,
                ("Poison records archived raw", "WARNING", "k1", None, None, None, None),
                strict=True,
            )
        ),
        dict(
            zip(
                fields, ("Object already held the records", "INFO", "k2", 7, 0, 10, 10), strict=True
            )
        ),
    ]
    assert [(x.get("last_offset"), x.get("bytes"), x.get("conflicts")) for x in lines] == [
        (19, 321, 2),
        (None, None, None),
        (19, 0, 2),
    ]
    assert (lines[1]["poison"], lines[1]["samples"]) == (1, [{"offset": 12, "error": "bad json"}])
