"""The topic provisioner's decisions, against an in-memory admin: create, grow, adopt, refuse,
keep, delete. tests/integration/test_topic_provisioner.py does the same on a real broker."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kafka.errors import (
    KafkaConnectionError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
)

from functions.topic_provisioner import app
from orderstream.custom_resource import CustomResourceRequest
from tests.fakes import logger_output
from tests.samples import load_event
from tests.unit.test_topics import FakeAdmin, OffsetsAdmin

CLUSTER_ARN = (
    "arn:aws:kafka:eu-west-1:123456789012:cluster/orderstream/"
    "6f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8-s1"
)
CREATED_ID = "kafka-topics/orderstream/6f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8-s1/order-placed"
ADOPTED_ID = CREATED_ID + "/adopted"
SERVERS = "boot-6f1a2b3c.c1.kafka-serverless.eu-west-1.amazonaws.com:9098"
GROUPS = ["orderstream-dev-email-notifier", "orderstream-dev-s3-archiver"]


class ClusterAdmin(FakeAdmin):
    """Topics and offsets in memory; `closed` counts the provisioner's close() calls."""

    def __init__(self, topics: dict[str, int], unread: int = 0) -> None:
        super().__init__(topics)
        count = topics.get("order-placed", 0)
        # `unread` records at the end of partition 0 that no group committed.
        latest = [10 + (unread if p == 0 else 0) for p in range(count)]
        self.offsets = OffsetsAdmin(
            earliest=[0] * count,
            latest=latest,
            committed={g: dict.fromkeys(range(count), 10) for g in GROUPS},
        )
        self.closed = 0

    def list_partition_offsets(self, specs: Any) -> Any:
        return self.offsets.list_partition_offsets(specs)

    def list_group_offsets(self, requests: Any) -> Any:
        return self.offsets.list_group_offsets(requests)

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> dict[str, ClusterAdmin]:
    """`cluster["admin"]` is what admin_for hands out; the servers it was asked for are checked."""
    holder: dict[str, ClusterAdmin] = {"admin": ClusterAdmin({})}

    def admin_for(servers: str) -> ClusterAdmin:
        assert servers == SERVERS
        return holder["admin"]

    monkeypatch.setattr(app, "admin_for", admin_for)
    return holder


def request(
    kind: str = "Create", physical_id: str | None = None, **props: Any
) -> CustomResourceRequest:
    event = copy.deepcopy(load_event("cfn-topics-create.json"))
    event["RequestType"] = kind
    if physical_id is not None:
        event["PhysicalResourceId"] = physical_id
    event["ResourceProperties"] |= {"ConsumerGroups": GROUPS, **props}
    return CustomResourceRequest.from_event(event)


def test_physical_ids_name_the_cluster_and_the_topic() -> None:
    assert app.physical_id(CLUSTER_ARN, "order-placed") == CREATED_ID
    assert app.adopted_id(CLUSTER_ARN, "order-placed") == ADOPTED_ID


def test_a_create_makes_the_topic_with_the_stacks_settings(
    cluster: dict[str, ClusterAdmin],
) -> None:
    answer = app.provision(request(ReplicationFactor="3", MinInsyncReplicas="2"))

    admin = cluster["admin"]
    assert admin.topics == {"order-placed": 6}
    [(_, spec)] = admin.calls
    assert spec["order-placed"]["num_partitions"] == 6
    assert spec["order-placed"]["replication_factor"] == 3
    assert spec["order-placed"]["configs"] == {"min.insync.replicas": "2"}
    assert answer.physical_resource_id == CREATED_ID
    assert answer.data == {"BootstrapServers": SERVERS, "OrderTopic": "order-placed"}
    assert answer.reason == "created order-placed"
    assert admin.closed == 1


def test_an_update_grows_the_topic_it_created(cluster: dict[str, ClusterAdmin]) -> None:
    cluster["admin"] = ClusterAdmin({"order-placed": 3})
    answer = app.provision(request("Update", CREATED_ID))
    assert cluster["admin"].topics == {"order-placed": 6}
    assert (answer.physical_resource_id, answer.reason) == (
        CREATED_ID,
        "grew order-placed to 6 partitions",
    )


def test_a_topic_found_with_nothing_unread_is_adopted_as_it_is(
    cluster: dict[str, ClusterAdmin],
) -> None:
    cluster["admin"] = ClusterAdmin({"order-placed": 2})
    answer = app.provision(request())

    assert cluster["admin"].topics == {"order-placed": 2}  # never grown to the 6 asked for
    assert cluster["admin"].calls == []
    assert answer.physical_resource_id == ADOPTED_ID
    assert answer.data == {"BootstrapServers": SERVERS, "OrderTopic": "order-placed"}
    assert answer.reason == (
        "order-placed adopted as it is (2 partitions): it existed before this stack, which "
        "never alters or deletes it"
    )


def test_an_adopted_topic_is_never_grown_by_an_update(cluster: dict[str, ClusterAdmin]) -> None:
    cluster["admin"] = ClusterAdmin({"order-placed": 2}, unread=5)  # no refusal on an update
    answer = app.provision(request("Update", ADOPTED_ID))
    assert cluster["admin"].calls == []
    assert answer.physical_resource_id == ADOPTED_ID


def test_a_topic_found_with_unread_records_is_refused_unless_told_to_process(
    cluster: dict[str, ClusterAdmin],
) -> None:
    cluster["admin"] = ClusterAdmin({"order-placed": 2}, unread=5)
    with pytest.raises(app.AdoptionRefused, match=r"\(5 for orderstream-dev-email-notifier, 5 for"):
        app.provision(request())
    assert cluster["admin"].closed == 1  # closed on the way out too

    answer = app.provision(request(ExistingTopicRecords="process"))
    assert answer.physical_resource_id == ADOPTED_ID


def test_a_stack_repointed_at_another_cluster_adopts_what_it_finds_there(
    cluster: dict[str, ClusterAdmin],
) -> None:
    cluster["admin"] = ClusterAdmin({"order-placed": 6})
    elsewhere = "kafka-topics/orderstream/00000000-0000-0000-0000-000000000000-s1/order-placed"
    answer = app.provision(request("Update", elsewhere))
    assert answer.physical_resource_id == ADOPTED_ID


@pytest.mark.parametrize(
    ("physical_id", "delete", "reason", "deleted"),
    [
        (ADOPTED_ID, "true", "order-placed kept: it existed before this stack", False),
        ("failed-d1c2b3a4", "true", "nothing to delete", False),
        (CREATED_ID, "false", "topics kept (DeleteTopicsOnDelete=false)", False),
        (CREATED_ID, "TRUE", "deleted ['order-placed']", True),
    ],
)
def test_a_delete_removes_only_a_topic_the_stack_made_and_was_told_to(
    cluster: dict[str, ClusterAdmin], physical_id: str, delete: str, reason: str, deleted: bool
) -> None:
    cluster["admin"] = ClusterAdmin({"order-placed": 6})
    answer = app.provision(request("Delete", physical_id, DeleteTopicsOnDelete=delete))
    assert (answer.physical_resource_id, answer.reason) == (physical_id, reason)
    assert ("order-placed" not in cluster["admin"].topics) is deleted
    assert cluster["admin"].closed == int(deleted)


def test_a_delete_never_blocks_on_a_cluster_that_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreachable(servers: str) -> Any:
        raise KafkaConnectionError("no route to host")

    monkeypatch.setattr(app, "admin_for", unreachable)
    answer = app.provision(request("Delete", CREATED_ID, DeleteTopicsOnDelete="true"))
    assert answer.physical_resource_id == CREATED_ID
    assert answer.reason == "topics not deleted: KafkaConnectionError: no route to host"


def test_a_delete_of_a_topic_already_gone_deletes_nothing(cluster: dict[str, ClusterAdmin]) -> None:
    answer = app.provision(request("Delete", CREATED_ID, DeleteTopicsOnDelete="true"))
    assert answer.reason == "deleted nothing"


def test_only_kafkas_authorisation_answers_count_as_iam_not_yet_in_force() -> None:
    assert app.kafka_denied(TopicAuthorizationFailedError())
    assert app.kafka_denied(SaslAuthenticationFailedError())
    assert not app.kafka_denied(KafkaConnectionError())
    assert not app.kafka_denied(RuntimeError("denied"))


def test_the_admin_client_is_configured_for_the_clusters_servers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[dict[str, Any]] = []
    monkeypatch.setattr(app, "KafkaAdminClient", lambda **config: made.append(config))
    monkeypatch.setenv("KAFKA_SECURITY", "iam")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    app.admin_for("b-1:9098,b-2:9098")
    assert made == [
        {
            "bootstrap_servers": ["b-1:9098", "b-2:9098"],
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "AWS_MSK_IAM",
            "client_id": "orderstream-topic-provisioner",
            "request_timeout_ms": 30_000,
            "bootstrap_timeout_ms": 30_000,
        }
    ]


def test_without_replication_settings_the_cluster_decides(cluster: dict[str, ClusterAdmin]) -> None:
    app.provision(request())  # the sample has neither ReplicationFactor nor MinInsyncReplicas
    [(_, spec)] = cluster["admin"].calls
    assert spec["order-placed"]["replication_factor"] == -1
    assert spec["order-placed"]["configs"] == {}


def test_a_found_topic_that_cannot_be_described_is_adopted_as_empty(
    cluster: dict[str, ClusterAdmin],
) -> None:
    class Undescribable(ClusterAdmin):
        def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
            return [{"name": n, "error_code": 29, "partitions": []} for n in names]

    cluster["admin"] = Undescribable({"order-placed": 2})
    answer = app.provision(request())
    assert answer.physical_resource_id == ADOPTED_ID
    assert "(0 partitions)" in answer.reason


def test_a_skipped_deletion_is_logged_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(servers: str) -> Any:
        raise KafkaConnectionError("no route to host")

    monkeypatch.setattr(app, "admin_for", unreachable)
    with logger_output(app.logger) as output:
        app.provision(request("Delete", CREATED_ID, DeleteTopicsOnDelete="true"))
    [line] = [json.loads(x) for x in output.getvalue().splitlines()]
    assert line["message"] == "topic deletion skipped"
    assert line["error"] == "KafkaConnectionError('no route to host')"


def test_adoption_and_reconciliation_are_each_logged_with_what_they_found(
    cluster: dict[str, ClusterAdmin],
) -> None:
    cluster["admin"] = ClusterAdmin({"order-placed": 4})
    with logger_output(app.logger) as output:
        app.provision(request())
    [adopted] = [json.loads(x) for x in output.getvalue().splitlines()]
    assert (adopted["message"], adopted["level"]) == ("topic adopted", "INFO")
    assert (adopted["topic"], adopted["partitions"]) == ("order-placed", 4)

    cluster["admin"] = ClusterAdmin({})
    with logger_output(app.logger) as output:
        app.provision(request())
    [reconciled] = [json.loads(x) for x in output.getvalue().splitlines()]
    assert (reconciled["message"], reconciled["level"]) == ("topics reconciled", "INFO")
    assert reconciled["changes"] == "created order-placed"


def test_without_consumer_groups_no_group_can_be_behind_so_a_found_topic_is_adopted(
    cluster: dict[str, ClusterAdmin],
) -> None:
    cluster["admin"] = ClusterAdmin({"order-placed": 2}, unread=5)
    event = copy.deepcopy(load_event("cfn-topics-create.json"))
    event["ResourceProperties"].pop("ConsumerGroups", None)
    answer = app.provision(CustomResourceRequest.from_event(event))
    assert answer.physical_resource_id == ADOPTED_ID
