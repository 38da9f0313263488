"""Which topics the system needs, and how to bring a cluster to them without losing data.

The topic provisioner runs this in AWS (custom resource) and the local stack runs the same code,
so both create the same topics the same way.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from kafka.admin import KafkaAdminClient, OffsetSpec
from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError
from kafka.structs import TopicPartition


class TopicShrinkError(ValueError):
    """Kafka cannot remove partitions; shrinking would need a new topic and a migration."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    # -1: the cluster's default (MSK Serverless manages replication itself).
    replication_factor: int = -1
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TopicChanges:
    created: list[str]
    grown: dict[str, int]  # topic -> new partition count

    def summary(self) -> str:
        parts = [f"created {', '.join(self.created)}" if self.created else ""]
        parts += [f"grew {name} to {count} partitions" for name, count in self.grown.items()]
        return "; ".join(p for p in parts if p) or "no change"


def required_topics(
    order_topic: str, partitions: int, replication_factor: int = -1, min_insync_replicas: int = -1
) -> list[TopicSpec]:
    """The topics orderstream needs. Poison records go to S3, so there is no dead-letter topic.

    -1 leaves replication and min.insync.replicas to the cluster; brokers we size ourselves get
    3 and 2, so that acks=all writes survive one broker's loss.
    """
    if partitions < 1:
        raise ValueError(f"a topic needs at least one partition, not {partitions}")
    if replication_factor == 0 or replication_factor < -1:
        raise ValueError(f"replication factor {replication_factor}: give -1 or at least 1")
    if min_insync_replicas == 0 or min_insync_replicas < -1:
        raise ValueError(f"min.insync.replicas {min_insync_replicas}: give -1 or at least 1")
    if replication_factor > 0 and min_insync_replicas > replication_factor:
        raise ValueError(
            f"min.insync.replicas {min_insync_replicas} above replication factor "
            f"{replication_factor}: no acks=all write could ever succeed"
        )
    configs = {"min.insync.replicas": str(min_insync_replicas)} if min_insync_replicas > 0 else {}
    return [TopicSpec(order_topic, partitions, replication_factor, configs)]


def partition_counts(admin: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partitions of each named topic that exists (absent topics are left out)."""
    described: list[dict[str, Any]] = admin.describe_topics(names)
    return {
        topic["name"]: len(topic["partitions"])
        for topic in described
        if topic.get("error_code", 0) == 0 and topic["partitions"]
    }


def reconcile_topics(admin: KafkaAdminClient, specs: list[TopicSpec]) -> TopicChanges:
    """Create missing topics and grow existing ones to their partition count; never delete.

    Idempotent: running it again against the result changes nothing. Fewer partitions than a
    topic has is refused with `TopicShrinkError` before anything is changed.
    """
    listed = set(admin.list_topics())
    # What is described is what exists: a topic listed, then deleted before it was described,
    # is created again like one never listed.
    counts = partition_counts(admin, [s.name for s in specs if s.name in listed])
    for spec in specs:
        if counts.get(spec.name, 0) > spec.partitions:
            raise TopicShrinkError(
                f"topic {spec.name} has {counts[spec.name]} partitions; Kafka cannot shrink it to "
                f"{spec.partitions}. Keep the count or create a new topic."
            )
    created: list[str] = []
    grown: dict[str, int] = {}
    for spec in specs:
        if spec.name not in counts:
            try:
                admin.create_topics(
                    {
                        spec.name: {
                            "num_partitions": spec.partitions,
                            "replication_factor": spec.replication_factor,
                            "configs": spec.configs,
                        }
                    },
                    wait_for_metadata=True,
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another run: the outcome we wanted
        elif counts[spec.name] < spec.partitions:
            admin.create_partitions({spec.name: spec.partitions})
            grown[spec.name] = spec.partitions
    return TopicChanges(created, grown)


def delete_topics(admin: KafkaAdminClient, names: list[str]) -> list[str]:
    """Delete the named topics that exist; return those deleted."""
    existing = set(admin.list_topics())
    present = [name for name in names if name in existing]
    if present:
        with contextlib.suppress(UnknownTopicOrPartitionError):  # deleted meanwhile
            admin.delete_topics(present)
    return present


def unread_records(
    admin: KafkaAdminClient, topic: str, partition_count: int, groups: list[str]
) -> dict[str, int]:
    """Records of the topic (of `partition_count` partitions) each consumer group would still
    read: from its committed offset, or from the oldest retained record where it has none
    (TRIM_HORIZON)."""
    partitions = [TopicPartition(topic, p) for p in range(partition_count)]
    if not partitions:
        return dict.fromkeys(groups, 0)
    earliest = admin.list_partition_offsets(dict.fromkeys(partitions, OffsetSpec.EARLIEST))
    latest = admin.list_partition_offsets(dict.fromkeys(partitions, OffsetSpec.LATEST))
    unread: dict[str, int] = {}
    for group in groups:
        committed = admin.list_group_offsets({group: partitions}).get(group, {})
        total = 0
        for p in partitions:
            done = committed.get(p)
            start = max(earliest[p].offset, done.offset if done and done.offset >= 0 else 0)
            total += max(0, latest[p].offset - start)
        unread[group] = total
    return unread


def adoption_refusal(
    admin: KafkaAdminClient, topic: str, partition_count: int, groups: list[str]
) -> str | None:
    """Why a topic found on a cluster someone else runs must not be taken over as it is, if it
    must not: records our consumer groups have not read would all be processed, a
    confirmation mailed for every order among them."""
    unread = {g: n for g, n in unread_records(admin, topic, partition_count, groups).items() if n}
    if not unread:
        return None
    counts = ", ".join(f"{n} for {g}" for g, n in sorted(unread.items()))
    return (
        f"{topic} already holds records our consumer groups have not read ({counts}): they "
        "would all be processed, a confirmation mailed for every order among them. Empty the "
        "topic, or deploy with ExistingTopicRecords=process"
    )
