"""`python -m devstack status`: what is in the running stack, read from the broker and emulator."""

from __future__ import annotations

from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from devstack import aws
from devstack.mail import sent_emails
from devstack.stack import StackInfo


def end_offsets(bootstrap: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The offset after each partition's last record.

    Tansu's high watermark is the last batch's base offset + 1, not the end: read that last
    batch and take its highest offset instead.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        reported = consumer.end_offsets(partitions)
        ends: dict[TopicPartition, int] = {}
        for tp in partitions:
            ends[tp] = reported[tp]
            if reported[tp] == 0:
                continue
            consumer.assign([tp])
            consumer.seek(tp, reported[tp] - 1)
            for _ in range(10):
                records = consumer.poll(timeout_ms=200).get(tp, [])
                if records:
                    ends[tp] = max(ends[tp], records[-1].offset + 1)
                    consumer.seek(tp, ends[tp])
                elif ends[tp] > reported[tp] - 1:
                    break
        return ends
    finally:
        consumer.close()


def group_lag(
    admin: KafkaAdminClient, group: str, ends: dict[TopicPartition, int]
) -> tuple[int, dict[TopicPartition, int]]:
    """Records of `ends`' partitions the group has not committed yet, and its committed offsets
    (a partition it never committed counts from 0)."""
    answer = admin.list_group_offsets({group: None}).get(group, {})
    committed = {tp: meta.offset for tp, meta in answer.items()}
    return sum(lags(ends, committed).values()), committed


def lags(
    ends: dict[TopicPartition, int], committed: dict[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Each partition's records not committed yet (a partition never committed counts from 0)."""
    return {tp: end - committed.get(tp, 0) for tp, end in ends.items()}


@dataclass(frozen=True)
class GroupFigures:
    function: str  # logical id
    group: str
    committed: dict[TopicPartition, int]  # a partition never committed is absent
    lag: int


@dataclass(frozen=True)
class TopicFigures:
    """What `make status` and the console show of the topic: one reading, one place."""

    ends: dict[TopicPartition, int]
    groups: list[GroupFigures]

    @property
    def partitions(self) -> list[TopicPartition]:
        return sorted(self.ends)

    def lags(self, group: GroupFigures) -> dict[TopicPartition, int]:
        return lags(self.ends, group.committed)


# A broker that is not there is said within seconds, not after kafka-python's 30.
BOOTSTRAP_TIMEOUT_MS = 5000


def topic_figures(info: StackInfo) -> TopicFigures:
    admin = KafkaAdminClient(
        bootstrap_servers=info.bootstrap_servers,
        client_id="devstack-status",
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
    )
    try:
        described = admin.describe_topics(info.topics)
        partitions = [
            TopicPartition(t["name"], p["partition_index"])
            for t in described
            for p in t["partitions"]
        ]
        ends = end_offsets(info.bootstrap_servers, partitions)
        groups = []
        for function, group in sorted(info.groups.items()):
            lag, committed = group_lag(admin, group, ends)
            groups.append(GroupFigures(function, group, committed, lag))
    finally:
        admin.close()
    return TopicFigures(ends, groups)


def report(info: StackInfo) -> str:
    lines: list[str] = []
    figures = topic_figures(info)
    lines.append("topics")
    for tp in figures.partitions:
        lines.append(f"  {tp.topic}-{tp.partition:<3} end offset {figures.ends[tp]}")
    lines.append("consumer groups (committed offset, lag)")
    for group in figures.groups:
        detail = " ".join(
            f"{tp.partition}:{group.committed.get(tp, '-')}" for tp in figures.partitions
        )
        lines.append(f"  {group.group:<24} ({group.function}) lag {group.lag}  [{detail}]")

    ses = aws.client("ses", info.aws_endpoint)
    templates = {
        t["Name"]: ses.get_template(TemplateName=t["Name"])["Template"]
        for t in ses.list_templates()["TemplatesMetadata"]
    }
    emails = sent_emails(aws.MotoServer.data_at(info.aws_endpoint), templates)
    lines.append(f"emails sent: {len(emails)} (rendered in outbox/)")
    for email in emails[-10:]:
        lines.append(f"  {', '.join(email.to):<32} {email.subject}")

    s3 = aws.client("s3", info.aws_endpoint)
    for logical_id, bucket in sorted(info.buckets.items()):
        objects = [
            o
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])
        ]
        lines.append(f"{logical_id} s3://{bucket}: {len(objects)} objects")
        for obj in objects[-10:]:
            metadata = s3.head_object(Bucket=bucket, Key=obj["Key"]).get("Metadata", {})
            records = f" {metadata['record-count']} records" if "record-count" in metadata else ""
            lines.append(f"  {obj['Key']} ({obj['Size']} bytes{records})")
    return "\n".join(lines)
