"""The operator's command against moto S3 and a Lambda double: plans, batches, answers, moves
and exit codes. The same code runs against the local stack's Lambda API in tests/e2e."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.kafka import ConsumerRecords
from aws_lambda_powertools.utilities.kafka.consumer_records import ConsumerRecordRecords

from devstack.msk_event import PlainRecord, msk_event, msk_record, sample_order_records
from operate import cli, replay
from operate.invoking import batches, read_answer
from operate.where import Place
from orderstream import settings
from orderstream.archive import Years, archive_batch
from orderstream.dead_letter import dead_letter, lambda_record
from orderstream.events import ORDER_EVENTS
from tests.samples import template_archive_years

ARCHIVE, LETTERS = "operate-archive", "operate-letters"
ARN = "arn:aws:kafka:eu-west-1:123456789012:cluster/orderstream/x"
START_MS = int(datetime(2026, 11, 25, 14, tzinfo=UTC).timestamp() * 1000)  # samples: 1/s from


class FakeLambda:
    """Lambda's Invoke, GetFunctionConfiguration and ListEventSourceMappings for two consumers;
    `answer` decides each invocation's result."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.answer: Callable[[str, dict[str, Any]], tuple[Any, bool]] = lambda fn, event: (
            {"batchItemFailures": []},
            False,
        )
        self.environments = {
            "orderstream-test-email-notifier": {
                "POWERTOOLS_SERVICE_NAME": "email-notifier",
                settings.IDEMPOTENCY_EXPIRES_SECONDS: "86400",  # a day: the samples are older
            },
            "orderstream-test-s3-archiver": {
                "POWERTOOLS_SERVICE_NAME": "s3-archiver",
                settings.ARCHIVE_YEARS: template_archive_years(),
            },
        }
        self.batch_sizes = {"orderstream-test-email-notifier": 3, "orderstream-test-s3-archiver": 5}

    def invoke(self, FunctionName: str, InvocationType: str, Payload: str) -> dict[str, Any]:
        event = json.loads(Payload)
        self.calls.append((FunctionName, event))
        payload, errored = self.answer(FunctionName, event)
        response: dict[str, Any] = {"Payload": io.BytesIO(json.dumps(payload).encode())}
        if errored:
            response["FunctionError"] = "Unhandled"
        return response

    def get_function_configuration(self, FunctionName: str) -> dict[str, Any]:
        return {"Environment": {"Variables": self.environments[FunctionName]}}

    def get_paginator(self, name: str) -> Any:
        assert name == "list_event_source_mappings"
        sizes = self.batch_sizes

        class Pages:
            def paginate(self, FunctionName: str) -> Iterator[dict[str, Any]]:
                yield {
                    "EventSourceMappings": [
                        {"BatchSize": sizes[FunctionName], "EventSourceArn": ARN}
                    ]
                }

        return Pages()

    def records_sent(self) -> list[tuple[int, int]]:
        return [
            (r["partition"], r["offset"])
            for _, event in self.calls
            for group in event["records"].values()
            for r in group
        ]


@pytest.fixture
def place(aws: None) -> Place:
    s3 = boto3.client("s3")
    for bucket in (ARCHIVE, LETTERS):
        s3.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return Place(
        description="the test stack",
        functions={
            "EmailNotifierFunction": "orderstream-test-email-notifier",
            "S3ArchiverFunction": "orderstream-test-s3-archiver",
        },
        buckets={"ArchiveBucket": ARCHIVE, "DeadLetterBucket": LETTERS},
        outputs={},
        lambda_client=FakeLambda(),
        s3=s3,
        dynamodb=None,
        bootstrap_servers="b-1.example:9098",
    )


class S3Store:
    """The archive store over moto, as the archiver's own (conditional puts)."""

    def __init__(self, s3: Any) -> None:
        from functions.s3_archiver.app import S3ArchiveStore

        self.inner = S3ArchiveStore(s3, ARCHIVE)

    def get(self, key: str) -> Any:
        return self.inner.get(key)

    def put(self, key: str, body: bytes, metadata: Any, *, replaces: str | None) -> None:
        self.inner.put(key, body, metadata, replaces=replaces)


def archive(place: Place, records: list[PlainRecord]) -> list[dict[str, Any]]:
    event = msk_event(records, ARN, "b-1.example:9098")
    archive_batch(
        ConsumerRecords(event, ORDER_EVENTS).records,
        store=S3Store(place.s3),
        years=Years(2024, 2099),
    )
    return [r for group in event["records"].values() for r in group]


def replay_argv(target: str, since: str, until: str) -> list[str]:
    return ["replay", "--local", "--target", target, "--since", since, "--until", until]


def run(place: Place, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err, place_of=lambda args: place)
    return code, out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- pure parts


def test_batches_respect_the_batch_size_and_the_payload_cap() -> None:
    records = [{"topic": "t", "partition": 0, "offset": i, "value": "x" * 1000} for i in range(10)]
    assert [len(b) for b in batches(records, 4)] == [4, 4, 2]
    assert [len(b) for b in batches(records, 100, max_bytes=4096 + 3 * 1100)] == [3, 3, 3, 1]
    huge = [{"topic": "t", "partition": 0, "offset": 0, "value": "x" * 10_000}]
    assert [len(b) for b in batches(huge, 100, max_bytes=5000)] == [1]


@pytest.mark.parametrize("key", ["partition", "topic-partition"])
def test_a_partial_answer_fails_each_reported_partition_from_its_offset_on(key: str) -> None:
    records = [{"topic": "t", "partition": p, "offset": o} for p in (0, 1) for o in (5, 6, 7)]
    answer = read_answer(
        {"batchItemFailures": [{"itemIdentifier": {key: "t-1", "offset": 6}}]}, records
    )
    assert (answer.ok, answer.failed) == (False, [("t-1", 6), ("t-1", 7)])
    assert read_answer({"batchItemFailures": []}, records).ok
    assert read_answer({"archived": 6, "added": 2}, records).duplicates == 4
    unreadable = read_answer({"batchItemFailures": ["t-1:6"]}, records)
    assert (unreadable.ok, len(unreadable.failed)) == (False, 6)
    elsewhere = {"batchItemFailures": [{"itemIdentifier": {key: "t-1", "offset": 99}}]}
    absent = read_answer(elsewhere, records)  # as the mapping reads it: the whole batch failed
    assert (absent.ok, len(absent.failed)) == (False, 6)


def test_a_dead_letter_gives_back_the_record_lambda_delivered() -> None:
    raw = msk_record(PlainRecord(None, b"\x89PNG", headers=[("h", b"\xff"), ("gone", None)]))
    letter = dead_letter(ConsumerRecordRecords(raw, ORDER_EVENTS), reason="poison", consumer="c")
    assert lambda_record(json.loads(letter.body)) == raw


def test_the_hours_of_a_range_are_the_hours_its_records_are_filed_under() -> None:
    years = Years(2024, 2099)
    since = datetime(2026, 11, 25, 13, 30, tzinfo=UTC)
    until = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
    assert [h.hour for h in replay.hours(since, until, years)] == [13, 14]
    # Records stamped outside the archive's years are filed at its first or last hour.
    early = replay.hours(
        datetime(1969, 12, 31, tzinfo=UTC), datetime(1970, 1, 2, tzinfo=UTC), years
    )
    assert early == [datetime(2024, 1, 1, tzinfo=UTC)]
    late = replay.hours(
        datetime(2099, 12, 31, 22, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC), years
    )
    assert late == [datetime(2099, 12, 31, h, tzinfo=UTC) for h in (22, 23)]
    assert replay.parse_time("2026-11-25T13:30") == since
    assert replay.parse_time("2026-11-25T14:30+01:00") == since
    with pytest.raises(ValueError, match="ISO 8601"):
        replay.parse_time("yesterday")


# --------------------------------------------------------------------------- replay


def test_replay_sends_the_archived_records_of_the_range_in_the_mappings_batches(
    place: Place,
) -> None:
    originals = archive(place, sample_order_records(12, partitions=2))  # 14:00:00..14:00:11
    code, out, _ = run(
        place, *replay_argv("S3ArchiverFunction", "2026-11-25T14:00:02Z", "2026-11-25T14:00:10Z")
    )
    assert code == 0, out
    fake: FakeLambda = place.lambda_client
    sent = [r for _, event in fake.calls for g in event["records"].values() for r in g]
    expected = sorted(
        (r for r in originals if START_MS + 2000 <= r["timestamp"] < START_MS + 10_000),
        key=lambda r: (r["partition"], r["offset"]),
    )
    assert sent == expected  # byte for byte, in partition and offset order
    assert [sum(map(len, e["records"].values())) for _, e in fake.calls] == [5, 3]
    assert all(e["eventSourceArn"] == ARN for _, e in fake.calls)
    assert "records      8" in out
    assert "failed       0" in out


def test_replay_of_one_partition_and_a_dry_run_that_invokes_nothing(place: Place) -> None:
    archive(place, sample_order_records(12, partitions=2))
    argv = replay_argv("S3ArchiverFunction", "2026-11-25T14:00Z", "2026-11-25T15:00Z")
    code, out, _ = run(place, *argv, "--partition", "1", "--dry-run")
    assert code == 0
    assert "order-placed-1: offsets 0..5 (6 records)" in out
    assert "order-placed-0" not in out
    assert "dry run: nothing was invoked" in out
    assert place.lambda_client.calls == []


def test_replay_to_a_target_that_would_forget_is_refused_without_allow_resend(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay, "now", lambda: datetime(2026, 11, 30, 12, tzinfo=UTC))
    archive(place, sample_order_records(3, partitions=1))  # 2026-11-25: older than a day
    argv = replay_argv("EmailNotifierFunction", "2026-11-25T14:00Z", "2026-11-25T15:00Z")
    code, _, err = run(place, *argv)
    assert code == 2
    assert "remembers what it did for 86400 s" in err
    assert "--allow-resend" in err
    assert place.lambda_client.calls == []
    code, _out, _ = run(place, *argv, "--allow-resend")
    assert code == 0
    assert [sum(map(len, e["records"].values())) for _, e in place.lambda_client.calls] == [3]


def test_replay_reports_failed_records_and_exits_one(place: Place) -> None:
    archive(place, sample_order_records(4, partitions=1))
    fake: FakeLambda = place.lambda_client
    fake.answer = lambda fn, event: ({"errorMessage": "boom", "errorType": "RuntimeError"}, True)
    code, out, _ = run(
        place, *replay_argv("S3ArchiverFunction", "2026-11-25T14:00Z", "2026-11-25T15:00Z")
    )
    assert code == 1
    assert "failed       4" in out
    assert "RuntimeError: boom" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            replay_argv("Nope", "2026-11-25", "2026-11-26"),
            "no function 'Nope'",
        ),
        (
            replay_argv("S3ArchiverFunction", "later", "2026-11-26"),
            "ISO 8601",
        ),
        (
            replay_argv("S3ArchiverFunction", "2026-11-26", "2026-11-25"),
            "--until must come after",
        ),
        (["redrive", "--local", "--source", "failures", "--target", "Nope"], "no function 'Nope'"),
        (
            [
                "replay",
                "--target",
                "S3ArchiverFunction",
                "--since",
                "2026-11-25",
                "--until",
                "2026-11-26",
            ],
            "",
        ),
    ],
)
def test_bad_usage_exits_two_with_a_reason(place: Place, argv: list[str], message: str) -> None:
    code, _, err = run(place, *argv)
    assert code == 2
    assert message in err


# --------------------------------------------------------------------------- redrive


def poison_letter(place: Place, offset: int) -> str:
    raw = msk_record(PlainRecord(b"k", b"\x89 not json", offset=offset))
    letter = dead_letter(
        ConsumerRecordRecords(raw, ORDER_EVENTS), reason="not JSON", consumer="email-notifier"
    )
    place.s3.put_object(Bucket=LETTERS, Key=letter.key, Body=letter.body)
    return letter.key


def keys(place: Place) -> list[str]:
    return sorted(o["Key"] for o in place.s3.list_objects_v2(Bucket=LETTERS).get("Contents", []))


def test_dead_letters_go_back_to_their_consumer_once_and_move_under_redriven(place: Place) -> None:
    first, second = poison_letter(place, 7), poison_letter(place, 8)
    code, out, _ = run(place, "redrive", "--local", "--source", "dead-letters")
    assert code == 0, out
    fake: FakeLambda = place.lambda_client
    # One invocation for both: dead letters of one consumer go in batches of its mapping's size.
    assert [fn for fn, _ in fake.calls] == ["orderstream-test-email-notifier"]
    assert fake.records_sent() == [(0, 7), (0, 8)]
    assert keys(place) == [f"redriven/{first}", f"redriven/{second}"]
    code, out, _ = run(place, "redrive", "--local", "--source", "dead-letters")
    assert code == 0
    assert "records      0" in out
    assert len(fake.calls) == 1  # nothing redriven twice


def test_a_dead_letter_the_consumer_writes_again_stays_and_counts_as_failed(place: Place) -> None:
    key = poison_letter(place, 9)
    body = place.s3.get_object(Bucket=LETTERS, Key=key)["Body"].read()

    def still_poison(function: str, event: dict[str, Any]) -> tuple[Any, bool]:
        place.s3.put_object(Bucket=LETTERS, Key=key, Body=body)  # as the notifier would
        return {"batchItemFailures": []}, False

    place.lambda_client.answer = still_poison
    code, out, _ = run(place, "redrive", "--local", "--source", "dead-letters")
    assert code == 1
    assert "dead-lettered it again" in out
    assert keys(place) == [key]


def test_failed_batches_go_back_whole_to_the_function_named_in_them(place: Place) -> None:
    from devstack.esm import MappingSpec, on_failure_record

    spec = MappingSpec("S3ArchiverFunction", "OrderPlaced", ARN, ["order-placed"], "g")
    records = sample_order_records(3, partitions=1)
    key, body = on_failure_record(
        spec, "b-1.example:9098", records, "RetryAttemptsExhausted", None, 10, 1.8e9
    )
    document = json.loads(body)
    document["requestContext"]["functionArn"] = (
        "arn:aws:lambda:eu-west-1:123456789012:function:orderstream-test-s3-archiver"
    )
    place.s3.put_object(Bucket=LETTERS, Key=key, Body=json.dumps(document).encode())

    code, out, _ = run(place, "redrive", "--local", "--source", "failures", "--dry-run")
    assert code == 0
    assert f"{key} -> S3ArchiverFunction (3 records" in out
    assert place.lambda_client.calls == []

    code, out, _ = run(place, "redrive", "--local", "--source", "failures")
    assert code == 0, out
    [(function, event)] = place.lambda_client.calls
    assert function == "orderstream-test-s3-archiver"
    assert event == json.loads(document["payload"])  # the invocation, exactly
    assert keys(place) == [f"redriven/{key}"]


def test_help_reads_like_a_manual_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for part in ("usage: orderstream", "replay", "redrive", "smoke", "exit status:", "examples:"):
        assert part in text
    assert cli.main(["replay", "--help"]) == 0
    replay_help = capsys.readouterr().out
    assert "--allow-resend" in replay_help
    assert "EmailIdempotencySeconds" in replay_help


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_long_runs_show_a_progress_bar_on_a_terminal_only(place: Place) -> None:
    archive(place, sample_order_records(12, partitions=1))
    argv = replay_argv("S3ArchiverFunction", "2026-11-25T14:00Z", "2026-11-25T15:00Z")
    terminal = Terminal()
    assert cli.main(argv, out=io.StringIO(), err=terminal, place_of=lambda args: place) == 0
    assert "5/12 records" in terminal.getvalue()
    assert terminal.getvalue().endswith("] 12/12 records\n")
    piped = io.StringIO()
    assert cli.main(argv, out=io.StringIO(), err=piped, place_of=lambda args: place) == 0
    assert piped.getvalue() == ""


def test_records_filed_at_the_archives_edge_are_replayed_by_their_own_time(place: Place) -> None:
    archive(place, [PlainRecord(b"k", b"{}", offset=4, timestamp=-1)])  # "no timestamp"
    code, out, _ = run(
        place, *replay_argv("S3ArchiverFunction", "1969-12-31T00:00Z", "1970-01-01T00:00Z")
    )
    assert code == 0, out
    assert place.lambda_client.records_sent() == [(0, 4)]


def test_poison_is_left_out_for_a_target_that_dead_letters_it_unless_asked(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaying poison to the notifier would only write its dead letters again (and raise
    the alarm): it is counted, not sent, unless --include-poison."""
    fake: FakeLambda = place.lambda_client
    fake.environments["orderstream-test-email-notifier"][settings.DEAD_LETTER_BUCKET] = LETTERS
    monkeypatch.setattr(replay, "now", lambda: datetime(2026, 11, 25, 15, tzinfo=UTC))
    records = sample_order_records(3, partitions=1)
    archive(
        place, [*records, PlainRecord(b"k", b"\x89 poison", offset=3, timestamp=START_MS + 3000)]
    )
    argv = replay_argv("EmailNotifierFunction", "2026-11-25T14:00Z", "2026-11-25T15:00Z")
    code, out, _ = run(place, *argv)
    assert code == 0, out
    assert "poison       1 left out" in out
    assert fake.records_sent() == [(0, 0), (0, 1), (0, 2)]
    fake.calls.clear()
    code, out, _ = run(place, *argv, "--include-poison")
    assert code == 0
    assert fake.records_sent() == [(0, 0), (0, 1), (0, 2), (0, 3)]


def failure_record(place: Place, function_name: str, offsets: range) -> str:
    from devstack.esm import MappingSpec, on_failure_record

    spec = MappingSpec("Fn", "OrderPlaced", ARN, ["order-placed"], "g")
    records = [PlainRecord(b"k", b"{}", offset=o) for o in offsets]
    key, body = on_failure_record(spec, "b", records, "RetryAttemptsExhausted", None, 10, 1.8e9)
    document = json.loads(body)
    document["requestContext"]["functionArn"] = (
        f"arn:aws:lambda:eu-west-1:123456789012:function:{function_name}:live"  # qualified
    )
    place.s3.put_object(Bucket=LETTERS, Key=key, Body=json.dumps(document).encode())
    return key


def test_an_object_naming_an_unknown_function_is_skipped_and_the_rest_redriven(
    place: Place,
) -> None:
    known = failure_record(place, "orderstream-test-s3-archiver", range(0, 2))
    unknown = failure_record(place, "someone-elses-function", range(2, 4))
    code, out, _ = run(place, "redrive", "--local", "--source", "failures")
    assert code == 1
    assert f"skipped {unknown}: function" in out
    assert keys(place) == sorted([unknown, f"redriven/{known}"])


def test_a_move_cut_short_after_its_copy_is_finished_by_the_next_run_not_redriven_again(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    key = poison_letter(place, 11)
    real_delete = place.s3.delete_object

    def refused(**kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "DeleteObject")

    monkeypatch.setattr(place.s3, "delete_object", refused)
    code, out, _ = run(place, "redrive", "--local", "--source", "dead-letters")
    assert code == 1
    assert "AccessDenied" in out
    assert keys(place) == sorted([key, f"redriven/{key}"])

    monkeypatch.setattr(place.s3, "delete_object", real_delete)
    calls = len(place.lambda_client.calls)
    code, out, _ = run(place, "redrive", "--local", "--source", "dead-letters")
    assert code == 0, out
    assert f"{key}: already redriven, its move is finished" in out
    assert len(place.lambda_client.calls) == calls  # not sent a second time
    assert keys(place) == [f"redriven/{key}"]


def test_a_dead_letter_written_again_during_its_move_is_not_hidden(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = poison_letter(place, 12)
    body = place.s3.get_object(Bucket=LETTERS, Key=key)["Body"].read()
    real_copy = place.s3.copy_object

    def copy_then_a_consumer_writes(**kwargs: Any) -> Any:
        answer = real_copy(**kwargs)
        place.s3.put_object(Bucket=LETTERS, Key=key, Body=body)  # a new failure of it
        return answer

    monkeypatch.setattr(place.s3, "copy_object", copy_then_a_consumer_writes)
    code, _, _ = run(place, "redrive", "--local", "--source", "dead-letters")
    assert code == 0
    assert keys(place) == sorted([key, f"redriven/{key}"])  # the new one stays, current


def test_dead_letters_go_in_batches_and_each_moves_only_if_its_record_went_through(
    place: Place,
) -> None:
    letters = [poison_letter(place, offset) for offset in range(20, 27)]  # batch size 3: 3+3+1

    def fails_offset_24(function: str, event: dict[str, Any]) -> tuple[Any, bool]:
        offsets = [r["offset"] for g in event["records"].values() for r in g]
        if 24 in offsets:
            failure = {"itemIdentifier": {"partition": "order-placed-0", "offset": 24}}
            return {"batchItemFailures": [failure]}, False
        return {"batchItemFailures": []}, False

    place.lambda_client.answer = fails_offset_24
    code, out, _ = run(place, "redrive", "--local", "--source", "dead-letters")
    assert code == 1
    assert [sum(map(len, e["records"].values())) for _, e in place.lambda_client.calls] == [3, 3, 1]
    assert "invocations  3" in out
    assert "failed       2" in out  # 24, and 25 after it in the same partition and batch
    kept = {letters[4], letters[5]}
    assert keys(place) == sorted(kept | {f"redriven/{k}" for k in letters if k not in kept})
