"""The whole pipeline on the local stack: API -> broker -> mappings -> SES and S3."""

from __future__ import annotations

import copy
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kafka import KafkaProducer, TopicPartition

from devstack.status import end_offsets
from orderstream.events import OrderPlaced, to_message
from orderstream.models import OrderRequest
from tests.e2e.conftest import Stack, wait_until
from tests.samples import load_event

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLE: dict[str, Any] = json.loads(load_event("api-post-order.json")["body"])


def order(i: int) -> dict[str, Any]:
    body = copy.deepcopy(SAMPLE)
    body["order_id"] = str(uuid.uuid4())
    body["customer"]["email"] = f"customer{i}@example.com"
    body["items"][0]["quantity"] = 1 + i % 5
    return body


def topic_ends(stack: Stack) -> dict[TopicPartition, int]:
    partitions = [TopicPartition(stack.info.topics[0], p) for p in range(6)]
    return end_offsets(stack.info.bootstrap_servers, partitions)


def test_orders_are_emailed_and_archived_exactly_once(local_stack: Stack) -> None:
    bodies = [order(i) for i in range(200)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(local_stack.post, bodies))
    assert [status for status, _ in answers] == [202] * 200
    ids = {body["order_id"] for body in bodies}
    assert {answer["order_id"] for _, answer in answers} == ids

    wait_until(lambda: ids <= set(local_stack.emailed_orders()), timeout_s=120)
    wait_until(lambda: ids <= set(local_stack.archived_orders()), timeout_s=120)
    emailed, archived = local_stack.emailed_orders(), local_stack.archived_orders()
    assert all(emailed[i] == 1 for i in ids)
    assert all(archived[i] == 1 for i in ids)

    # Replays answer as the first time and publish nothing; invalid orders publish nothing.
    before = topic_ends(local_stack)
    for body, (_, first) in zip(bodies[:20], answers[:20], strict=True):
        status, again = local_stack.post(body)
        assert (status, again) == (202, first)
    invalid = [{}, {"customer": {}}, {**bodies[0], "currency": "EURO"}, {**bodies[1], "items": []}]
    for body in invalid:
        assert local_stack.post(body)[0] in {400, 422}
    assert local_stack.post(b"{not json")[0] == 400
    assert topic_ends(local_stack) == before
    local_stack.wait_caught_up("EmailNotifierFunction")  # nothing more may arrive
    assert all(local_stack.emailed_orders()[i] == 1 for i in ids)


def test_a_poison_record_is_dead_lettered_and_the_partition_keeps_flowing(
    local_stack: Stack,
) -> None:
    good = OrderPlaced.new(OrderRequest.model_validate(order(0)).to_order(), "e2e-after-poison")
    message = to_message(good)
    producer = KafkaProducer(bootstrap_servers=local_stack.info.bootstrap_servers)
    try:
        poison = producer.send(
            "order-placed", key=b"poison", value=b"\xff not an event", partition=4
        ).get(10)
        producer.send(
            "order-placed",
            key=message.key,
            value=message.value,
            headers=message.headers,
            partition=4,
        ).get(10)
    finally:
        producer.close()

    def dead_letter_for_poison() -> bool:
        return any(
            f"/{poison.partition}/" in key and key.endswith(f"{poison.offset:020d}.json")
            for key in local_stack.objects("DeadLetterBucket")
        )

    wait_until(dead_letter_for_poison)
    wait_until(lambda: local_stack.emailed_orders()[good.order_id] == 1)
    [letter] = [
        body
        for key, body in local_stack.objects("DeadLetterBucket").items()
        if key.endswith(f"{poison.offset:020d}.json")
    ]
    assert "not UTF-8 JSON" in json.loads(letter)["reason"]
    wait_until(
        lambda: any(
            line["offset"] == poison.offset and line["partition"] == 4 and line["error"]
            for line in local_stack.archived_lines()
        )
    )


def test_the_local_api_reads_chunked_bodies_and_closes_after_an_oversize_one(
    local_stack: Stack,
) -> None:
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(local_stack.info.api_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
    try:
        body = json.dumps(order(7)).encode()
        connection.request(
            "POST",
            "/orders",
            body=iter([body[:10], body[10:]]),
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        assert response.status == 202, response.read()
        response.read()
        connection.putrequest("POST", "/orders")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(11 * 1024 * 1024))
        connection.endheaders()
        oversize = connection.getresponse()
        assert oversize.status == 413
        assert oversize.getheader("Connection") == "close"
    finally:
        connection.close()
