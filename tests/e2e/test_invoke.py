"""`python -m devstack invoke`: every events/ sample gives its documented result, and every
function runs from its `sam build` output with nothing but its folder and the layer."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.functions import FunctionHost, load_functions
from devstack.stack import LocalStack
from devstack.template import ROOT
from tests.fakes import recording_http_server
from tests.samples import load_event

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def invoke(*args: str) -> tuple[int, Any, str]:
    result = subprocess.run(
        [sys.executable, "-m", "devstack", "invoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return (
        result.returncode,
        json.loads(result.stdout) if result.stdout.strip() else None,
        result.stderr,
    )


@pytest.mark.parametrize(
    ("function", "event", "check"),
    [
        ("OrderApiFunction", "api-post-order.json", lambda r: r["statusCode"] == 202),
        ("OrderApiFunction", "api-post-order-invalid.json", lambda r: r["statusCode"] == 422),
        ("EmailNotifierFunction", "msk-orders.json", lambda r: r["batchItemFailures"] == []),
        ("EmailNotifierFunction", "msk-poison.json", lambda r: r["batchItemFailures"] == []),
        ("EmailNotifierFunction", "msk-null-key.json", lambda r: r["batchItemFailures"] == []),
        ("S3ArchiverFunction", "msk-orders.json", lambda r: r["archived"] == 5),
        ("S3ArchiverFunction", "msk-poison.json", lambda r: r["poison"] == 1),
        # The Lambda guide's own sample: its value is not JSON, so both keep it as poison.
        ("S3ArchiverFunction", "msk-guide-sample.json", lambda r: r["poison"] == 1),
        ("EmailNotifierFunction", "msk-guide-sample.json", lambda r: r["batchItemFailures"] == []),
    ],
)
def test_invoke_gives_the_documented_result(function: str, event: str, check: Any) -> None:
    code, result, log = invoke(function, "-e", f"events/{event}")
    assert code == 0, log[-3000:]
    assert check(result), result
    assert f"{function}: ok" in log


def test_invoke_exits_non_zero_when_the_handler_raises(tmp_path: Path) -> None:
    broken = load_event("msk-orders.json")
    broken["records"] = "not a dict of partitions"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    code, result, log = invoke("S3ArchiverFunction", "-e", str(tmp_path / "broken.json"))
    assert code == 1
    assert result["errorType"]
    assert "S3ArchiverFunction: error" in log


def test_an_unknown_function_is_a_clear_error() -> None:
    code, _, log = invoke("NoSuchFunction", "-e", "events/msk-orders.json")
    assert code == 2
    assert "no function NoSuchFunction" in log


@pytest.fixture(scope="module")
def backing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(state_dir=tmp_path_factory.mktemp("built"), outbox=None, log=lambda _: None)
    stack.start_backing()
    try:
        yield stack
    finally:
        stack.stop()


def test_every_function_runs_from_its_build_output(sam_build: Path, backing: LocalStack) -> None:
    assert backing.resolver is not None
    assert backing.moto is not None
    functions = load_functions(backing.resolver)
    with recording_http_server() as (url, responses):
        delete = load_event("cfn-topics-delete.json") | {"ResponseURL": url}
        lookup_delete = load_event("cfn-bootstrap-brokers-create.json") | {
            "RequestType": "Delete",
            "PhysicalResourceId": "bootstrap-brokers/orderstream/6f1a2b3c",
            "ResponseURL": url,
        }
        events: dict[str, tuple[dict[str, Any], Callable[[Any], bool]]] = {
            "OrderApiFunction": (
                load_event("api-post-order.json"),
                lambda r: r["statusCode"] == 202,
            ),
            "EmailNotifierFunction": (
                load_event("msk-orders.json"),
                lambda r: r["batchItemFailures"] == [],
            ),
            "S3ArchiverFunction": (load_event("msk-orders.json"), lambda r: r["archived"] == 5),
            # Delete with DeleteTopicsOnDelete=false needs no AWS: it only answers CloudFormation.
            "TopicProvisionerFunction": (delete, lambda r: r == {"Status": "SUCCESS"}),
            # So does the bootstrap lookup's Delete (its Create needs the MSK API: AWS only).
            "BootstrapBrokersFunction": (lookup_delete, lambda r: r == {"Status": "SUCCESS"}),
        }
        assert set(events) == set(functions)
        for name, (event, check) in events.items():
            host = FunctionHost(functions[name], backing.moto.endpoint_url, built_dir=sam_build)
            try:
                result = host.invoke(event)
            finally:
                host.stop()
            assert result.ok, (name, result.error)
            assert check(result.payload), (name, result.payload)
        assert [json.loads(r.body)["Status"] for r in responses] == ["SUCCESS", "SUCCESS"]
