"""The deployments every template test covers: each ClusterType, in each network it can use."""

from __future__ import annotations

import pytest

SENDER = "orders@shop.example"
EXISTING = {"ExistingVpcId": "vpc-0123456789abcdef0", "ExistingSubnetIds": "subnet-0a,subnet-0b"}
# Three brokers, one per subnet: a provisioned cluster in your network takes three.
THREE_SUBNETS = {**EXISTING, "ExistingSubnetIds": "subnet-0a,subnet-0b,subnet-0c"}
THEIR_CLUSTER_ARN = "arn:aws:kafka:eu-west-1:123456789012:cluster/theirs/6357e0b2-0e6a-4b86-5"
THEIR_CLUSTER = {
    "ClusterType": "existing",
    "ExistingClusterArn": THEIR_CLUSTER_ARN,
    "ExistingClientSecurityGroupId": "sg-0fedcba9876543210",
}
MODE_VALUES: dict[str, dict[str, str]] = {
    "serverless-created-vpc": {"ClusterType": "serverless", "CreateVpc": "true"},
    "serverless-existing-vpc": {"ClusterType": "serverless", "CreateVpc": "false", **EXISTING},
    "provisioned-created-vpc": {"ClusterType": "provisioned", "CreateVpc": "true"},
    "provisioned-existing-vpc": {
        "ClusterType": "provisioned",
        "CreateVpc": "false",
        **THREE_SUBNETS,
    },
    "existing-cluster": {**THEIR_CLUSTER, "CreateVpc": "false", **EXISTING},
}
MODES = [pytest.param(values, id=name) for name, values in MODE_VALUES.items()]
CREATED_CLUSTER_MODES = [
    pytest.param(values, id=name)
    for name, values in MODE_VALUES.items()
    if values["ClusterType"] != "existing"
]
# One deployment per ClusterType, for the slower judges (cfn-lint, sam validate).
ONE_PER_TYPE = [
    pytest.param(MODE_VALUES[name], id=name.split("-")[0])
    for name in ("serverless-created-vpc", "provisioned-created-vpc", "existing-cluster")
]
CLUSTER_OF = {"serverless": "KafkaCluster", "provisioned": "ProvisionedKafkaCluster"}
