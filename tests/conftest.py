"""Fixtures shared by every test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devstack.broker import EmbeddedBroker


@pytest.fixture(autouse=True, scope="session")
def _no_real_aws() -> Iterator[None]:
    """Tests never reach AWS: fake credentials and a fixed region for every boto3 client."""
    saved = dict(os.environ)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_REGION": "eu-west-1",
            "POWERTOOLS_SERVICE_NAME": "orderstream-tests",
            "POWERTOOLS_METRICS_NAMESPACE": "orderstream-tests",
            "POWERTOOLS_TRACE_DISABLED": "true",
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[EmbeddedBroker]:
    """A real Kafka-protocol broker (Tansu) on a free 127.0.0.1 port, for the whole session."""
    with EmbeddedBroker() as broker:
        yield broker
