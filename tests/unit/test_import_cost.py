"""What each handler imports decides its cold start: every module is read at every cold start.

The X-Ray SDK alone was a quarter of a handler's import time (bench/README.md). Lambda's active
tracing (template.yaml, Globals) records every invocation without it, so no handler imports it,
and the layer does not ship it. kafka-python only where a function talks to Kafka.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TALKS_TO_KAFKA = {"order_api", "topic_provisioner"}
CUSTOM_RESOURCES = {"topic_provisioner", "bootstrap_brokers"}
FUNCTIONS = sorted(p.parent.name for p in (ROOT / "functions").glob("*/app.py"))


def imported_packages(function: str) -> set[str]:
    code = (
        f"import sys; from functions.{function} import app; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


def test_every_function_is_checked() -> None:
    assert {"order_api", "email_notifier", "s3_archiver", "topic_provisioner"} <= set(FUNCTIONS)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_handler_imports_no_xray_sdk_and_kafka_only_if_it_talks_to_kafka(function: str) -> None:
    packages = imported_packages(function)
    assert "aws_lambda_powertools" in packages  # the probe saw the handler's imports
    assert "aws_xray_sdk" not in packages
    assert ("kafka" in packages) == (function in TALKS_TO_KAFKA)
    # pydantic is for the functions that read orders; the custom resources read eight keys.
    assert ("pydantic" in packages) == (function not in CUSTOM_RESOURCES)


def test_the_layer_ships_no_xray_sdk() -> None:
    wanted = [
        line.split("#")[0].strip().lower()
        for line in (ROOT / "layers" / "shared" / "requirements.txt").read_text().splitlines()
    ]
    assert any(w.startswith("aws-lambda-powertools==") for w in wanted)
    assert not [w for w in wanted if "[tracer]" in w or w.startswith("aws-xray-sdk")]


def test_the_archiver_never_imports_email_validator_for_our_own_events(tmp_path: Path) -> None:
    """Its Unicode patterns cost some 20 ms of a cold start; plain_events decides our events
    without it, and the model imports it only for a record it must validate in full."""
    from devstack.msk_event import msk_event, sample_order_records

    event = tmp_path / "event.json"
    event.write_text(json.dumps(msk_event(sample_order_records(20, 2), "arn", "b:9098")))
    code = (
        "import sys, json; from functions.s3_archiver import app; "
        "from aws_lambda_powertools.utilities.kafka import ConsumerRecords; "
        "from orderstream.events import ORDER_EVENTS; "
        "from orderstream.archive import archive_line; "
        f"event = json.load(open({str(event)!r})); "
        "lines = [archive_line(r) for r in ConsumerRecords(event, ORDER_EVENTS).records]; "
        "assert len(lines) == 20 and all(line.error is None for line in lines); "
        "print('email_validator' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"
