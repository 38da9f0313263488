"""One Kafka producer per Lambda container, built lazily from settings.

Only the producer and the topic provisioner import this module: kafka-python costs ~180 ms to
import, which the consumers have no reason to pay.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from kafka import KafkaProducer

from orderstream.settings import KafkaSettings

_lock = threading.Lock()
_producer: KafkaProducer | None = None


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    """acks=all and idempotence, with every wait bounded by the settings' send timeout.

    `send().get()` can then never outlast `send_timeout_ms`: metadata waits (`max_block_ms`)
    plus delivery (`delivery_timeout_ms`) stay inside it, so the API answers 503 in time.
    """
    budget = settings.send_timeout_ms
    request_timeout = max(500, budget // 3)
    return settings.connection_config() | {
        "client_id": "orderstream-producer",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 0,  # one order per request: batching would only add latency
        "max_block_ms": budget // 3,
        "request_timeout_ms": request_timeout,
        "delivery_timeout_ms": budget - budget // 3,
        "bootstrap_timeout_ms": budget // 3,
        "retry_backoff_ms": 100,
        "reconnect_backoff_ms": 50,
        "reconnect_backoff_max_ms": 1_000,
        # MSK Serverless closes idle connections after ~10 min; recycle before it does.
        "connections_max_idle_ms": 5 * 60 * 1000,
    }


def get_producer(environ: Mapping[str, str] | None = None) -> KafkaProducer:
    """The container's producer; built on first use, rebuilt after `discard_producer()`.

    Construction talks to the broker, so a broker that is down raises here (and is retried
    on the next call) instead of leaving a broken producer cached.
    """
    global _producer
    with _lock:
        if _producer is None:
            _producer = KafkaProducer(**producer_config(KafkaSettings.from_env(environ)))
        return _producer


def discard_producer() -> None:
    """Close and forget the producer after a failed send, so the next call starts afresh.

    Closed without waiting: a record still buffered must not be delivered after the caller
    has already been told the publish failed.
    """
    global _producer
    with _lock:
        producer, _producer = _producer, None
    if producer is not None:
        producer.close(timeout=0)
