"""`orderstream` against the running local stack, through Lambda's HTTP API and moto's S3:
replays that change nothing, a dead letter redriven once to a fixed consumer, and a batch that
exhausted its retries redriven to its function."""

from __future__ import annotations

import base64
import copy
import io
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from devstack import aws
from devstack.esm import EventSourceMapping, MappingSpec
from devstack.functions import FunctionSpec, Invocation
from devstack.lambda_api import LambdaApiServer
from devstack.template import ACCOUNT_ID, REGION
from operate import cli
from operate.where import Place, of_local_stack
from orderstream.dead_letter import dead_letter_key
from orderstream.topics import TopicSpec, reconcile_topics
from tests.e2e.conftest import Stack, publish, wait_until
from tests.samples import load_event

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLE: dict[str, Any] = json.loads(load_event("api-post-order.json")["body"])


def orderstream(place: Place, *argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err, place_of=lambda args: place)
    return code, out.getvalue() + err.getvalue()


def ok(result: Any = None) -> Invocation:
    return Invocation("r", True, result, None, 1.0, 0.0)


class Doubles:
    """Lambda's API for the stack's functions, except those a test replaces with a double."""

    def __init__(self, local: Stack, doubles: dict[str, tuple[str, Callable[[Any], Invocation]]]):
        stack = local.stack
        functions = {lid: (spec.function_name, spec) for lid, spec in stack.functions.items()}
        for logical_id, (name, _) in doubles.items():
            if logical_id not in functions:  # a double of a function the stack does not have
                functions[logical_id] = (name, _spec(logical_id, name))
        self.events: list[dict[str, Any]] = []

        def invoke(logical_id: str, event: Any) -> Invocation:
            if logical_id in doubles:
                self.events.append(event)
                return doubles[logical_id][1](event)
            return stack.pools[logical_id].invoke(event)

        self.server = LambdaApiServer(
            functions, invoke, lambda: [m.spec for m in stack.mappings], log=lambda _: None
        ).start()
        self.place = of_local_stack(local.info)
        self.place.functions = {lid: name for lid, (name, _) in functions.items()}
        self.place.lambda_client = aws.client("lambda", self.server.url)

    def stop(self) -> None:
        self.server.stop()


def _spec(logical_id: str, name: str) -> FunctionSpec:
    return FunctionSpec(
        logical_id, name, Path("."), "app.handler", 30, 128, {"POWERTOOLS_SERVICE_NAME": name}
    )


@pytest.fixture
def doubles(local_stack: Stack) -> Iterator[Callable[..., Doubles]]:
    made: list[Doubles] = []

    def make(replaced: dict[str, tuple[str, Callable[[Any], Invocation]]]) -> Doubles:
        made.append(Doubles(local_stack, replaced))
        return made[-1]

    yield make
    for double in made:
        double.stop()


def test_replays_to_both_consumers_send_no_second_email_and_write_nothing(
    local_stack: Stack,
) -> None:
    bodies = []
    for i in range(6):
        body = copy.deepcopy(SAMPLE)
        body["order_id"] = str(uuid.uuid4())
        body["customer"]["email"] = f"replayed{i}@example.com"
        bodies.append(body)
        assert local_stack.post(body)[0] == 202
    ids = {b["order_id"] for b in bodies}
    wait_until(lambda: ids <= set(local_stack.emailed_orders()), timeout_s=120)
    wait_until(lambda: ids <= set(local_stack.archived_orders()), timeout_s=120)
    ours = [
        line
        for line in local_stack.archived_lines()
        if line["value"] and line["value"]["order"]["order_id"] in ids
    ]
    since = min(line["timestamp"] for line in ours)
    until = max(line["timestamp"] for line in ours) + 1
    window = ["--since", _iso(since), "--until", _iso(until)]
    archive_before = local_stack.objects("ArchiveBucket")
    place = of_local_stack(local_stack.info)

    code, out = orderstream(
        place, "replay", "--local", "--target", "EmailNotifierFunction", *window
    )
    assert code == 0, out
    assert f"records      {len(ours)}" in out
    emailed = local_stack.emailed_orders()
    assert sorted(emailed[i] for i in ids) == [1] * len(ids)  # no second confirmation

    code, out = orderstream(place, "replay", "--local", "--target", "S3ArchiverFunction", *window)
    assert code == 0, out
    assert f"duplicates   {len(ours)}" in out  # the archiver found every record archived
    assert local_stack.objects("ArchiveBucket") == archive_before


def test_a_dead_letter_is_redriven_once_after_its_consumer_is_fixed(
    local_stack: Stack, doubles: Callable[..., Doubles]
) -> None:
    poison = b"\x89PNG not an order"
    key = f"poison-{uuid.uuid4()}".encode()
    producer = KafkaProducer(bootstrap_servers=local_stack.info.bootstrap_servers)
    try:
        sent = producer.send("order-placed", key=key, value=poison, partition=3).get(timeout=10)
    finally:
        producer.close()
    letter = dead_letter_key("email-notifier", "order-placed", 3, sent.offset)
    wait_until(lambda: letter in local_stack.objects("DeadLetterBucket"), timeout_s=60)
    place = of_local_stack(local_stack.info)

    code, out = orderstream(place, "redrive", "--local", "--source", "dead-letters")
    assert code == 1  # the notifier as it is still cannot use it: it writes it again
    assert f"{letter}: the consumer dead-lettered it again" in out
    assert letter in local_stack.objects("DeadLetterBucket")

    fixed = doubles(
        {
            "EmailNotifierFunction": (
                "orderstream-local-email-notifier",
                lambda e: ok({"batchItemFailures": []}),
            )
        }
    )
    code, out = orderstream(fixed.place, "redrive", "--local", "--source", "dead-letters")
    assert code == 0, out
    records = [r for e in fixed.events for g in e["records"].values() for r in g]
    [ours] = [r for r in records if r.get("key") == base64.b64encode(key).decode()]
    assert base64.b64decode(ours["value"]) == poison
    assert (ours["partition"], ours["offset"]) == (3, sent.offset)
    objects = local_stack.objects("DeadLetterBucket")
    assert letter not in objects
    assert f"redriven/{letter}" in objects

    calls = len(fixed.events)
    code, out = orderstream(fixed.place, "redrive", "--local", "--source", "dead-letters")
    assert code == 0
    assert "records      0" in out
    assert len(fixed.events) == calls  # nothing redriven twice


def test_a_batch_that_exhausted_its_retries_is_redriven_to_its_function(
    local_stack: Stack, doubles: Callable[..., Doubles]
) -> None:
    topic = f"flaky-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=local_stack.info.bootstrap_servers)
    try:
        reconcile_topics(admin, [TopicSpec(topic, 1)])
    finally:
        admin.close()
    name = "orderstream-local-flaky"
    fixed = threading.Event()
    seen: list[dict[str, Any]] = []

    def flaky(event: dict[str, Any]) -> Invocation:
        seen.append(event)
        if fixed.is_set():
            return ok({"batchItemFailures": []})
        return Invocation("r", False, None, {"errorType": "Bug", "errorMessage": "not yet"}, 1, 0)

    bucket = local_stack.info.buckets["DeadLetterBucket"]
    s3 = aws.client("s3", local_stack.info.aws_endpoint)
    spec = MappingSpec(
        function="FlakyFunction",
        name="Orders",
        event_source_arn="arn:aws:kafka:eu-west-1:123456789012:cluster/orderstream-local/x",
        topics=[topic],
        group_id=f"flaky-{uuid.uuid4().hex[:6]}",
        starting_position="TRIM_HORIZON",
        batch_size=10,
        batching_window_s=0.5,
        maximum_retry_attempts=1,
        on_failure_bucket=bucket,
        function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}",
    )
    mapping = EventSourceMapping(
        spec,
        local_stack.info.bootstrap_servers,
        flaky,
        put_object=lambda b, k, body: s3.put_object(Bucket=b, Key=k, Body=body),
        log=lambda _: None,
        retry_backoff_s=0.05,
    ).start()
    try:
        publish(local_stack, [(b"k1", b'{"n": 1}'), (b"k2", b'{"n": 2}')], partition=0, topic=topic)
        prefix = f"aws/lambda/{spec.uuid}/"
        wait_until(
            lambda: any(k.startswith(prefix) for k in local_stack.objects("DeadLetterBucket")),
            timeout_s=60,
        )
    finally:
        mapping.stop()
    [key] = [k for k in local_stack.objects("DeadLetterBucket") if k.startswith(prefix)]
    payload = json.loads(json.loads(local_stack.objects("DeadLetterBucket")[key])["payload"])

    double = doubles({"FlakyFunction": (name, flaky)})
    fixed.set()
    before = len(seen)
    code, out = orderstream(double.place, "redrive", "--local", "--source", "failures")
    assert code == 0, out
    assert f"{key} -> FlakyFunction (2 records" in out
    assert seen[before:] == [payload]  # the invocation that failed, exactly
    objects = local_stack.objects("DeadLetterBucket")
    assert key not in objects
    assert f"redriven/{key}" in objects
    code, out = orderstream(double.place, "redrive", "--local", "--source", "failures")
    assert code == 0
    assert len(seen) == before + 1


def _iso(timestamp_ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")


def test_smoke_follows_one_order_through_every_stage(local_stack: Stack) -> None:
    place = of_local_stack(local_stack.info)
    code, out = orderstream(place, "smoke", "--local")
    assert code == 0, out
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["ok", "mappings"],
        ["ok", "accepted"],
        ["ok", "on-topic"],
        ["ok", "confirmed"],
        ["ok", "archived"],
    ]
    assert "order-placed partition" in lines[2]
    order_id = lines[1].split("order ")[1].split()[0]
    assert local_stack.emailed_orders()[order_id] == 1


def test_smoke_names_the_first_stage_that_did_not_happen(
    local_stack: Stack, doubles: Callable[..., Doubles]
) -> None:
    """With the archiver's mapping stopped, the order is accepted and confirmed, and the
    smoke test fails at `archived` (its own time limit shortened; the others as they are)."""
    [mapping] = [m for m in local_stack.stack.mappings if m.spec.function == "S3ArchiverFunction"]
    mapping.stop()
    try:
        code, out = orderstream(
            of_local_stack(local_stack.info), "smoke", "--local", "--archived-wait", "3"
        )
    finally:
        local_stack.stack.restart_mappings()
    assert code == 1
    assert "FAILED archived" in out
    assert out.rstrip().endswith("smoke test failed at: archived")
