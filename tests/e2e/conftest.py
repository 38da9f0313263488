"""The local stack, started on free 127.0.0.1 ports for the end-to-end tests."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

from devstack import aws
from devstack.mail import emailed_order_ids
from devstack.stack import LocalStack, StackInfo
from devstack.status import end_offsets, group_lag
from orderstream.archive import read_lines
from orderstream.events import OrderPlaced, to_message
from orderstream.models import Customer, LineItem, Order, compute_total


class Stack:
    """A running LocalStack plus the questions the tests ask it."""

    def __init__(self, stack: LocalStack, info: StackInfo, lines: list[str]) -> None:
        self.stack, self.info, self.lines = stack, info, lines

    def post(
        self, body: Any, headers: dict[str, str] | None = None, path: str = "/orders"
    ) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            self.info.api_url + path,
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def lag(self, function: str) -> int:
        """Records on the topic that `function`'s consumer group has not committed yet."""
        partitions = [TopicPartition(self.info.topics[0], p) for p in range(6)]
        ends = end_offsets(self.info.bootstrap_servers, partitions)
        admin = KafkaAdminClient(bootstrap_servers=self.info.bootstrap_servers, client_id="e2e-lag")
        try:
            return group_lag(admin, self.info.groups[function], ends)[0]
        finally:
            admin.close()

    def wait_caught_up(self, function: str, timeout_s: float = 120) -> None:
        """Until `function` has handled and committed every record on the topic: after this,
        a check that "nothing more arrived" has seen the consumer go past the records."""
        # <= 0 rather than == 0: a commit read a moment after the end offsets may be past them.
        wait_until(lambda: self.lag(function) <= 0, timeout_s=timeout_s, every_s=0.25)

    def emailed_orders(self) -> Counter[str]:
        """order_id -> number of confirmation emails SES accepted for it."""
        return emailed_order_ids(aws.MotoServer.data_at(self.info.aws_endpoint))

    def objects(self, logical_id: str) -> dict[str, bytes]:
        s3 = aws.client("s3", self.info.aws_endpoint)
        bucket = self.info.buckets[logical_id]
        keys = [
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])
        ]
        return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}

    def stack_object_metadata(self, key: str, logical_id: str = "ArchiveBucket") -> dict[str, str]:
        s3 = aws.client("s3", self.info.aws_endpoint)
        head = s3.head_object(Bucket=self.info.buckets[logical_id], Key=key)
        metadata: dict[str, str] = head.get("Metadata", {})
        return metadata

    def archived_lines(self) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for body in self.objects("ArchiveBucket").values()
            for line in read_lines(body)
        ]

    def archived_orders(self) -> Counter[str]:
        """order_id -> number of (partition, offset) positions archived for it."""
        positions = {
            (line["partition"], line["offset"]): line["value"]["order"]["order_id"]
            for line in self.archived_lines()
            if line["value"]
        }
        return Counter(positions.values())


def wait_until(
    condition: Callable[[], bool], timeout_s: float = 90.0, every_s: float = 0.5
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s} s")
        time.sleep(every_s)


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("devstack")
    lines: list[str] = []
    lock = threading.Lock()

    def log(line: str) -> None:
        with lock:
            lines.append(line)

    stack = LocalStack(
        state_dir=state,
        outbox=Path(state) / "outbox",
        log=log,
        max_batching_window_s=1.0,
        faults=True,  # proxies in front of AWS and Kafka; tests switch faults on and off
        # The shortest claim hold the template allows: an order whose container a test kills
        # after claiming waits this long, not the deployed 15 minutes.
        parameters={"EmailClaimHoldSeconds": "60"},
    )
    info = stack.start()
    try:
        yield Stack(stack, info, lines)
    finally:
        stack.stop()


def publish(
    stack: Stack,
    values: list[tuple[bytes, bytes]],
    partition: int = 0,
    topic: str = "order-placed",
) -> None:
    """Straight to the topic (as a producer that bypassed the API would), one partition, so
    the records meet in one batch."""
    producer = KafkaProducer(bootstrap_servers=stack.info.bootstrap_servers)
    try:
        for key, value in values:
            producer.send(topic, key=key, value=value, partition=partition)
        producer.flush(timeout=10)
    finally:
        producer.close()


def message(event: OrderPlaced) -> tuple[bytes, bytes]:
    encoded = to_message(event)
    return encoded.key, encoded.value


def an_order(
    email: str, name: str = "Ada Lovelace", order_id: uuid.UUID | None = None
) -> OrderPlaced:
    items = [LineItem(sku="BOOK-001", name="Notes", quantity=1, unit_price="19.95")]
    order = Order(
        order_id=order_id or uuid.uuid4(),
        customer=Customer(id="c-1", email=email, name=name),
        items=items,
        currency="EUR",
        total=compute_total(items),
    )
    return OrderPlaced.new(order, "e2e-email-once")
