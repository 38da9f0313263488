"""Settings: every misconfiguration is caught at init with a message naming the variable."""

from __future__ import annotations

import pytest

from orderstream import settings
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


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "KAFKA_BOOTSTRAP_SERVERS is not set"),
        ({"KAFKA_BOOTSTRAP_SERVERS": " , "}, "KAFKA_BOOTSTRAP_SERVERS is not set"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "b:9098"}, "needs AWS_REGION"),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "b:9098", "KAFKA_SECURITY": "tls"},
            "'tls' is not one of iam|plaintext",
        ),
        (
            {
                "KAFKA_BOOTSTRAP_SERVERS": "b:1",
                "KAFKA_SECURITY": "plaintext",
                "KAFKA_SEND_TIMEOUT_MS": "soon",
            },
            "is not an integer",
        ),
        (
            {
                "KAFKA_BOOTSTRAP_SERVERS": "b:1",
                "KAFKA_SECURITY": "plaintext",
                "KAFKA_SEND_TIMEOUT_MS": "60000",
            },
            "between 1000 and 25000",
        ),
    ],
)
def test_misconfiguration_fails_fast_and_readably(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        KafkaSettings.from_env(environ)


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
    with pytest.raises(settings.ConfigurationError, match="PARTIAL_BATCH_ITEM_KEYS='offset'"):
        settings.partial_batch_item_keys({settings.PARTIAL_BATCH_ITEM_KEYS: "offset"})
