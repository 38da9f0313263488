"""publish(): the broker's acknowledgement awaited within the send budget, never past it."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError

from orderstream import kafka_client, publishing
from orderstream.events import OrderPlaced
from orderstream.models import OrderRequest
from orderstream.publishing import BrokerUnavailableError, idempotency_expiry, publish
from orderstream.settings import ConfigurationError
from tests.fakes import in_this_thread
from tests.unit.test_models import VALID


class TimedProducer:
    """Acknowledges after `delay_s`, recording the timeout each `get` was given."""

    def __init__(self, delay_s: float = 0.0, failure: Exception | None = None) -> None:
        self.delay_s, self.failure = delay_s, failure
        self.timeouts: list[float | None] = []
        self.discarded = 0

    def send(self, topic: str, **message: Any) -> Any:
        def get(timeout: float | None = None) -> Any:
            self.timeouts.append(timeout)
            if self.failure is not None:
                raise self.failure
            time.sleep(self.delay_s)
            return SimpleNamespace(topic=topic, partition=4, offset=17)

        return SimpleNamespace(get=get)


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> TimedProducer:
    fake = TimedProducer()
    monkeypatch.setattr(kafka_client, "get_producer", lambda environ=None: fake)

    def discard() -> None:
        fake.discarded += 1

    monkeypatch.setattr(kafka_client, "discard_producer", discard)
    return fake


def an_event() -> OrderPlaced:
    return OrderPlaced.new(OrderRequest.model_validate(VALID).to_order(), "corr-1")


def test_the_acknowledgement_is_awaited_for_what_is_left_of_the_budget(
    producer: TimedProducer,
) -> None:
    producer.delay_s = 0.05
    result = publish(an_event(), topic="order-placed", send_timeout_ms=4_000)

    [timeout] = producer.timeouts
    assert timeout is not None
    assert 2.0 < timeout <= 4.0  # the budget less what the send itself took
    assert (result.accepted.topic, result.accepted.partition, result.accepted.offset) == (
        "order-placed",
        4,
        17,
    )
    assert result.publish_ms is not None
    assert 50 <= result.publish_ms < 60_000  # milliseconds (the fake waits 50), not seconds
    assert producer.discarded == 0


def clock(monkeypatch: pytest.MonkeyPatch, *readings: float) -> None:
    """publish()'s monotonic clock reads these, in turn: start, after send, after the wait."""
    times = iter(readings)
    monkeypatch.setattr(
        "orderstream.publishing.time.monotonic", in_this_thread(lambda: next(times), time.monotonic)
    )


def test_the_wait_is_the_budget_less_the_send_and_publish_ms_is_the_whole_time(
    producer: TimedProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock(monkeypatch, 100.0, 100.5, 101.25)
    result = publish(an_event(), topic="order-placed", send_timeout_ms=4_000)
    assert producer.timeouts == [3.5]
    assert result.publish_ms == 1250.0


def test_a_send_that_used_the_whole_budget_waits_no_longer(
    producer: TimedProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock(monkeypatch, 100.0, 105.0, 105.0)
    publish(an_event(), topic="order-placed", send_timeout_ms=4_000)
    assert producer.timeouts == [0.0]


def test_no_acknowledgement_in_time_discards_the_producer_and_says_so(
    producer: TimedProducer,
) -> None:
    producer.failure = KafkaTimeoutError("Expiring 1 record(s)")
    with pytest.raises(BrokerUnavailableError) as refused:
        publish(an_event(), topic="order-placed", send_timeout_ms=1_000)
    assert str(refused.value) == (
        "The order could not be published: the message broker did not acknowledge it in time."
    )
    assert producer.discarded == 1


def test_the_idempotency_window_is_a_minute_at_least(monkeypatch: pytest.MonkeyPatch) -> None:
    assert idempotency_expiry({"IDEMPOTENCY_EXPIRES_SECONDS": "60"}) == 60
    with pytest.raises(ConfigurationError):
        idempotency_expiry({"IDEMPOTENCY_EXPIRES_SECONDS": "59"})
    assert idempotency_expiry({}) == publishing.DEFAULT_IDEMPOTENCY_EXPIRES_SECONDS


def test_only_an_intake_result_is_stored_as_the_answer() -> None:
    with pytest.raises(TypeError) as refused:
        publishing._StoredAnswer().to_dict({"order_id": "x"})
    assert str(refused.value) == "expected an IntakeResult, not dict"
