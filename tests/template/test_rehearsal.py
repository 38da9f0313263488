"""Deploy and delete rehearsed offline: CloudFormation's ordering and replacement, replayed on
the transformed template for every cluster type, network mode and stage (see
tests/template/cloudformation.py for what the model rests on). Each check also runs on a
deliberately broken template, so a checker that cannot fail would show here."""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable
from typing import Any

import pytest

from devstack.template import (
    apply_language_extensions,
    load_template,
    parameter_errors,
    transform,
)
from tests.template.cloudformation import (
    Stack,
    create_only_properties,
    property_at,
    replaced_by,
    value_changes,
)
from tests.template.modes import (
    CLUSTER_OF,
    CREATED_CLUSTER_MODES,
    MODE_VALUES,
    SENDER,
)

STAGES = ["dev", "prod"]

# What makes a resource's physical identity, where the template may choose it. A replacement
# that keeps these values collides with the resource it replaces.
IDENTITY: dict[str, tuple[tuple[str, ...], ...]] = {
    "AWS::MSK::ServerlessCluster": (("ClusterName",),),
    "AWS::MSK::Cluster": (("ClusterName",),),
    "AWS::Lambda::Function": (("FunctionName",),),
    "AWS::Logs::LogGroup": (("LogGroupName",),),
    "AWS::DynamoDB::Table": (("TableName",),),
    "AWS::S3::Bucket": (("BucketName",),),
    "AWS::SNS::Topic": (("TopicName",),),
    "AWS::CloudWatch::Alarm": (("AlarmName",),),
    "AWS::CloudWatch::Dashboard": (("DashboardName",),),
    "AWS::SES::Template": (("Template", "TemplateName"),),
    "AWS::Glue::Database": (("DatabaseInput", "Name"),),
    "AWS::Glue::Table": (("DatabaseName",), ("TableInput", "Name")),
    "AWS::IAM::Role": (("RoleName",),),
    "AWS::ApiGateway::Stage": (("RestApiId",), ("StageName",)),
}
# Types whose every physical id CloudFormation or the service generates.
GENERATED = {
    "AWS::EC2::VPC",
    "AWS::EC2::Subnet",
    "AWS::EC2::RouteTable",
    "AWS::EC2::SubnetRouteTableAssociation",
    "AWS::EC2::VPCEndpoint",
    "AWS::EC2::SecurityGroup",
    "AWS::EC2::SecurityGroupIngress",
    "AWS::EC2::SecurityGroupEgress",
    "AWS::Lambda::LayerVersion",
    "AWS::Lambda::EventSourceMapping",
    "AWS::Lambda::Permission",
    "AWS::S3::BucketPolicy",
    "AWS::SNS::Subscription",
    "AWS::KMS::Key",
    "AWS::ApiGateway::RestApi",
    "AWS::ApiGateway::Deployment",
    "AWS::ApiGateway::ApiKey",
    "AWS::ApiGateway::UsagePlan",
    "AWS::ApiGateway::UsagePlanKey",
    "AWS::ApiGateway::Account",
    "Custom::KafkaTopics",
    "Custom::KafkaBootstrapBrokers",
}
# The cluster holds the records and the consumers' offsets: only these may replace it.
CLUSTER_IDENTITY = {"Stage", "CreateVpc", "VpcCidr", "ExistingVpcId", "ExistingSubnetIds"}
KEPT = {"ArchiveBucket", "DeadLetterBucket", "IdempotencyTable"}


def parameters(mode: dict[str, str], stage: str = "dev", **extra: str) -> dict[str, str]:
    return {"Stage": stage, "SenderEmail": SENDER, **mode, **extra}


def stack_of(
    mode: dict[str, str],
    stage: str = "dev",
    edit: Callable[[dict[str, Any]], None] | None = None,
    **extra: str,
) -> Stack:
    source = load_template()
    if edit is not None:
        source = copy.deepcopy(source)
        edit(source)
    values = parameters(mode, stage, **extra)
    assert parameter_errors(source, values) == []
    return Stack(transform(source, values), values)


@pytest.fixture(
    scope="module",
    params=list(itertools.product(MODE_VALUES.values(), STAGES)),
    ids=[f"{m}-{s}" for m, s in itertools.product(MODE_VALUES, STAGES)],
)
def stack(request: pytest.FixtureRequest) -> Stack:
    mode, stage = request.param
    return stack_of(mode, stage)


def violations(stack: Stack) -> list[str]:
    """Everything some runtime needs that CloudFormation may create after it or delete first."""
    found = []
    for who, why, needs in stack.network_needs():
        missing = needs - stack.ancestors(who)
        if missing:
            found.append(f"{who} ({why}) is not ordered after {sorted(missing)}")
    return found


# ---------------------------------------------------------------------------- ordering


def test_a_create_order_exists_and_deletion_reverses_it(stack: Stack) -> None:
    order = stack.create_order()
    assert sorted(order) == sorted(stack.resources)
    for name, deps in stack.edges.items():
        assert all(order.index(d) < order.index(name) for d in deps), name


def stranded(stack: Stack) -> list[str]:
    """Resources a stack deletion removes while something it keeps still refers to them (a
    retained cluster's subnets and security group: their deletion fails, DELETE_FAILED)."""
    kept = stack.kept()
    return sorted(f"{k} keeps using {d}" for k in kept for d in stack.ancestors(k) - kept)


def test_a_deletion_replayed_removes_everything_once_dependents_first(stack: Stack) -> None:
    waves = stack.delete_waves()
    gone: set[str] = set()
    for wave in waves:
        for name in wave:
            # Everything that depended on it left in an earlier wave.
            assert all(name not in stack.edges[o] for o in set(stack.resources) - gone - wave)
        gone |= wave
    assert gone == set(stack.resources)
    for who, _, needs in stack.network_needs():
        wave_of = {n: i for i, w in enumerate(waves) for n in w}
        assert all(wave_of[n] > wave_of[who] for n in needs), who


def test_what_a_deletion_keeps_can_still_exist(stack: Stack) -> None:
    assert stranded(stack) == []
    cluster = CLUSTER_OF.get(stack.parameters["ClusterType"])
    assert stack.cluster() == cluster
    if stack.parameters["Stage"] == "prod" and cluster:
        assert cluster in stack.kept()
    if cluster is None:  # a cluster you run: nothing of Kafka's is created, so nothing kept
        assert not stack.of_type("AWS::EC2::SecurityGroup", *Stack.CLUSTER_TYPES)


@pytest.mark.parametrize("kind", list(CLUSTER_OF))
def test_the_rehearsal_catches_a_kept_cluster_in_a_deleted_network(kind: str) -> None:
    def network_deleted(template: dict[str, Any]) -> None:
        group = template["Resources"]["KafkaSecurityGroup"]
        del group["DeletionPolicy"], group["UpdateReplacePolicy"]

    broken = stack_of({"ClusterType": kind, "CreateVpc": "true"}, "prod", edit=network_deleted)
    assert stranded(broken) == [f"{CLUSTER_OF[kind]} keeps using KafkaSecurityGroup"]


def test_every_runtime_reaches_what_it_calls_for_its_whole_life(stack: Stack) -> None:
    """A VPC function, the custom resource a VPC function serves, each mapping's pollers: the
    routes and rules they use exist before they run and are deleted after them."""
    needs = {who: (why, need) for who, why, need in stack.network_needs()}
    # Not vacuous: these are the runtimes in the VPC, and what they need is named.
    assert set(needs) == {
        "KafkaTopics",
        "OrderApiFunction",
        "EmailNotifierFunctionOrderPlaced",
        "S3ArchiverFunctionOrderPlaced",
    }
    if "Vpc" in stack.resources:
        assert {"S3GatewayEndpoint", "PrivateSubnet1Routes"} <= needs["KafkaTopics"][1]
        assert "DynamoDbGatewayEndpoint" in needs["OrderApiFunction"][1]
        assert "S3GatewayEndpoint" in needs["EmailNotifierFunctionOrderPlaced"][1]
    cluster = stack.cluster()
    if cluster is not None:
        assert "KafkaSecurityGroupIngressSelf" in needs["KafkaTopics"][1]
        assert cluster in needs["S3ArchiverFunctionOrderPlaced"][1]
    else:  # their cluster's rules and routes are the user's prerequisite (README)
        assert needs["KafkaTopics"][1] == set()
    assert violations(stack) == []


def test_nothing_in_the_vpc_calls_an_api_without_a_gateway_endpoint(stack: Stack) -> None:
    """The MSK API's interface endpoint service `com.amazonaws.<region>.kafka` takes no new
    connections; the stack avoids the question: no VPC function calls the MSK API."""
    for function in stack.of_type("AWS::Lambda::Function"):
        actions = stack.role_actions(function)
        if stack.in_vpc(function):
            assert not {a for a in actions if a.startswith("kafka:")}, function
    assert not [
        e
        for e in stack.of_type("AWS::EC2::VPCEndpoint")
        if stack.resolved(e, "VpcEndpointType") == "Interface"
    ], "an interface endpoint costs per AZ-hour; nothing here needs one"
    lookup = stack.custom_resources()["KafkaBootstrapBrokers"]
    assert not stack.in_vpc(lookup)
    assert stack.role_actions(lookup) == {"kafka:GetBootstrapBrokers"}


def _drop_network_ready(template: dict[str, Any]) -> None:
    del template["Resources"]["KafkaTopics"]["Properties"]["NetworkReady"]


def _drop_rule_dependency(template: dict[str, Any]) -> None:
    del template["Resources"]["KafkaTopics"]["Properties"]["ClusterRules"]


def test_the_rehearsal_catches_an_answer_that_cannot_reach_cloudformation() -> None:
    """Today's defect: the S3 gateway endpoint deleted before the custom resource answers."""
    broken = stack_of({"CreateVpc": "true"}, edit=_drop_network_ready)
    found = violations(broken)
    assert any("KafkaTopics" in v and "S3GatewayEndpoint" in v for v in found), found
    assert any("OrderApiFunction" in v and "DynamoDbGatewayEndpoint" in v for v in found), found


@pytest.mark.parametrize("mode", CREATED_CLUSTER_MODES)
def test_the_rehearsal_catches_a_provisioner_racing_its_security_group_rules(
    mode: dict[str, str],
) -> None:
    broken = stack_of(mode, edit=_drop_rule_dependency)
    found = violations(broken)
    assert any("KafkaTopics" in v and "KafkaSecurityGroupIngressSelf" in v for v in found), found


def test_the_rehearsal_catches_an_msk_api_call_from_the_vpc() -> None:
    def call_msk_api(template: dict[str, Any]) -> None:
        statements = template["Resources"]["TopicProvisionerFunction"]["Properties"]["Policies"]
        statements[0]["Statement"][0]["Action"].append("kafka:GetBootstrapBrokers")

    broken = stack_of({"CreateVpc": "true"}, edit=call_msk_api)
    with pytest.raises(LookupError, match="calls kafka"):
        violations(broken)


def test_the_rehearsal_catches_on_demand_pollers_without_endpoints() -> None:
    def on_demand(template: dict[str, Any]) -> None:
        event = template["Resources"]["S3ArchiverFunction"]["Properties"]["Events"]["OrderPlaced"]
        del event["Properties"]["ProvisionedPollerConfig"]

    with pytest.raises(LookupError, match="on-demand"):
        violations(stack_of({"CreateVpc": "true"}, edit=on_demand))


# ---------------------------------------------------------------------------- replacement


def _classified(stack: Stack) -> None:
    kinds = {r["Type"] for r in stack.template["Resources"].values()}
    assert kinds <= set(IDENTITY) | GENERATED, kinds - set(IDENTITY) - GENERATED


def _collisions(stack: Stack) -> list[str]:
    """Parameter updates that would replace a resource while keeping its chosen name: the
    update fails ("cannot update a stack when a custom-named resource requires replacing"),
    or two resources claim one name."""
    found = []
    for parameter in stack.template["Parameters"]:
        replaced = replaced_by(stack, parameter)
        for name in sorted(replaced & set(stack.resources)):
            resource = stack.resources[name]
            identity = IDENTITY.get(resource["Type"], ())
            chosen = [property_at(resource["Properties"], path) for path in identity]
            if not identity or any(value is None for value in chosen):
                continue  # generated: a replacement gets a new one
            if not any(value_changes(stack, v, parameter, replaced) for v in chosen):
                found.append(f"{parameter} replaces {name} under the same name")
    return found


def test_every_resource_type_is_classified(stack: Stack) -> None:
    _classified(stack)
    for kind in IDENTITY:
        create_only = create_only_properties(kind)
        assert create_only, kind  # the schema is really read


def test_no_parameter_update_replaces_a_named_resource_under_its_name(stack: Stack) -> None:
    assert _collisions(stack) == []


def test_only_the_network_and_the_stage_replace_the_cluster(stack: Stack) -> None:
    cluster = stack.cluster()
    by = {p for p in stack.template["Parameters"] if cluster in replaced_by(stack, p)}
    created_vpc = "Vpc" in stack.resources
    if cluster is None:
        assert by == set()
    else:
        assert by == CLUSTER_IDENTITY - ({"VpcCidr"} if not created_vpc else set())
    for parameter in stack.template["Parameters"]:
        assert not replaced_by(stack, parameter) & KEPT, parameter


@pytest.mark.parametrize("kind", list(CLUSTER_OF))
def test_the_rehearsal_catches_a_cluster_name_that_ignores_the_network(kind: str) -> None:
    """Today's defect: `orderstream-${Stage}` stays the same when the subnets change."""

    def fixed_name(template: dict[str, Any]) -> None:
        cluster = template["Resources"][CLUSTER_OF[kind]]["Properties"]
        cluster["ClusterName"] = {"Fn::Sub": "orderstream-${Stage}"}

    broken = stack_of({"ClusterType": kind, "CreateVpc": "true"}, edit=fixed_name)
    found = _collisions(broken)
    assert f"CreateVpc replaces {CLUSTER_OF[kind]} under the same name" in found
    assert f"ExistingSubnetIds replaces {CLUSTER_OF[kind]} under the same name" in found


# ---------------------------------------------------------------------------- deletion


@pytest.mark.parametrize("kind", list(CLUSTER_OF))
@pytest.mark.parametrize(("stage", "policy"), [("prod", "Retain"), ("dev", "Delete")])
def test_prod_keeps_its_cluster_and_other_stages_delete_theirs(
    kind: str, stage: str, policy: str
) -> None:
    resources = stack_of({"ClusterType": kind, "CreateVpc": "true"}, stage).resources
    cluster = resources[CLUSTER_OF[kind]]
    assert cluster["DeletionPolicy"] == cluster["UpdateReplacePolicy"] == policy
    assert [c for c in CLUSTER_OF.values() if c in resources] == [CLUSTER_OF[kind]]


def test_our_language_extensions_match_sam_clis() -> None:
    """devstack resolves the policies itself; SAM CLI ships AWS's own port of the transform."""
    from samcli.lib.cfn_language_extensions import process_template

    source = load_template()
    for stage, mode in itertools.product(STAGES, MODE_VALUES.values()):
        values = parameters(mode, stage)
        ours = apply_language_extensions(source, values)["Resources"]
        theirs = process_template(copy.deepcopy(source), parameter_values=values)["Resources"]
        for name, resource in ours.items():
            for attribute in ("DeletionPolicy", "UpdateReplacePolicy"):
                assert resource.get(attribute) == theirs[name].get(attribute), (name, attribute)


def test_what_deletion_leaves_has_no_fixed_name(stack: Stack) -> None:
    """A retained resource with a chosen name blocks re-creating the stack ("already exists"),
    unless the name carries the id of something a new stack creates anew (prod's cluster
    carries its security group's)."""
    for name in stack.kept():
        resource = stack.resources[name]
        identity = IDENTITY.get(resource["Type"], ())
        chosen = [property_at(resource["Properties"], p) for p in identity]
        if all(value is None for value in chosen):
            continue
        fresh = {
            r
            for r in stack.references(chosen)
            if stack.template["Resources"][r]["Type"] in GENERATED
        }
        assert fresh, f"{name} is kept under a name a re-created stack would reuse"


def test_the_rehearsal_catches_a_retained_table_with_a_fixed_name() -> None:
    def named_table(template: dict[str, Any]) -> None:
        table = template["Resources"]["IdempotencyTable"]["Properties"]
        table["TableName"] = {"Fn::Sub": "orderstream-${Stage}-idempotency"}

    broken = stack_of({"CreateVpc": "true"}, edit=named_table)
    with pytest.raises(AssertionError, match="IdempotencyTable"):
        test_what_deletion_leaves_has_no_fixed_name(broken)


@pytest.mark.parametrize(
    ("cluster", "infix"), [("KafkaCluster", ""), ("ProvisionedKafkaCluster", "provisioned-")]
)
def test_the_cluster_name_fits_msk_limits(cluster: str, infix: str) -> None:
    """The longest stage and a security group id give a name MSK accepts (1-64 characters of
    letters, digits and hyphens, starting with a letter); the two types never share a name."""
    from devstack.template import Resolver

    source = load_template()
    values = parameters({"CreateVpc": "true"}, "a" * 16)
    resolver = Resolver(source, values, {}, {"KafkaSecurityGroup.GroupId": "sg-0123456789abcdef0"})
    name = resolver.resolve(source["Resources"][cluster]["Properties"]["ClusterName"])
    assert name == f"orderstream-{'a' * 16}-{infix}0123456789abcdef0"
    assert re.fullmatch(r"[a-zA-Z][a-zA-Z0-9-]{0,63}", name)
