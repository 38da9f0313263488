"""Topic reconciliation: create what is missing, grow what is short, never shrink or delete."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.admin import OffsetSpec
from kafka.errors import UnknownTopicOrPartitionError
from kafka.structs import OffsetAndMetadata, OffsetAndTimestamp, TopicPartition

from orderstream.topics import (
    TopicChanges,
    TopicShrinkError,
    TopicSpec,
    adoption_refusal,
    delete_topics,
    partition_counts,
    reconcile_topics,
    required_topics,
    unread_records,
)


class FakeAdmin:
    """The slice of KafkaAdminClient the reconciler uses, over an in-memory cluster."""

    def __init__(self, topics: dict[str, int] | None = None) -> None:
        self.topics = dict(topics or {})
        self.calls: list[tuple[str, Any]] = []

    def list_topics(self) -> list[str]:
        return list(self.topics)

    def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [
            {
                "name": n,
                "error_code": 0,
                "partitions": [{"partition": p} for p in range(self.topics[n])],
            }
            for n in names
        ]

    def create_topics(self, spec: dict[str, dict[str, Any]], wait_for_metadata: bool) -> None:
        # Created topics must be usable at once: the mappings start right after the stack.
        assert wait_for_metadata is True
        self.calls.append(("create", spec))
        for name, options in spec.items():
            self.topics[name] = options["num_partitions"]

    def create_partitions(self, counts: dict[str, int]) -> None:
        self.calls.append(("grow", counts))
        self.topics.update(counts)

    def delete_topics(self, names: list[str]) -> None:
        self.calls.append(("delete", names))
        for name in names:
            del self.topics[name]


def test_missing_topics_are_created_once() -> None:
    admin = FakeAdmin()
    first = reconcile_topics(admin, required_topics("order-placed", 6))
    second = reconcile_topics(admin, required_topics("order-placed", 6))
    assert first.created == ["order-placed"]
    assert (second.created, second.grown) == ([], {})
    assert admin.topics == {"order-placed": 6}
    assert second.summary() == "no change"


def test_partitions_grow_but_never_shrink() -> None:
    admin = FakeAdmin({"order-placed": 6})
    grown = reconcile_topics(admin, [TopicSpec("order-placed", 12)])
    assert grown.grown == {"order-placed": 12}
    assert "grew order-placed to 12" in grown.summary()
    with pytest.raises(TopicShrinkError, match="cannot shrink it to 3"):
        reconcile_topics(admin, [TopicSpec("order-placed", 3)])
    assert admin.topics == {"order-placed": 12}


def test_a_shrink_request_changes_nothing_even_for_other_topics() -> None:
    admin = FakeAdmin({"a": 4})
    with pytest.raises(TopicShrinkError):
        reconcile_topics(admin, [TopicSpec("b", 1), TopicSpec("a", 2)])
    assert admin.calls == []


def test_a_topic_deleted_between_listing_and_describing_is_created_again() -> None:
    class Vanishing(FakeAdmin):
        def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
            for name in names:
                del self.topics[name]  # deleted by someone else right after the listing
            return [{"name": n, "error_code": 3, "partitions": []} for n in names]

    admin = Vanishing({"order-placed": 6})
    changes = reconcile_topics(admin, [TopicSpec("order-placed", 1)])
    assert changes == TopicChanges(["order-placed"], {})
    assert admin.topics == {"order-placed": 1}
    assert [call for call, _ in admin.calls] == ["create"]


def test_delete_only_touches_existing_topics() -> None:
    admin = FakeAdmin({"order-placed": 1})
    assert delete_topics(admin, ["order-placed", "never-made"]) == ["order-placed"]
    assert delete_topics(admin, ["order-placed"]) == []


def test_required_topics_rejects_nonsense_counts() -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        required_topics("order-placed", 0)
    [one] = required_topics("order-placed", 1)
    assert one.partitions == 1


@pytest.mark.parametrize(
    ("factor", "in_sync", "configs"),
    [(2, 2, {"min.insync.replicas": "2"}), (3, 1, {"min.insync.replicas": "1"}), (-1, -1, {})],
)
def test_replication_at_its_limits_is_accepted(
    factor: int, in_sync: int, configs: dict[str, str]
) -> None:
    [spec] = required_topics("order-placed", 6, factor, in_sync)
    assert (spec.replication_factor, spec.configs) == (factor, configs)


def test_partition_counts_leave_out_topics_described_with_an_error_or_no_partitions() -> None:
    class Described(FakeAdmin):
        def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
            return [
                {"name": "ok", "partitions": [{"partition": 0}, {"partition": 1}]},  # no code
                {"name": "failed", "error_code": 3, "partitions": [{"partition": 0}]},
                {"name": "empty", "error_code": 0, "partitions": []},
            ]

    assert partition_counts(Described(), ["ok", "failed", "empty"]) == {"ok": 2}


def test_a_topic_deleted_meanwhile_is_no_error() -> None:
    class Racing(FakeAdmin):
        def delete_topics(self, names: list[str]) -> None:
            raise UnknownTopicOrPartitionError()

    assert delete_topics(Racing({"order-placed": 6}), ["order-placed"]) == ["order-placed"]


def test_a_summary_lists_every_change() -> None:
    changes = TopicChanges(["a", "b"], {"c": 6, "d": 3})
    assert changes.summary() == "created a, b; grew c to 6 partitions; grew d to 3 partitions"
    assert TopicChanges([], {}).summary() == "no change"


def test_brokers_we_size_get_three_replicas_and_two_in_sync() -> None:
    admin = FakeAdmin()
    reconcile_topics(admin, required_topics("order-placed", 6, 3, 2))
    [(kind, spec)] = admin.calls
    assert kind == "create"
    assert spec["order-placed"] == {
        "num_partitions": 6,
        "replication_factor": 3,
        "configs": {"min.insync.replicas": "2"},
    }


def test_the_cluster_decides_replication_unless_told() -> None:
    [spec] = required_topics("order-placed", 6)
    assert (spec.replication_factor, spec.configs) == (-1, {})


@pytest.mark.parametrize(
    ("factor", "in_sync", "why"),
    [
        (0, -1, "replication factor 0"),
        (-2, -1, "replication factor -2"),
        (3, 0, "min.insync.replicas 0"),
        (3, -2, "min.insync.replicas -2: give -1 or at least 1"),
        (2, 3, "min.insync.replicas 3 above replication factor 2"),
        (1, 2, "min.insync.replicas 2 above replication factor 1"),
    ],
)
def test_replication_that_could_never_take_a_write_is_refused(
    factor: int, in_sync: int, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        required_topics("order-placed", 6, factor, in_sync)


# --- adopting a topic someone else runs: what our groups have not read -----------------------


class OffsetsAdmin:
    """The offsets an admin client reports: per partition the oldest retained and the next
    offset, and per group what it committed (-1: a group that holds no offset there)."""

    def __init__(
        self,
        earliest: list[int],
        latest: list[int],
        committed: dict[str, dict[int, int]],
        topic: str = "order-placed",
    ) -> None:
        self.topic = topic
        self.ends = {OffsetSpec.EARLIEST: earliest, OffsetSpec.LATEST: latest}
        self.committed = committed

    def list_partition_offsets(self, specs: dict[TopicPartition, Any]) -> dict[TopicPartition, Any]:
        assert {tp.topic for tp in specs} <= {self.topic}
        return {
            tp: OffsetAndTimestamp(self.ends[spec][tp.partition], None, None)
            for tp, spec in specs.items()
        }

    def list_group_offsets(
        self, requests: dict[str, list[TopicPartition]]
    ) -> dict[str, dict[TopicPartition, Any]]:
        assert {tp.topic for ps in requests.values() for tp in ps} <= {self.topic}
        # A group that never committed is left out of the answer.
        return {
            group: {
                tp: OffsetAndMetadata(self.committed[group][tp.partition], "", -1)
                for tp in partitions
                if tp.partition in self.committed[group]
            }
            for group, partitions in requests.items()
            if group in self.committed
        }


GROUPS = ["email-notifier", "s3-archiver"]


def test_unread_records_count_from_each_groups_commit_or_the_oldest_record() -> None:
    admin = OffsetsAdmin(
        earliest=[0, 5, 20],
        latest=[10, 5, 30],
        # partition 0 half read, 1 empty, 2 trimmed past the commit; none, or -1, for the other
        committed={"email-notifier": {0: 4, 1: 5, 2: 12}, "s3-archiver": {0: -1}},
    )
    counts = unread_records(admin, "order-placed", 3, GROUPS)
    assert counts == {"email-notifier": 6 + 0 + 10, "s3-archiver": 10 + 0 + 10}


def test_a_group_committed_past_the_end_reads_nothing_rather_than_a_negative_count() -> None:
    admin = OffsetsAdmin(earliest=[0], latest=[3], committed={g: {0: 7} for g in GROUPS})
    assert unread_records(admin, "order-placed", 1, GROUPS) == dict.fromkeys(GROUPS, 0)


def test_a_topic_without_partitions_has_nothing_unread() -> None:
    admin = OffsetsAdmin(earliest=[], latest=[], committed={})
    assert unread_records(admin, "order-placed", 0, GROUPS) == dict.fromkeys(GROUPS, 0)


def test_adoption_is_refused_naming_each_group_with_records_left_and_the_way_out() -> None:
    admin = OffsetsAdmin(earliest=[0, 0], latest=[4, 2], committed={"s3-archiver": {0: 4, 1: 2}})
    reason = adoption_refusal(admin, "order-placed", 2, ["s3-archiver", "email-notifier"])
    assert reason == (
        "order-placed already holds records our consumer groups have not read (6 for "
        "email-notifier): they would all be processed, a confirmation mailed for every order "
        "among them. Empty the topic, or deploy with ExistingTopicRecords=process"
    )


def test_adoption_names_every_group_behind_in_name_order() -> None:
    admin = OffsetsAdmin(earliest=[0], latest=[3], committed={"s3-archiver": {0: 1}})
    reason = adoption_refusal(admin, "order-placed", 1, ["s3-archiver", "email-notifier"])
    assert reason is not None
    assert "(3 for email-notifier, 2 for s3-archiver)" in reason


def test_a_topic_our_groups_have_read_to_the_end_is_adopted() -> None:
    admin = OffsetsAdmin(earliest=[0, 3], latest=[4, 3], committed={g: {0: 4} for g in GROUPS})
    assert adoption_refusal(admin, "order-placed", 2, GROUPS) is None
