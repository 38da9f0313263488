"""The local stack runs every ClusterType on its one embedded broker: the same Kafka protocol,
the type's own topic settings, and a template that resolves whole for each."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from devstack.aws import LOCAL_CLUSTER_ARN
from devstack.functions import load_functions
from devstack.stack import LocalStack, mapping_specs
from tests.template.modes import ONE_PER_TYPE


@pytest.mark.parametrize("mode", ONE_PER_TYPE)
def test_every_cluster_type_starts_on_the_embedded_broker(
    mode: dict[str, str], tmp_path: Path
) -> None:
    stack = LocalStack(state_dir=tmp_path, outbox=None, log=lambda _: None, parameters=mode)
    bootstrap, _, resolver = stack.start_backing()
    try:
        functions = load_functions(resolver)
        env = functions["OrderApiFunction"].environment
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == bootstrap  # resolved whole, whatever the type
        mappings = mapping_specs(functions, resolver)
        assert {m.function for m in mappings} == {"EmailNotifierFunction", "S3ArchiverFunction"}
        assert {m.event_source_arn for m in mappings} == {LOCAL_CLUSTER_ARN}
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            [topic] = admin.describe_topics(stack.topics)
        finally:
            admin.close()
        replicas = {len(p["replica_nodes"]) for p in topic["partitions"]}
        assert replicas == ({3} if mode["ClusterType"] == "provisioned" else {1})
        assert len(topic["partitions"]) == 6
    finally:
        stack.stop()
