"""Topic reconciliation: create what is missing, grow what is short, never shrink or delete."""

from __future__ import annotations

from typing import Any

import pytest

from orderstream.topics import (
    TopicShrinkError,
    TopicSpec,
    delete_topics,
    reconcile_topics,
    required_topics,
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


def test_delete_only_touches_existing_topics() -> None:
    admin = FakeAdmin({"order-placed": 1})
    assert delete_topics(admin, ["order-placed", "never-made"]) == ["order-placed"]
    assert delete_topics(admin, ["order-placed"]) == []


def test_required_topics_rejects_nonsense_counts() -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        required_topics("order-placed", 0)


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
        (2, 3, "above replication factor"),
    ],
)
def test_replication_that_could_never_take_a_write_is_refused(
    factor: int, in_sync: int, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        required_topics("order-placed", 6, factor, in_sync)
