"""The bench's wiring and its producer baseline: a broken part shows here, not at `make bench`."""

from __future__ import annotations

import importlib
import inspect

import boto3
import pytest
from moto import mock_aws

from bench.producer import AwsCall, Recorder, Replayer
from bench.run import PARTS

TABLE = "bench-unit-idempotency"


@pytest.mark.parametrize("name", sorted(PARTS))
def test_every_part_is_a_module_with_a_part_function(name: str) -> None:
    module = importlib.import_module(f"bench.{PARTS[name].module}")
    assert list(inspect.signature(module.part).parameters) == ["result", "quick"]


@mock_aws
def test_the_bare_side_replays_the_handlers_calls_under_a_key_of_its_own() -> None:
    dynamodb = boto3.client("dynamodb", region_name="eu-west-1")
    dynamodb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    put = {
        "TableName": TABLE,
        "Item": {"id": {"S": "order#abc"}, "status": {"S": "INPROGRESS"}, "note": {"S": "kept"}},
        "ConditionExpression": "attribute_not_exists(#id)",
        "ExpressionAttributeNames": {"#id": "id"},
    }
    update = {
        "TableName": TABLE,
        "Key": {"id": {"S": "order#abc"}},
        "UpdateExpression": "SET #s = :s",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {":s": {"S": "COMPLETED"}},
    }
    recorder = Recorder()
    with recorder.turn("handler", measured=True):
        for operation, params in (("PutItem", put), ("UpdateItem", update)):
            recorder.aws(dynamodb, operation, params)
            dynamodb._make_api_call(operation, params)
    assert [c.operation for c in recorder.last if isinstance(c, AwsCall)] == [
        "PutItem",
        "UpdateItem",
    ]

    replayer = Replayer(producer=None, key_attributes={TABLE: "id"})
    # Twice: each replay needs its own key, or the conditional put would fail the second time.
    replayer.replay(recorder.last, measured=True)
    replayer.replay(recorder.last, measured=True)

    items = dynamodb.scan(TableName=TABLE)["Items"]
    bare = [i for i in items if i["id"]["S"] != "order#abc"]
    assert len(items) == 3
    assert len(bare) == 2
    assert all(i["id"]["S"].startswith("bench-bare#") for i in bare)
    assert all(i["status"]["S"] == "COMPLETED" and i["note"]["S"] == "kept" for i in bare)
    assert sorted(replayer.steps) == ["PutItem", "UpdateItem"]
    assert all(len(times) == 2 for times in replayer.steps.values())
