"""Settings: every misconfiguration is caught at init with a message naming the variable."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from kafka.errors import KafkaConnectionError

from orderstream import kafka_client, settings
from orderstream.kafka_client import producer_config
from orderstream.settings import ConfigurationError, KafkaSecurity, KafkaSettings


def test_iam_is_the_default_and_uses_sasl_ssl() -> None:
    config = KafkaSettings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": "b-1:9098, b-2:9098,", "AWS_REGION": "eu-west-1"}
    )
    assert config.security is KafkaSecurity.IAM
    assert config.connection_config() == {
        "bootstrap_servers": ["b-1:9098", "b-2:9098"],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "AWS_MSK_IAM",
    }


def test_plaintext_for_the_local_broker() -> None:
    config = KafkaSettings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "KAFKA_SECURITY": "PLAINTEXT"}
    )
    assert config.connection_config()["security_protocol"] == "PLAINTEXT"
    assert "sasl_mechanism" not in config.connection_config()


NOT_SET = (
    "KAFKA_BOOTSTRAP_SERVERS is not set: give a comma-separated list of host:port (the "
    "cluster's IAM bootstrap string in AWS, 127.0.0.1:9092 locally)"
)
PLAIN = {"KAFKA_BOOTSTRAP_SERVERS": "b:1", "KAFKA_SECURITY": "plaintext"}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, NOT_SET),
        ({"KAFKA_BOOTSTRAP_SERVERS": " , "}, NOT_SET),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "b:9098"},
            "KAFKA_SECURITY=iam signs requests with SigV4 and needs AWS_REGION set",
        ),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "b:9098", "KAFKA_SECURITY": " TLS "},
            "KAFKA_SECURITY='tls' is not one of iam|plaintext",
        ),
        (
            {**PLAIN, "KAFKA_SEND_TIMEOUT_MS": "soon"},
            "KAFKA_SEND_TIMEOUT_MS='soon' is not an integer",
        ),
        (
            {**PLAIN, "KAFKA_SEND_TIMEOUT_MS": "999"},
            "KAFKA_SEND_TIMEOUT_MS must be between 1000 and 25000",
        ),
        (
            {**PLAIN, "KAFKA_SEND_TIMEOUT_MS": "25001"},
            "KAFKA_SEND_TIMEOUT_MS must be between 1000 and 25000",
        ),
    ],
)
def test_misconfiguration_fails_fast_and_readably(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        KafkaSettings.from_env(environ)
    assert str(refused.value) == message


@pytest.mark.parametrize("timeout", ["1000", "25000"])
def test_the_send_timeouts_limits_are_accepted(timeout: str) -> None:
    config = KafkaSettings.from_env({**PLAIN, "KAFKA_SEND_TIMEOUT_MS": timeout})
    assert config.send_timeout_ms == int(timeout)


def test_every_setting_is_read_from_the_environment_given() -> None:
    config = KafkaSettings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": " b-1:9098 ,b-2:9098",
            "KAFKA_SECURITY": "IAM",
            "AWS_DEFAULT_REGION": "us-east-2",
            "KAFKA_SEND_TIMEOUT_MS": "4000",
        }
    )
    assert config == KafkaSettings(("b-1:9098", "b-2:9098"), KafkaSecurity.IAM, "us-east-2", 4000)
    lambdas = KafkaSettings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": "b:1", "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "x"}
    )
    assert lambdas.region == "eu-west-1"  # Lambda's own variable first
    assert lambdas.send_timeout_ms == settings.DEFAULT_SEND_TIMEOUT_MS


def test_the_environment_is_os_environ_unless_one_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "from-os:1")
    monkeypatch.setenv("KAFKA_SECURITY", "plaintext")
    assert KafkaSettings.from_env().bootstrap_servers == ("from-os:1",)


@pytest.mark.parametrize("budget", [1_000, 10_000, 25_000])
def test_producer_waits_fit_inside_the_send_budget(budget: int) -> None:
    config = producer_config(
        KafkaSettings(("b:1",), KafkaSecurity.PLAINTEXT, None, send_timeout_ms=budget)
    )
    assert config["acks"] == "all"
    assert config["enable_idempotence"] is True
    assert config["max_block_ms"] + config["delivery_timeout_ms"] <= budget
    # kafka-python refuses a delivery timeout shorter than linger + request timeout.
    assert config["delivery_timeout_ms"] >= config["linger_ms"] + config["request_timeout_ms"]


def test_topic_and_required_settings() -> None:
    assert settings.order_topic({}) == "order-placed"
    assert settings.order_topic({"ORDER_TOPIC": "orders-dev"}) == "orders-dev"
    assert settings.required("X", {"X": " v "}) == "v"
    with pytest.raises(ConfigurationError, match="IDEMPOTENCY_TABLE"):
        settings.required(settings.IDEMPOTENCY_TABLE, {})


@pytest.mark.parametrize(
    ("raw", "keys"),
    [
        (None, ("partition", "topic-partition")),
        ("both", ("partition", "topic-partition")),
        ("partition", ("partition",)),
        ("topic-partition", ("topic-partition",)),
    ],
)
def test_partial_batch_item_keys(raw: str | None, keys: tuple[str, ...]) -> None:
    environ = {} if raw is None else {settings.PARTIAL_BATCH_ITEM_KEYS: raw}
    assert settings.partial_batch_item_keys(environ) == keys


def test_an_unknown_partial_batch_item_key_is_refused_by_name() -> None:
    with pytest.raises(settings.ConfigurationError) as refused:
        settings.partial_batch_item_keys({settings.PARTIAL_BATCH_ITEM_KEYS: "offset"})
    assert str(refused.value) == (
        "PARTIAL_BATCH_ITEM_KEYS='offset' must be one of both, partition, topic-partition"
    )


def test_the_producer_configuration_in_full() -> None:
    """Every value is a decision, so a change to one is a deliberate change to this test."""
    iam = KafkaSettings(("b-1:9098",), KafkaSecurity.IAM, "eu-west-1", send_timeout_ms=10_000)
    assert producer_config(iam) == {
        "bootstrap_servers": ["b-1:9098"],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "AWS_MSK_IAM",
        "client_id": "orderstream-producer",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 0,
        "max_block_ms": 3_333,  # a third of the budget to find the cluster, in whole ms
        "request_timeout_ms": 3_333,
        "delivery_timeout_ms": 6_667,  # the rest to deliver: 3,333 + 6,667 = the 10 s budget
        "bootstrap_timeout_ms": 3_333,
        "retry_backoff_ms": 100,
        "reconnect_backoff_ms": 50,
        "reconnect_backoff_max_ms": 1_000,
        "connections_max_idle_ms": 300_000,  # before MSK Serverless closes idle ones (~10 min)
    }


def test_a_short_budget_keeps_a_request_timeout_of_half_a_second() -> None:
    short = KafkaSettings(("b:1",), KafkaSecurity.PLAINTEXT, None, send_timeout_ms=1_000)
    config = producer_config(short)
    assert (config["max_block_ms"], config["request_timeout_ms"]) == (333, 500)
    assert config["delivery_timeout_ms"] == 667


class RecordingProducer:
    """Stands in for kafka-python's KafkaProducer: records how it was built and closed."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **config: Any) -> None:
        if config.get("bootstrap_servers") == ["down:1"]:
            raise KafkaConnectionError()
        RecordingProducer.made.append(config)
        self.closed_with: list[Any] = []

    def close(self, timeout: Any = None) -> None:
        self.closed_with.append(timeout)


def test_one_producer_per_container_until_it_is_discarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    RecordingProducer.made = []
    monkeypatch.setattr(kafka_client, "KafkaProducer", RecordingProducer)
    monkeypatch.setattr(kafka_client, "_producer", None)
    environ = {"KAFKA_BOOTSTRAP_SERVERS": "b:1", "KAFKA_SECURITY": "plaintext"}

    first = kafka_client.get_producer(environ)
    assert kafka_client.get_producer(environ) is first
    assert RecordingProducer.made == [producer_config(KafkaSettings.from_env(environ))]

    kafka_client.discard_producer()
    assert first.closed_with == [0]  # closed without waiting: nothing buffered goes out late
    second = kafka_client.get_producer(environ)
    assert second is not first
    assert len(RecordingProducer.made) == 2
    kafka_client.discard_producer()
    kafka_client.discard_producer()  # nothing to discard: no error


def test_a_producer_that_cannot_be_built_is_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_client, "KafkaProducer", RecordingProducer)
    monkeypatch.setattr(kafka_client, "_producer", None)
    with pytest.raises(KafkaConnectionError):
        kafka_client.get_producer(
            {"KAFKA_BOOTSTRAP_SERVERS": "down:1", "KAFKA_SECURITY": "plaintext"}
        )
    assert kafka_client._producer is None


def test_seconds_are_refused_outside_their_bounds_naming_the_bounds() -> None:
    bounded = {"HOLD": "1201"}
    with pytest.raises(ConfigurationError) as refused:
        settings.seconds("HOLD", 900, 60, 1200, bounded)
    assert str(refused.value) == "HOLD must be 60 to 1200 seconds, not 1201"
    with pytest.raises(ConfigurationError) as refused:
        settings.seconds("EXPIRY", 86400, 3600, None, {"EXPIRY": "5"})
    assert str(refused.value) == "EXPIRY must be at least 3600 seconds, not 5"
    assert settings.seconds("HOLD", 900, 60, 1200, {"HOLD": "1200"}) == 1200  # bounds included
    assert settings.seconds("HOLD", 900, 60, 1200, {"HOLD": "60"}) == 60
