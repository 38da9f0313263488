"""Every environment variable the functions read, and how a Kafka client connects.

template.yaml sets these variables; this module is the only code that knows their names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

# Environment variable names.
KAFKA_BOOTSTRAP_SERVERS: Final = "KAFKA_BOOTSTRAP_SERVERS"
KAFKA_SECURITY: Final = "KAFKA_SECURITY"
KAFKA_SEND_TIMEOUT_MS: Final = "KAFKA_SEND_TIMEOUT_MS"
ORDER_TOPIC: Final = "ORDER_TOPIC"
IDEMPOTENCY_TABLE: Final = "IDEMPOTENCY_TABLE"
IDEMPOTENCY_EXPIRES_SECONDS: Final = "IDEMPOTENCY_EXPIRES_SECONDS"
ARCHIVE_BUCKET: Final = "ARCHIVE_BUCKET"
# The archive table's projected years ("2024,2099"): records outside them are filed at its edges.
ARCHIVE_YEARS: Final = "ARCHIVE_YEARS"
# Poison records go to S3, not SQS: a Kafka record can be up to 8 MiB (more than an SQS message
# holds), and a key derived from topic/partition/offset makes a redelivered poison record
# overwrite its own dead letter instead of adding a second one.
DEAD_LETTER_BUCKET: Final = "DEAD_LETTER_BUCKET"
SENDER_EMAIL: Final = "SENDER_EMAIL"
EMAIL_TEMPLATE: Final = "EMAIL_TEMPLATE"
# Non-production stacks send every email here instead of to the customer ("" = off).
EMAIL_REDIRECT_TO: Final = "EMAIL_REDIRECT_TO"
# How long the email notifier's claim on an order keeps other invocations off it.
EMAIL_CLAIM_HOLD_SECONDS: Final = "EMAIL_CLAIM_HOLD_SECONDS"
# Which key(s) name a failed record in a partial batch response: both, partition or
# topic-partition (the template's PartialBatchItemKeys).
PARTIAL_BATCH_ITEM_KEYS: Final = "PARTIAL_BATCH_ITEM_KEYS"

DEFAULT_ORDER_TOPIC: Final = "order-placed"
DEFAULT_SEND_TIMEOUT_MS: Final = 10_000


class ConfigurationError(RuntimeError):
    """A required setting is missing or malformed; the message says which and how to fix it."""


class KafkaSecurity(StrEnum):
    IAM = "iam"  # MSK: SASL_SSL with the AWS_MSK_IAM mechanism, signed by the function's role
    PLAINTEXT = "plaintext"  # the local broker


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap_servers: tuple[str, ...]
    security: KafkaSecurity
    region: str | None
    send_timeout_ms: int = DEFAULT_SEND_TIMEOUT_MS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaSettings:
        env = os.environ if environ is None else environ
        servers = tuple(
            s.strip() for s in env.get(KAFKA_BOOTSTRAP_SERVERS, "").split(",") if s.strip()
        )
        if not servers:
            raise ConfigurationError(
                f"{KAFKA_BOOTSTRAP_SERVERS} is not set: give a comma-separated list of host:port "
                "(the cluster's IAM bootstrap string in AWS, 127.0.0.1:9092 locally)"
            )
        raw_security = env.get(KAFKA_SECURITY, KafkaSecurity.IAM.value).strip().lower()
        try:
            security = KafkaSecurity(raw_security)
        except ValueError:
            choices = "|".join(s.value for s in KafkaSecurity)
            raise ConfigurationError(
                f"{KAFKA_SECURITY}={raw_security!r} is not one of {choices}"
            ) from None
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
        if security is KafkaSecurity.IAM and not region:
            raise ConfigurationError(
                f"{KAFKA_SECURITY}=iam signs requests with SigV4 and needs AWS_REGION set"
            )
        raw_timeout = env.get(KAFKA_SEND_TIMEOUT_MS, str(DEFAULT_SEND_TIMEOUT_MS))
        try:
            send_timeout_ms = int(raw_timeout)
        except ValueError:
            raise ConfigurationError(
                f"{KAFKA_SEND_TIMEOUT_MS}={raw_timeout!r} is not an integer"
            ) from None
        if not 1_000 <= send_timeout_ms <= 25_000:
            # Above 25 s the API Gateway integration (29 s) would time out before we answer 503.
            raise ConfigurationError(f"{KAFKA_SEND_TIMEOUT_MS} must be between 1000 and 25000")
        return cls(servers, security, region, send_timeout_ms)

    def connection_config(self) -> dict[str, Any]:
        """kafka-python settings shared by producers, consumers and admin clients."""
        config: dict[str, Any] = {"bootstrap_servers": list(self.bootstrap_servers)}
        if self.security is KafkaSecurity.IAM:
            config |= {"security_protocol": "SASL_SSL", "sasl_mechanism": "AWS_MSK_IAM"}
        else:
            config |= {"security_protocol": "PLAINTEXT"}
        return config


def order_topic(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(ORDER_TOPIC) or DEFAULT_ORDER_TOPIC


def idempotency_expiry(
    default_seconds: int, minimum_seconds: int, environ: Mapping[str, str] | None = None
) -> int:
    """How long an idempotency record lives (IDEMPOTENCY_EXPIRES_SECONDS, else the default)."""
    return seconds(IDEMPOTENCY_EXPIRES_SECONDS, default_seconds, minimum_seconds, None, environ)


def seconds(
    name: str,
    default: int,
    minimum: int,
    maximum: int | None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """A whole number of seconds from the environment, within bounds, else the default."""
    env = os.environ if environ is None else environ
    raw = env.get(name, "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
        raise ConfigurationError(f"{name} must be {bounds} seconds, not {value}")
    return value


def required(name: str, environ: Mapping[str, str] | None = None) -> str:
    """A setting the function cannot run without; fails at init with the variable's name."""
    env = os.environ if environ is None else environ
    value = env.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"environment variable {name} is not set")
    return value


def partial_batch_item_keys(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The keys a failed record is named under: PARTIAL_BATCH_ITEM_KEYS, `both` by default."""
    env = os.environ if environ is None else environ
    raw = env.get(PARTIAL_BATCH_ITEM_KEYS, "").strip() or "both"
    choices = {
        "both": ("partition", "topic-partition"),
        "partition": ("partition",),
        "topic-partition": ("topic-partition",),
    }
    if raw not in choices:
        raise ConfigurationError(
            f"{PARTIAL_BATCH_ITEM_KEYS}={raw!r} must be one of {', '.join(choices)}"
        )
    return choices[raw]
