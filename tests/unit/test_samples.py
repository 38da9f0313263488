"""Every events/ sample is in Lambda's exact shape and decodes the way its name promises."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonschema
import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from aws_lambda_powertools.utilities.kafka import ConsumerRecords
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayProxyEventModel,
    KafkaMskEventModel,
)
from pydantic import ValidationError

from devstack import schemas
from orderstream import events
from orderstream.events import InvalidEventError, from_record
from orderstream.models import OrderRequest
from tests.samples import EVENTS, load_event

EVENT_SCHEMA = json.loads(
    (EVENTS.parent / "schemas" / f"{events.EVENT_TYPE}.v{events.SCHEMA_VERSION}.json").read_text()
)


def decoded(name: str) -> list[Any]:
    return list(ConsumerRecords(load_event(name), schema_config=events.ORDER_EVENTS).records)


def test_every_sample_is_covered_here() -> None:
    assert {p.name for p in EVENTS.glob("*.json")} == {
        "api-post-order.json",
        "api-post-order-invalid.json",
        "msk-orders.json",
        "msk-poison.json",
        "msk-null-key.json",
        "msk-guide-sample.json",
        "cfn-topics-create.json",
        "cfn-topics-delete.json",
        "cfn-bootstrap-brokers-create.json",
    }


@pytest.mark.parametrize(
    "name", ["msk-orders.json", "msk-poison.json", "msk-null-key.json", "msk-guide-sample.json"]
)
def test_msk_samples_have_lambdas_shape(name: str) -> None:
    raw = load_event(name)
    if name != "msk-poison.json":
        # Powertools' parser model decodes values as UTF-8 and so cannot carry a poison record;
        # that is why consumers decode with the kafka_consumer utility instead.
        parse(event=raw, model=KafkaMskEventModel)
    assert raw["eventSource"] == "aws:kafka"
    assert isinstance(raw["bootstrapServers"], str)
    for group, records in raw["records"].items():
        for record in records:
            assert group == f"{record['topic']}-{record['partition']}"
            assert record["timestampType"] in {"CREATE_TIME", "LOG_APPEND_TIME"}
            assert all(len(h) == 1 for h in record["headers"])
            if "key" in record:
                base64.b64decode(record["key"], validate=True)
            base64.b64decode(record["value"], validate=True)


def test_orders_sample_spans_two_partitions_and_decodes_with_keys_and_headers() -> None:
    raw = load_event("msk-orders.json")
    assert len(raw["records"]) == 2
    records = decoded("msk-orders.json")
    assert len(records) >= 4
    for record in records:
        event = from_record(record)
        assert record.key == event.order_id
        assert record.headers["correlation-id"] == event.correlation_id.encode()
        jsonschema.validate(record.value, EVENT_SCHEMA)


def test_poison_sample_holds_good_orders_around_one_poison_record() -> None:
    outcomes = []
    for record in decoded("msk-poison.json"):
        try:
            outcomes.append(from_record(record).order_id)
        except InvalidEventError as exc:
            outcomes.append(f"poison: {exc.reason}")
    assert len(outcomes) == 3
    assert outcomes[1].startswith("poison: value is not UTF-8 JSON")
    assert not outcomes[0].startswith("poison")
    assert not outcomes[2].startswith("poison")


def test_null_key_sample_has_no_key_and_a_valid_order() -> None:
    [record] = decoded("msk-null-key.json")
    assert "key" not in record.raw_event
    assert record.key is None
    assert from_record(record).order.customer.name == "Katherine Johnson"


def test_api_samples_parse_and_validate_as_their_names_say() -> None:
    good = load_event("api-post-order.json")
    parse(event=good, model=APIGatewayProxyEventModel)
    proxy = APIGatewayProxyEvent(good)
    assert (proxy.http_method, proxy.path, proxy.resource) == ("POST", "/orders", "/orders")
    order = OrderRequest.model_validate_json(proxy.body or "").to_order()
    assert str(order.total) == "52.40"

    bad = APIGatewayProxyEvent(load_event("api-post-order-invalid.json"))
    with pytest.raises(ValidationError) as info:
        OrderRequest.model_validate_json(bad.body or "")
    locations = {".".join(map(str, e["loc"])) for e in info.value.errors()}
    assert {"customer.email", "customer.name", "items.0.quantity", "currency", "total"} <= locations


@pytest.mark.parametrize(
    ("name", "request_type"),
    [("cfn-topics-create.json", "Create"), ("cfn-topics-delete.json", "Delete")],
)
def test_custom_resource_samples(name: str, request_type: str) -> None:
    event = load_event(name)
    assert event["RequestType"] == request_type
    for field in ("ServiceToken", "ResponseURL", "StackId", "RequestId", "LogicalResourceId"):
        assert event[field]
    assert event["ResourceProperties"]["OrderTopic"] == "order-placed"
    assert event["ResourceProperties"]["BootstrapServers"].endswith(":9098")
    assert ("PhysicalResourceId" in event) == (request_type == "Delete")


def test_bootstrap_brokers_sample_names_only_the_cluster() -> None:
    event = load_event("cfn-bootstrap-brokers-create.json")
    assert event["RequestType"] == "Create"
    assert event["ResourceType"] == "Custom::KafkaBootstrapBrokers"
    assert set(event["ResourceProperties"]) == {"ServiceToken", "ServiceTimeout", "ClusterArn"}


def test_checked_in_schemas_match_the_code() -> None:
    assert schemas.stale() == [], "run `make schemas` and commit the result"


def test_schema_rejects_what_the_model_rejects() -> None:
    [record] = decoded("msk-null-key.json")
    value = dict(record.value)
    value["event_type"] = "order-cancelled"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(value, EVENT_SCHEMA)
