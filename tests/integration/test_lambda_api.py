"""Lambda's API for the local functions, held to what boto3's lambda client expects of AWS.

The functions and mappings are template.yaml's, read as the local stack reads them; only the
invocation is a stand-in. Every call goes through boto3 with endpoint_url, as the operator tools
make them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.config import Config

from devstack import aws
from devstack.esm import MappingSpec
from devstack.functions import FunctionSpec, Invocation, load_functions
from devstack.lambda_api import LambdaApiServer, template_properties
from devstack.stack import LOCAL_PARAMETERS, mapping_specs
from devstack.template import ACCOUNT_ID, REGION, Resolver, load_template

pytestmark = pytest.mark.integration

NOTIFIER = "EmailNotifierFunction"
ARCHIVER = "S3ArchiverFunction"
ERROR = {
    "errorMessage": "boom",
    "errorType": "RuntimeError",
    "stackTrace": ['  File "app.py", line 1\n'],
}


@dataclass
class FakeInvoker:
    """Answers {"echo": event}, or fails when the event asks to; records every call."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    called: threading.Event = field(default_factory=threading.Event)

    def __call__(self, logical_id: str, event: Any) -> Invocation:
        self.calls.append((logical_id, event))
        self.called.set()
        fails = isinstance(event, dict) and event.get("fail")
        return Invocation(
            request_id="req-1",
            ok=not fails,
            payload=None if fails else {"echo": event},
            error=ERROR if fails else None,
            duration_ms=1.0,
            init_ms=0.0,
        )


@dataclass
class Served:
    client: Any
    invoker: FakeInvoker
    functions: dict[str, FunctionSpec]
    mappings: list[MappingSpec]
    resolver: Resolver


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    template = load_template()
    resolver = aws.plan(template, LOCAL_PARAMETERS, "127.0.0.1:9092").resolver(
        template, LOCAL_PARAMETERS
    )
    functions = load_functions(resolver)
    mappings = mapping_specs(functions, resolver)
    invoker = FakeInvoker()
    server = LambdaApiServer(
        {lid: (spec.function_name, spec) for lid, spec in functions.items()},
        invoker,
        lambda: mappings,
        properties=template_properties(resolver),
        log=lambda line: None,
    ).start()
    client = boto3.client(
        "lambda",
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id="x",
        aws_secret_access_key="x",  # the local API takes any credentials
        config=Config(retries={"total_max_attempts": 1}),
    )
    try:
        yield Served(client, invoker, functions, mappings, resolver)
    finally:
        server.stop()


def invoke(served: Served, name: str, event: Any, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    response = served.client.invoke(FunctionName=name, Payload=json.dumps(event), **kwargs)
    body = response["Payload"].read()
    return response, json.loads(body) if body else None


def test_invoke_returns_the_functions_result(served: Served) -> None:
    name = served.functions[NOTIFIER].function_name
    assert name == "orderstream-local-email-notifier"
    response, payload = invoke(served, name, {"order": 1})
    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in response
    assert payload == {"echo": {"order": 1}}
    assert served.invoker.calls[-1] == (NOTIFIER, {"order": 1})


@pytest.mark.parametrize(
    "form",
    [
        "{name}",
        "{name}:$LATEST",
        f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{{name}}",
        f"{ACCOUNT_ID}:function:{{name}}",
    ],
)
def test_a_function_is_found_by_name_or_arn(served: Served, form: str) -> None:
    name = form.format(name=served.functions[ARCHIVER].function_name)
    response, payload = invoke(served, name, {"by": form})
    assert response["StatusCode"] == 200
    assert payload == {"echo": {"by": form}}
    assert served.invoker.calls[-1] == (ARCHIVER, {"by": form})


def test_a_logical_id_is_no_function_name_as_in_aws(served: Served) -> None:
    with pytest.raises(served.client.exceptions.ResourceNotFoundException):
        served.client.invoke(FunctionName=ARCHIVER, Payload=b"{}")


def test_an_unhandled_error_is_a_function_error(served: Served) -> None:
    response, payload = invoke(served, served.functions[NOTIFIER].function_name, {"fail": True})
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert payload == ERROR


def test_a_dry_run_invokes_nothing(served: Served) -> None:
    before = len(served.invoker.calls)
    response, payload = invoke(
        served, served.functions[NOTIFIER].function_name, {"dry": True}, InvocationType="DryRun"
    )
    assert response["StatusCode"] == 204
    assert payload is None
    assert len(served.invoker.calls) == before


def test_an_event_invocation_is_accepted_and_runs(served: Served) -> None:
    served.invoker.called.clear()
    response, _ = invoke(
        served, served.functions[NOTIFIER].function_name, {"async": True}, InvocationType="Event"
    )
    assert response["StatusCode"] == 202
    assert served.invoker.called.wait(5)
    assert (NOTIFIER, {"async": True}) in served.invoker.calls


@pytest.mark.parametrize(
    ("name", "arn"),
    [
        ("nope", f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:nope"),
        (
            "orderstream-local-email-notifier:7",
            f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:orderstream-local-email-notifier:7",
        ),
        (
            "arn:aws:lambda:us-east-1:123456789012:function:orderstream-local-email-notifier",
            "arn:aws:lambda:us-east-1:123456789012:function:orderstream-local-email-notifier",
        ),
    ],
)
def test_an_unknown_function_is_not_found(served: Served, name: str, arn: str) -> None:
    client = served.client
    with pytest.raises(client.exceptions.ResourceNotFoundException) as raised:
        client.invoke(FunctionName=name, Payload=b"{}")
    assert raised.value.response["Error"]["Message"] == f"Function not found: {arn}"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_function_configuration(FunctionName=name)


def test_a_payload_that_is_not_json_is_refused(served: Served) -> None:
    before = len(served.invoker.calls)
    client = served.client
    with pytest.raises(client.exceptions.InvalidRequestContentException) as raised:
        client.invoke(FunctionName=served.functions[NOTIFIER].function_name, Payload=b"{not json")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert len(served.invoker.calls) == before


def test_configuration_holds_the_templates_environment(served: Served) -> None:
    spec = served.functions[NOTIFIER]
    config = served.client.get_function_configuration(FunctionName=spec.function_name)
    assert config["FunctionName"] == spec.function_name
    assert config["FunctionArn"] == spec.arn
    assert config["Environment"]["Variables"] == spec.environment
    assert config["Environment"]["Variables"]["ORDER_TOPIC"] == "order-placed"  # from Globals
    assert (config["Handler"], config["Timeout"], config["MemorySize"]) == (
        spec.handler,
        spec.timeout_s,
        spec.memory_mb,
    )
    assert config["Runtime"] == "python3.13"
    assert config["Version"] == "$LATEST"


@pytest.mark.parametrize(("logical_id", "batch_size"), [(NOTIFIER, 50), (ARCHIVER, 10_000)])
def test_mappings_are_the_templates(served: Served, logical_id: str, batch_size: int) -> None:
    spec = served.functions[logical_id]
    dead_letters = served.resolver.values["DeadLetterBucket"]
    for name in (spec.function_name, spec.arn):
        pages = served.client.get_paginator("list_event_source_mappings").paginate(
            FunctionName=name
        )
        [mapping] = [m for page in pages for m in page["EventSourceMappings"]]
        assert mapping["FunctionArn"] == spec.arn
        assert mapping["BatchSize"] == batch_size
        assert mapping["DestinationConfig"] == {
            "OnFailure": {"Destination": f"arn:aws:s3:::{dead_letters}"}
        }
        assert mapping["State"] == "Enabled"
        assert mapping["Topics"] == ["order-placed"]
        assert mapping["StartingPosition"] == "TRIM_HORIZON"
        expected = next(m for m in served.mappings if m.function == logical_id)
        assert mapping["UUID"] == expected.uuid
        assert mapping["EventSourceArn"] == expected.event_source_arn
        assert mapping["AmazonManagedKafkaEventSourceConfig"] == {
            "ConsumerGroupId": expected.group_id
        }


def test_mappings_of_every_function_or_of_none(served: Served) -> None:
    everything = served.client.list_event_source_mappings()["EventSourceMappings"]
    assert sorted(m["UUID"] for m in everything) == sorted(m.uuid for m in served.mappings)
    assert len(everything) == 2
    first = served.client.list_event_source_mappings(MaxItems=1)
    assert len(first["EventSourceMappings"]) == 1
    rest = served.client.list_event_source_mappings(MaxItems=1, Marker=first["NextMarker"])
    assert "NextMarker" not in rest
    assert {m["UUID"] for m in first["EventSourceMappings"] + rest["EventSourceMappings"]} == {
        m["UUID"] for m in everything
    }
    none = served.client.list_event_source_mappings(FunctionName="OrderApiFunction")
    assert none["EventSourceMappings"] == []
    unknown = served.client.list_event_source_mappings(FunctionName="nope")
    assert unknown["EventSourceMappings"] == []
