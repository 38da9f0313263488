"""Which topics the system needs and how to create them idempotently.

Used by the topic provisioner in AWS and by the local stack, so both create the same topics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kafka.admin import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = -1  # broker default; MSK Serverless manages replication itself
    configs: dict[str, str] = field(default_factory=dict)


def ensure_topics(admin: KafkaAdminClient, specs: list[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Existing topics are left as they are: partitions can only grow and MSK Serverless
    decides replication, so an update never rewrites a topic that holds data.
    """
    existing = set(admin.list_topics())
    missing = [spec for spec in specs if spec.name not in existing]
    if not missing:
        return []
    created: list[str] = []
    for spec in missing:
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
            pass  # created concurrently by another provisioner run: the outcome we wanted
    return created
