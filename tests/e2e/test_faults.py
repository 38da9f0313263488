"""Faults on the local stack, each ending with the count that matters: every accepted order
archived once and emailed once. Faults are real network faults injected on loopback."""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from devstack.faults import Fault, s3_put_failures, s3_writes_held, ses_throttling
from devstack.functions import FunctionPool
from devstack.msk_event import msk_event
from devstack.status import end_offsets
from orderstream.archive import read_lines
from tests.e2e.conftest import Stack, an_order, message, publish, wait_until
from tests.samples import load_event

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLE: dict[str, Any] = json.loads(load_event("api-post-order.json")["body"])


def orders(count: int, tag: str) -> list[dict[str, Any]]:
    bodies = []
    for i in range(count):
        body = copy.deepcopy(SAMPLE)
        body["order_id"] = str(uuid.uuid4())
        body["customer"]["email"] = f"{tag}{i}@example.com"
        bodies.append(body)
    return bodies


def post_all(stack: Stack, bodies: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(stack.post, bodies))


def delivered_exactly_once(stack: Stack, ids: set[str], timeout_s: float = 180) -> None:
    wait_until(lambda: ids <= set(stack.emailed_orders()), timeout_s=timeout_s)
    wait_until(lambda: ids <= set(stack.archived_orders()), timeout_s=timeout_s)
    emailed, archived = stack.emailed_orders(), stack.archived_orders()
    assert sorted(emailed[i] for i in ids) == [1] * len(ids), "an order was emailed twice"
    assert sorted(archived[i] for i in ids) == [1] * len(ids), "an order was archived twice"


def during_a_batch(
    stack: Stack,
    ids: set[str],
    tag: str,
    pools: list[FunctionPool],
    act: Callable[[], Any],
    attempts: int = 5,
) -> None:
    """Post fresh orders, then `act()` at a moment one of `pools` holds an invocation, until
    `act()` reports (truthy) that it landed on one. A batch that ended before we saw it gets new
    orders to make another, so the fault falls on work in flight and never waits for work that
    will not come. The orders posted are added to `ids`."""
    for attempt in range(attempts):
        bodies = orders(10, f"{tag}{attempt}")
        assert {status for status, _ in post_all(stack, bodies)} == {202}
        ids |= {b["order_id"] for b in bodies}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if any(p.in_flight() for p in pools) and act():
                return
            time.sleep(0.01)
    raise AssertionError(f"{tag}: no invocation in flight after {attempts} rounds of orders")


def test_consumers_killed_mid_batch_three_times(local_stack: Stack) -> None:
    """The mapping's poller dies mid-batch (an invocation in flight completes, as in Lambda)
    and restarts from its last commit: the redelivered batch sends nothing twice."""
    ids: set[str] = set()
    pools = [local_stack.stack.pools[n] for n in ("EmailNotifierFunction", "S3ArchiverFunction")]

    def restart() -> bool:
        local_stack.stack.restart_mappings()
        return True

    for round_ in range(3):
        during_a_batch(local_stack, ids, f"killed{round_}-", pools, restart)
    delivered_exactly_once(local_stack, ids)


def test_function_containers_killed_mid_invocation_three_times(local_stack: Stack) -> None:
    """The functions themselves die mid-invocation (a timeout or out-of-memory in Lambda).
    Nothing is lost and the archive holds each order once. Email is at least once here: a
    container killed after SES accepted a send but before the ledger recorded it leaves an
    in-progress claim that expires, and SES has no idempotency token to stop the resend."""
    ids: set[str] = set()
    for round_ in range(3):
        for name in ("EmailNotifierFunction", "S3ArchiverFunction"):
            pool = local_stack.stack.pools[name]
            # A kill that finds the containers idle (the invocation ended in between) kills no
            # invocation and does not count: it is tried again on the next batch.
            during_a_batch(local_stack, ids, f"crashed{round_}{name}-", [pool], pool.kill)
        local_stack.stack.restart_mappings()
    wait_until(lambda: ids <= set(local_stack.emailed_orders()), timeout_s=180)
    wait_until(lambda: ids <= set(local_stack.archived_orders()), timeout_s=180)
    archived = local_stack.archived_orders()
    assert sorted(archived[i] for i in ids) == [1] * len(ids), "an order was archived twice"
    emailed = local_stack.emailed_orders()
    assert min(emailed[i] for i in ids) >= 1
    # At most one repeat per kill: only a send in flight at the moment of a kill can repeat.
    assert sum(emailed[i] - 1 for i in ids) <= 3 * 50


def test_the_same_batch_redelivered_three_times(local_stack: Stack) -> None:
    bodies = orders(12, "redelivered")
    post_all(local_stack, bodies)
    ids = {b["order_id"] for b in bodies}
    delivered_exactly_once(local_stack, ids)
    archive_before = local_stack.objects("ArchiveBucket")

    # Rebuild, from the topic itself, one batch per archive object (the records it holds),
    # then hand each to both consumers three more times, as a mapping that lost its commits
    # would.
    consumer = KafkaConsumer(bootstrap_servers=local_stack.info.bootstrap_servers, group_id=None)
    try:
        batches = []
        for body in archive_before.values():
            held = [json.loads(line) for line in read_lines(body)]
            tp = TopicPartition(held[0]["topic"], held[0]["partition"])
            offsets = {line["offset"] for line in held}
            consumer.assign([tp])
            consumer.seek(tp, min(offsets))
            records: list[Any] = []
            while not records or records[-1].offset < max(offsets):
                records.extend(consumer.poll(timeout_ms=1000).get(tp, []))
            batches.append(
                msk_event(
                    [r for r in records if r.offset in offsets],
                    "arn:local",
                    local_stack.info.bootstrap_servers,
                )
            )
    finally:
        consumer.close()
    for _ in range(3):
        for event in batches:
            assert local_stack.stack.pools["S3ArchiverFunction"].invoke(event).ok
            assert local_stack.stack.pools["EmailNotifierFunction"].invoke(event).ok
    assert local_stack.objects("ArchiveBucket") == archive_before  # same keys, same bytes

    # Overlapping, shrinking and growing windows over each partition's records, as a mapping
    # that bisected, rebalanced or fetched more would deliver them: still the same archive.
    by_partition: dict[str, list[dict[str, Any]]] = {}
    for event in batches:
        for name, entries in event["records"].items():
            by_partition.setdefault(name, []).extend(entries)
    for name, entries in by_partition.items():
        entries.sort(key=lambda entry: entry["offset"])
        n = len(entries)
        for lo, hi in [(0, n // 2 + 1), (n // 4, 3 * n // 4 + 1), (n // 3, n), (0, n)]:
            window = {**batches[0], "records": {name: entries[lo:hi]}}
            assert local_stack.stack.pools["S3ArchiverFunction"].invoke(window).ok
    assert local_stack.objects("ArchiveBucket") == archive_before
    emailed = local_stack.emailed_orders()
    assert sorted(emailed[i] for i in ids) == [1] * len(ids)


def orders_survive(stack: Stack, fault: Fault, count: int, tag: str) -> None:
    """With `fault` active on the AWS side, `count` orders still arrive exactly once."""
    assert stack.stack.aws_faults is not None
    stack.stack.aws_faults.add(fault)
    try:
        bodies = orders(count, tag)
        post_all(stack, bodies)
        delivered_exactly_once(stack, {b["order_id"] for b in bodies})
    finally:
        stack.stack.aws_faults.clear()
    assert fault.injected > 0  # the fault really happened


def test_ses_throttles_thirty_percent_of_calls(local_stack: Stack) -> None:
    orders_survive(local_stack, ses_throttling(rate=0.3), 60, "throttled")


def test_s3_refuses_writes_for_a_while(local_stack: Stack) -> None:
    bucket = local_stack.info.buckets["ArchiveBucket"]
    orders_survive(local_stack, s3_put_failures(bucket, seconds=8), 30, "s3down")


def test_the_broker_unreachable_for_a_while(local_stack: Stack) -> None:
    proxy = local_stack.stack.kafka_faults
    assert proxy is not None
    partitions = [TopicPartition("order-placed", p) for p in range(6)]
    before = end_offsets(local_stack.info.bootstrap_servers, partitions)
    bodies = orders(5, "brokerdown")
    proxy.cut()
    try:
        answers = [local_stack.post(body) for body in bodies]
    finally:
        proxy.restore()
    assert [status for status, _ in answers] == [503] * 5
    assert all(answer["error"] == "unavailable" for _, answer in answers)
    time.sleep(2)  # whatever a failed send might still deliver has had time to land
    assert end_offsets(local_stack.info.bootstrap_servers, partitions) == before

    retried = post_all(local_stack, bodies)  # the client retries, as Retry-After told it
    assert [status for status, _ in retried] == [202] * 5
    delivered_exactly_once(local_stack, {b["order_id"] for b in bodies})


def test_two_pollers_delivering_overlapping_ranges_archive_every_offset_once(
    local_stack: Stack,
) -> None:
    """One partition's batch is in flight (its S3 write held) when the archiver's partitions
    move to the other poller, which starts from the committed offset and delivers the same
    records while the first invocation still holds them; both writes then go through. The old
    owner's commit is refused, and every offset is archived once."""
    stack = local_stack.stack
    [mapping] = [m for m in stack.mappings if m.spec.function == "S3ArchiverFunction"]
    assert mapping.spec.maximum_pollers >= 2
    assert stack.aws_faults is not None
    refused_before = mapping.totals.refused_commits
    bucket = local_stack.info.buckets["ArchiveBucket"]
    held = stack.aws_faults.add(s3_writes_held(bucket))
    events = [an_order(f"overlap{i}@example.com") for i in range(8)]
    try:
        publish(local_stack, [message(event) for event in events], partition=0)
        wait_until(lambda: held.injected >= 1, timeout_s=60)  # the first owner is writing
        mapping.rebalance()
        wait_until(lambda: held.injected >= 2, timeout_s=60)  # and now the new owner too
    finally:
        held.release()
        stack.aws_faults.clear()
    wait_until(lambda: mapping.totals.refused_commits > refused_before, timeout_s=60)

    partitions = [TopicPartition("order-placed", p) for p in range(6)]
    ends = end_offsets(local_stack.info.bootstrap_servers, partitions)

    def archived() -> Counter[tuple[int, int]]:
        return Counter((line["partition"], line["offset"]) for line in local_stack.archived_lines())

    wanted = {(tp.partition, o) for tp in partitions for o in range(ends[tp])}
    wait_until(lambda: set(archived()) >= wanted, timeout_s=120)
    counts = archived()
    assert set(counts) == wanted
    assert set(counts.values()) == {1}, "an offset is in the archive twice"
    ids = {event.order_id for event in events}
    delivered_exactly_once(local_stack, ids)
