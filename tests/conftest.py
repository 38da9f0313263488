"""Fixtures shared by every test suite."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import settings

from devstack.broker import EmbeddedBroker

# No per-example deadline: it is a timed assertion, and a loaded 2-core CI machine made a 200 ms
# one fail an archive property test that was right.
settings.register_profile("orderstream", deadline=None)
# `make mutation` runs each mutant against the same examples, so a verdict never depends on luck.
settings.register_profile(
    "mutation",
    parent=settings.get_profile("orderstream"),
    derandomize=True,
    database=None,
    max_examples=10,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "orderstream"))


def _fresh_ledger_calls() -> None:
    """mutmut runs each mutant in a fork of a process whose notifier pool already has threads.
    A fork keeps none of them, yet the pool still counts one as idle and starts no new thread:
    the ledger's calls would wait for ever, and every survivor would be judged a timeout (the
    first run's 'timeouts' were exactly that). Lambda never forks; the pool stays as it is."""
    notifier = sys.modules.get("functions.email_notifier.app")
    if notifier is not None:
        pool = ThreadPoolExecutor(
            max_workers=notifier.LEDGER_CONCURRENCY, thread_name_prefix="ledger"
        )
        setattr(notifier, "LEDGER_CALLS", pool)  # noqa: B010 -- the module's own pool, replaced


os.register_at_fork(after_in_child=_fresh_ledger_calls)


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


@pytest.fixture
def aws() -> Iterator[None]:
    """In-process moto for every AWS service the test touches."""
    from moto import mock_aws

    with mock_aws():
        yield


IDEMPOTENCY_TABLE_NAME = "orderstream-idempotency-test"


@pytest.fixture
def idempotency_table(aws: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """The idempotency table as template.yaml declares it: Powertools' default key `id`, TTL on
    `expiration`. Its name is exported as IDEMPOTENCY_TABLE."""
    import boto3

    from orderstream import settings

    client = boto3.client("dynamodb")
    client.create_table(
        TableName=IDEMPOTENCY_TABLE_NAME,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.update_time_to_live(
        TableName=IDEMPOTENCY_TABLE_NAME,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"},
    )
    monkeypatch.setenv(settings.IDEMPOTENCY_TABLE, IDEMPOTENCY_TABLE_NAME)
    return IDEMPOTENCY_TABLE_NAME


@pytest.fixture(scope="session")
def sam_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`sam build` of a copy of the repository, as a user runs it (no Docker: the venv's
    python3.13 builds the layer). Returns the build folder."""
    import shutil
    import subprocess
    import sys

    from devstack.template import REGION, ROOT

    root = tmp_path_factory.mktemp("sam")
    source = root / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv*", ".git", ".aws-sam", "*cache*", "__pycache__", "outbox"
        ),
    )
    build = root / "build"
    venv_bin = Path(sys.executable).parent
    result = subprocess.run(
        [
            str(venv_bin / "sam"),
            "build",
            "--build-dir",
            str(build),
            "--cache-dir",
            str(root / "cache"),
        ],
        cwd=source,
        env={
            **os.environ,
            "PATH": f"{venv_bin}:{os.environ['PATH']}",
            "AWS_DEFAULT_REGION": REGION,
            "SAM_CLI_TELEMETRY": "0",
        },
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return build
