"""Assertions on the transformed template for what cfn-lint and sam validate cannot see."""

from __future__ import annotations

import ast
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.template import (
    ACCOUNT_ID,
    REGION,
    ROOT,
    Resolver,
    load_template,
    parameter_errors,
    transform,
)
from orderstream import settings
from orderstream.topics import required_topics
from tests.template.modes import CLUSTER_OF, MODE_VALUES, MODES

PARAMETERS = {"Stage": "dev", "SenderEmail": "orders@shop.example"}
CLUSTER_ARN = f"arn:aws:kafka:{REGION}:{ACCOUNT_ID}:cluster/orderstream-dev/0a1b2c3d-uuid-s1"
TOPIC_ARN_PREFIX = f"arn:aws:kafka:{REGION}:{ACCOUNT_ID}:topic/orderstream-dev/0a1b2c3d-uuid-s1/"
GROUP_ARN_PREFIX = f"arn:aws:kafka:{REGION}:{ACCOUNT_ID}:group/orderstream-dev/0a1b2c3d-uuid-s1/"
DATA_PLANE = ("kafka-cluster:", "s3:", "dynamodb:", "ses:", "sqs:", "sns:")
CONSUMERS = {"EmailNotifierFunction": "EmailNotifier", "S3ArchiverFunction": "S3Archiver"}
KAFKA_CLIENTS = {"OrderApiFunction", "TopicProvisionerFunction"}
LOOKUPS = {"BootstrapBrokersFunction"}  # the MSK API, from outside the VPC


@pytest.fixture(scope="module")
def source() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def cfn(source: dict[str, Any]) -> dict[str, Any]:
    return transform(source, PARAMETERS)


@pytest.fixture(scope="module")
def resolve(cfn: dict[str, Any]) -> Resolver:
    refs = {name: f"{name}-physical" for name in cfn["Resources"]}
    refs["KafkaCluster"] = CLUSTER_ARN
    attributes = {
        f"{name}.Arn": f"arn:aws:test:{REGION}:{ACCOUNT_ID}:{name}" for name in cfn["Resources"]
    }
    # The lookup echoes the cluster it was given (tests/unit/test_bootstrap_brokers.py).
    attributes["KafkaBootstrapBrokers.ClusterArn"] = CLUSTER_ARN
    attributes["KafkaTopics.BootstrapServers"] = "boot-x.kafka-serverless:9098"
    attributes["KafkaBootstrapBrokers.BootstrapServers"] = "boot-x.kafka-serverless:9098"
    attributes["KafkaSecurityGroup.GroupId"] = "sg-0123456789abcdef0"
    return Resolver(cfn, PARAMETERS, refs, attributes)


def of_type(cfn: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in cfn["Resources"].items() if v["Type"] == kind}


def statements(cfn: dict[str, Any], resolve: Resolver, role: str) -> Iterator[dict[str, Any]]:
    for policy in cfn["Resources"][role]["Properties"].get("Policies", []):
        yield from resolve.resolve(policy["PolicyDocument"])["Statement"]


def actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def resources(statement: dict[str, Any]) -> list[str]:
    resource = statement["Resource"]
    return [resource] if isinstance(resource, str) else list(resource)


def test_every_function_runs_python_313_from_its_own_folder(
    source: dict[str, Any], cfn: dict[str, Any]
) -> None:
    functions = of_type(cfn, "AWS::Lambda::Function")
    assert set(functions) == {*CONSUMERS, *KAFKA_CLIENTS, *LOOKUPS}
    for name, function in functions.items():
        props = function["Properties"]
        assert props["Runtime"] == "python3.13", name
        assert props["Handler"] == "app.lambda_handler", name
        assert props["TracingConfig"] == {"Mode": "Active"}, name
        assert len(props["Layers"]) == 1, name
        code_dir = ROOT / source["Resources"][name]["Properties"]["CodeUri"]
        handler = ast.parse((code_dir / "app.py").read_text())
        defined = {n.name for n in handler.body if isinstance(n, ast.FunctionDef)}
        assert "lambda_handler" in defined, f"{code_dir}/app.py has no lambda_handler"
    layer = source["Resources"]["SharedLayer"]
    assert layer["Metadata"]["BuildMethod"] == "python3.13"
    assert (ROOT / layer["Properties"]["ContentUri"] / "requirements.txt").is_file()


def test_every_msk_mapping_reads_order_placed_in_its_own_group(
    cfn: dict[str, Any], resolve: Resolver
) -> None:
    mappings = of_type(cfn, "AWS::Lambda::EventSourceMapping")
    assert len(mappings) == len(CONSUMERS)
    groups = set()
    for mapping in mappings.values():
        props = resolve.resolve(mapping["Properties"])
        function = mapping["Properties"]["FunctionName"]["Ref"]
        assert function in CONSUMERS
        assert props["EventSourceArn"] == CLUSTER_ARN
        assert props["Topics"] == [settings.DEFAULT_ORDER_TOPIC]
        assert props["StartingPosition"] == "TRIM_HORIZON"
        group = props["AmazonManagedKafkaEventSourceConfig"]["ConsumerGroupId"]
        assert group == resolve.template["Mappings"]["Kafka"]["ConsumerGroups"][CONSUMERS[function]]
        groups.add(group)
        assert props["DestinationConfig"]["OnFailure"]["Destination"].endswith(":DeadLetterBucket")
        assert props["ProvisionedPollerConfig"]["MinimumPollers"] >= 1  # error handling needs it
        assert 1 <= props["BatchSize"] <= 10_000
        assert props["MaximumBatchingWindowInSeconds"] >= 1
        assert 0 <= props["MaximumRetryAttempts"] <= 10_000
    assert len(groups) == len(CONSUMERS), "each consumer needs its own group"
    # One poller group for both: they share event poller units (billed per EPU-hour).
    poller_groups = {
        resolve.resolve(m["Properties"])["ProvisionedPollerConfig"]["PollerGroupName"]
        for m in mappings.values()
    }
    assert poller_groups == {"orderstream-dev-" + CLUSTER_ARN.split("/")[2]}


def test_kafka_permissions_name_exact_arns(cfn: dict[str, Any], resolve: Resolver) -> None:
    granted: dict[str, set[str]] = {}
    for function in [*CONSUMERS, *KAFKA_CLIENTS]:
        for statement in statements(cfn, resolve, f"{function}Role"):
            for action in actions(statement):
                if not action.startswith("kafka-cluster:"):
                    continue
                granted.setdefault(function, set()).add(action)
                for arn in resources(statement):
                    if action in {
                        "kafka-cluster:Connect",
                        "kafka-cluster:DescribeCluster",
                        "kafka-cluster:DescribeClusterDynamicConfiguration",
                        "kafka-cluster:WriteDataIdempotently",
                    }:
                        assert arn == CLUSTER_ARN, (function, action, arn)
                    elif action.endswith("Group"):
                        groups = resolve.template["Mappings"]["Kafka"]["ConsumerGroups"]
                        # A consumer its own group; the provisioner looks at both.
                        mine = [CONSUMERS[function]] if function in CONSUMERS else list(groups)
                        allowed = {GROUP_ARN_PREFIX + groups[key] for key in mine}
                        assert arn in allowed, (function, action, arn)
                    else:
                        assert arn == TOPIC_ARN_PREFIX + settings.DEFAULT_ORDER_TOPIC, (
                            function,
                            action,
                            arn,
                        )
    assert granted["OrderApiFunction"] == {
        "kafka-cluster:Connect",
        "kafka-cluster:WriteDataIdempotently",
        "kafka-cluster:DescribeTopic",
        "kafka-cluster:WriteData",
    }
    for consumer in CONSUMERS:
        # The Lambda guide's list for MSK mappings with IAM auth.
        assert {
            "kafka-cluster:Connect",
            "kafka-cluster:DescribeClusterDynamicConfiguration",
            "kafka-cluster:ReadData",
            "kafka-cluster:DescribeTopic",
            "kafka-cluster:AlterGroup",
            "kafka-cluster:DescribeGroup",
        } == granted[consumer]
    assert "kafka-cluster:WriteData" not in granted["TopicProvisionerFunction"]
    assert "kafka-cluster:AlterGroup" not in granted["TopicProvisionerFunction"]
    assert "BootstrapBrokersFunction" not in granted  # it never connects to Kafka


def test_consumers_can_describe_the_serverless_cluster(
    cfn: dict[str, Any], resolve: Resolver
) -> None:
    for consumer in CONSUMERS:
        found = [
            s
            for s in statements(cfn, resolve, f"{consumer}Role")
            if "kafka:DescribeClusterV2" in actions(s)
        ]
        assert found
        assert all(resources(s) == [CLUSTER_ARN] for s in found)


def test_no_wildcards_on_the_data_plane(cfn: dict[str, Any], resolve: Resolver) -> None:
    for role in of_type(cfn, "AWS::IAM::Role"):
        for statement in statements(cfn, resolve, role):
            for action in actions(statement):
                assert action != "*", role
                assert not action.endswith(":*"), (role, action)
                if action.startswith(DATA_PLANE):
                    for arn in resources(statement):
                        assert arn != "*", (role, action)
                        assert not re.search(r":\*$", arn), (role, action, arn)


def test_only_kafka_clients_live_in_the_vpc(cfn: dict[str, Any]) -> None:
    for name, function in of_type(cfn, "AWS::Lambda::Function").items():
        assert ("VpcConfig" in function["Properties"]) == (name in KAFKA_CLIENTS), name


def test_buckets_refuse_plain_http_and_public_access(
    cfn: dict[str, Any], resolve: Resolver
) -> None:
    buckets = of_type(cfn, "AWS::S3::Bucket")
    assert set(buckets) == {"ArchiveBucket", "DeadLetterBucket"}
    policies = {
        p["Properties"]["Bucket"]["Ref"]: p for p in of_type(cfn, "AWS::S3::BucketPolicy").values()
    }
    for name, bucket in buckets.items():
        props = bucket["Properties"]
        assert all(props["PublicAccessBlockConfiguration"].values())
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
        assert any(r.get("Transitions") for r in props["LifecycleConfiguration"]["Rules"])
        statements = resolve.resolve(policies[name]["Properties"]["PolicyDocument"])["Statement"]
        [deny] = [s for s in statements if s["Sid"] == "DenyInsecureTransport"]
        assert deny["Effect"] == "Deny"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert set(deny["Resource"]) == {
            f"arn:aws:test:{REGION}:{ACCOUNT_ID}:{name}",
            f"arn:aws:test:{REGION}:{ACCOUNT_ID}:{name}/*",
        }


def test_the_archive_takes_only_conditional_writes_and_its_writer_can_see_missing_keys(
    cfn: dict[str, Any], resolve: Resolver
) -> None:
    """The merge reads a key before it writes: without s3:ListBucket, S3 answers a missing key
    403 and every new hour's first batch would fail. And a PUT without If-None-Match or
    If-Match, which could overwrite a merge, is refused to everyone."""
    policies = {
        p["Properties"]["Bucket"]["Ref"]: p for p in of_type(cfn, "AWS::S3::BucketPolicy").values()
    }
    document = resolve.resolve(policies["ArchiveBucket"]["Properties"]["PolicyDocument"])
    [deny] = [s for s in document["Statement"] if s["Sid"] == "DenyUnconditionalArchiveWrites"]
    assert (deny["Effect"], deny["Principal"], deny["Action"]) == ("Deny", "*", "s3:PutObject")
    assert deny["Resource"] == f"arn:aws:test:{REGION}:{ACCOUNT_ID}:ArchiveBucket/topics/*"
    assert deny["Condition"] == {"Null": {"s3:if-none-match": "true", "s3:if-match": "true"}}

    by_sid = {s.get("Sid"): s for s in statements(cfn, resolve, "S3ArchiverFunctionRole")}
    merge = by_sid["MergeArchiveObjects"]
    assert sorted(merge["Action"]) == ["s3:GetObject", "s3:PutObject"]
    assert merge["Resource"] == f"arn:aws:test:{REGION}:{ACCOUNT_ID}:ArchiveBucket/topics/*"
    listing = by_sid["SeeMissingArchiveObjects"]
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Resource"] == f"arn:aws:test:{REGION}:{ACCOUNT_ID}:ArchiveBucket"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["topics/*"]}}


def test_idempotency_table_matches_powertools_defaults(cfn: dict[str, Any]) -> None:
    table = cfn["Resources"]["IdempotencyTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["SSESpecification"]["SSEEnabled"] is True


def test_orders_need_an_api_key(cfn: dict[str, Any]) -> None:
    [api] = of_type(cfn, "AWS::ApiGateway::RestApi").values()
    method = api["Properties"]["Body"]["paths"]["/orders"]["post"]
    assert method["security"] == [{"api_key": []}]
    assert of_type(cfn, "AWS::ApiGateway::UsagePlan")
    [stage] = of_type(cfn, "AWS::ApiGateway::Stage").values()
    settings_ = stage["Properties"]["MethodSettings"][0]
    assert settings_["ThrottlingRateLimit"]
    assert settings_["DataTraceEnabled"] is False


@pytest.mark.parametrize("logging", ["off", "use-account-role", "create-account-role"])
def test_api_gateway_logging_never_needs_a_role_the_account_lacks(
    source: dict[str, Any], logging: str
) -> None:
    """The account's API Gateway logging role is one per account and region: created only on
    request and then kept; stage logging is on only where the role exists, and the stage waits
    for it when this stack sets it."""
    from tests.template.cloudformation import Stack

    parameters = {**PARAMETERS, "ApiGatewayLogging": logging}
    stack = Stack(transform(source, parameters), parameters)
    [stage_name] = stack.of_type("AWS::ApiGateway::Stage")
    stage = stack.values.resolve(stack.resources[stage_name]["Properties"])
    accounts = stack.of_type("AWS::ApiGateway::Account")
    if logging == "off":
        assert "AccessLogSetting" not in stage
        assert stage["MethodSettings"][0]["LoggingLevel"] == "OFF"
    else:
        assert stage["AccessLogSetting"]["DestinationArn"] == "ApiAccessLogs.Arn"
        assert stage["MethodSettings"][0]["LoggingLevel"] == "ERROR"
    if logging == "create-account-role":
        [account] = accounts
        role = stack.resources["ApiGatewayCloudWatchRole"]
        for kept in (accounts[account], role):
            assert kept["DeletionPolicy"] == kept["UpdateReplacePolicy"] == "Retain"
        assert {account, "ApiGatewayCloudWatchRole"} <= stack.ancestors(stage_name)
    else:
        assert accounts == {}
        assert "ApiGatewayCloudWatchRole" not in stack.resources


def test_environment_names_come_from_the_settings_module(cfn: dict[str, Any]) -> None:
    known = {v for k, v in vars(settings).items() if k.isupper() and isinstance(v, str)}
    for name, function in of_type(cfn, "AWS::Lambda::Function").items():
        for variable in function["Properties"]["Environment"]["Variables"]:
            assert variable.startswith("POWERTOOLS_") or variable in known, (name, variable)


def test_topic_name_is_the_one_the_code_defaults_to(source: dict[str, Any]) -> None:
    assert source["Mappings"]["Kafka"]["Topics"]["OrderPlaced"] == settings.DEFAULT_ORDER_TOPIC


def test_producer_gets_the_bootstrap_string_from_the_provisioner(
    cfn: dict[str, Any], resolve: Resolver
) -> None:
    env = resolve.resolve(cfn["Resources"]["OrderApiFunction"]["Properties"]["Environment"])
    assert env["Variables"]["KAFKA_BOOTSTRAP_SERVERS"] == "boot-x.kafka-serverless:9098"
    assert env["Variables"]["KAFKA_SECURITY"] == "iam"
    topics = cfn["Resources"]["KafkaTopics"]
    assert topics["Properties"]["ServiceToken"] == {
        "Fn::GetAtt": ["TopicProvisionerFunction", "Arn"]
    }
    assert topics["Properties"]["BootstrapServers"] == {
        "Fn::GetAtt": ["KafkaBootstrapBrokers", "BootstrapServers"]
    }
    lookup = cfn["Resources"]["KafkaBootstrapBrokers"]["Properties"]
    assert lookup["ServiceToken"] == {"Fn::GetAtt": ["BootstrapBrokersFunction", "Arn"]}
    for custom in (topics["Properties"], lookup):
        assert int(custom["ServiceTimeout"]) <= 900


def test_security_group_allows_9098_only_from_itself(cfn: dict[str, Any]) -> None:
    [ingress] = of_type(cfn, "AWS::EC2::SecurityGroupIngress").values()
    props = ingress["Properties"]
    assert (props["FromPort"], props["ToPort"], props["IpProtocol"]) == (9098, 9098, "tcp")
    assert props["SourceSecurityGroupId"] == props["GroupId"] == {"Ref": "KafkaSecurityGroup"}
    cluster = cfn["Resources"]["KafkaCluster"]["Properties"]
    assert cluster["ClientAuthentication"] == {"Sasl": {"Iam": {"Enabled": True}}}


@pytest.mark.parametrize("create_vpc", ["true", "false"])
def test_both_network_modes_transform(source: dict[str, Any], create_vpc: str) -> None:
    parameters = {
        **PARAMETERS,
        "CreateVpc": create_vpc,
        "ExistingVpcId": "vpc-0123456789abcdef0",
        "ExistingSubnetIds": "subnet-0a,subnet-0b",
    }
    cfn = transform(source, parameters)
    resolver = Resolver(cfn, parameters, {n: n for n in cfn["Resources"]}, {})
    subnets = resolver.resolve(
        cfn["Resources"]["OrderApiFunction"]["Properties"]["VpcConfig"]["SubnetIds"]
    )
    if create_vpc == "true":
        assert subnets == ["PrivateSubnet1", "PrivateSubnet2", "PrivateSubnet3"]
    else:
        assert subnets == ["subnet-0a", "subnet-0b"]


def test_handlers_exist_for_every_code_folder() -> None:
    folders = {
        p.name
        for p in (ROOT / "functions").iterdir()
        if p.is_dir() and not p.name.startswith(("_", "."))
    }
    declared = {
        Path(r["Properties"]["CodeUri"]).name
        for r in load_template()["Resources"].values()
        if r["Type"] == "AWS::Serverless::Function"
    }
    assert folders == declared


def _hive_fields(hive_type: str) -> set[str]:
    """Top-level field names of a Hive struct<...> type."""
    body, depth, names, current = hive_type[len("struct<") : -1], 0, set(), ""
    for char in body:
        if char == "<":
            depth += 1
        elif char == ">":
            depth -= 1
        elif char == "," and depth == 0:
            names.add(current.split(":", 1)[0])
            current = ""
            continue
        current += char
    names.add(current.split(":", 1)[0])
    return names


def test_glue_table_describes_the_archive_lines(cfn: dict[str, Any], resolve: Resolver) -> None:
    """The Athena table and the archiver agree on every column, and the table points at the
    objects' real keys, so a query sees what the archiver writes."""
    import json as json_

    from aws_lambda_powertools.utilities.kafka import ConsumerRecords

    from orderstream.archive import Years, archive_line, object_key
    from orderstream.events import ORDER_EVENTS
    from tests.samples import load_event

    table = resolve.resolve(cfn["Resources"]["OrderPlacedArchiveTable"]["Properties"]["TableInput"])
    columns = {c["Name"]: c["Type"] for c in table["StorageDescriptor"]["Columns"]}
    records = list(ConsumerRecords(load_event("msk-orders.json"), ORDER_EVENTS).records)
    line = json_.loads(archive_line(records[0]).data)
    assert set(line) == set(columns)
    assert set(line["value"]) == _hive_fields(columns["value"])
    assert set(line["value"]["order"]) >= {"order_id", "customer", "items", "currency", "total"}

    # The archiver's years are the table's: every key it writes lies inside the projection.
    archiver = cfn["Resources"]["S3ArchiverFunction"]["Properties"]["Environment"]["Variables"]
    years = Years.parse(resolve.resolve(archiver["ARCHIVE_YEARS"]))
    projected = table["Parameters"]["projection.year.range"]
    assert Years.parse(projected) == years
    for timestamp in (-1, 0, records[0].timestamp, 2**63 - 1):
        year = re.search(r"year=(\d+)", object_key("t", 0, 0, years.hour_of(timestamp)))
        assert year is not None
        assert years.first <= int(year[1]) <= years.last

    key = object_key("order-placed", 3, 42, years.hour_of(records[0].timestamp))
    location = table["Parameters"]["storage.location.template"]
    bucket_prefix = "s3://ArchiveBucket-physical/"
    assert location.startswith(bucket_prefix)
    expected_dir = location[len(bucket_prefix) :]
    for part in ("year", "month", "day", "hour"):
        value = re.search(rf"{part}=(\d+)", key)
        assert value is not None
        expected_dir = expected_dir.replace("${" + part + "}", value.group(1))
    assert key.startswith(expected_dir)
    assert [k["Name"] for k in table["PartitionKeys"]] == ["year", "month", "day", "hour"]
    assert table["Parameters"]["projection.enabled"] == "true"


def test_alarms_can_publish_to_their_encrypted_topic(
    cfn: dict[str, Any], resolve: Resolver
) -> None:
    """CloudWatch cannot use the AWS-managed alias/aws/sns key; the topic's own key lets
    CloudWatch alarms of this account, and no other account's, encrypt and decrypt with it."""
    topic = resolve.resolve(cfn["Resources"]["AlarmTopic"]["Properties"])
    assert topic["KmsMasterKeyId"] == "AlarmTopicKey-physical"
    key = resolve.resolve(cfn["Resources"]["AlarmTopicKey"]["Properties"])
    assert key["EnableKeyRotation"] is True
    [cloudwatch] = [
        s
        for s in key["KeyPolicy"]["Statement"]
        if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    ]
    assert set(cloudwatch["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    assert cloudwatch["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT_ID}}
    for statement in key["KeyPolicy"]["Statement"]:
        assert "kms:*" not in statement["Action"]
        assert statement["Principal"] != "*"
        assert statement["Principal"] != {"AWS": "*"}
    alarms = of_type(cfn, "AWS::CloudWatch::Alarm")
    assert alarms
    for name, alarm in alarms.items():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}], name


@pytest.mark.parametrize("prefix", range(16, 25))
def test_every_vpc_cidr_the_template_accepts_holds_its_subnets(
    source: dict[str, Any], prefix: int
) -> None:
    """VpcCidr's pattern admits exactly the sizes Fn::Cidr can carve the three subnets from."""
    import ipaddress

    from devstack.template import parameter_errors

    parameters = {**PARAMETERS, "VpcCidr": f"10.42.0.0/{prefix}"}
    accepted = parameter_errors(source, parameters) == []
    resolver = Resolver(source, parameters)
    try:
        subnets = [
            resolver.resolve(source["Resources"][f"PrivateSubnet{i}"]["Properties"]["CidrBlock"])
            for i in (1, 2, 3)
        ]
    except ValueError:
        assert not accepted, f"/{prefix} is accepted but its subnets do not fit"
        return
    assert accepted, f"/{prefix} fits three subnets but is refused"
    vpc = ipaddress.IPv4Network(f"10.42.0.0/{prefix}")
    networks = [ipaddress.IPv4Network(s) for s in subnets]
    assert all(n.subnet_of(vpc) for n in networks)
    assert len(set(networks)) == 3
    assert not any(a.overlaps(b) for a, b in itertools.combinations(networks, 2))


def test_the_idempotency_table_has_no_fixed_name(source: dict[str, Any]) -> None:
    """It is retained on delete: a fixed name would fail the next create ("already exists")."""
    table = source["Resources"]["IdempotencyTable"]
    assert table["DeletionPolicy"] == "Retain"
    assert "TableName" not in table["Properties"]


def test_stage_has_no_default(source: dict[str, Any]) -> None:
    """A parameter list without Stage fails the deploy instead of naming a stack "dev"."""
    from devstack.template import parameter_errors

    assert "Default" not in source["Parameters"]["Stage"]
    assert parameter_errors(source, {"SenderEmail": "orders@shop.example"}) == [
        "Stage: must have a value"
    ]


def test_the_security_group_description_fits_any_network(source: dict[str, Any]) -> None:
    """It names the subnets (so a new network replaces the group, and renames the cluster);
    EC2 takes 255 characters: enough for the longest stage and eight existing subnets."""
    subnets = ",".join(f"subnet-{i:017x}" for i in range(8))
    parameters = {**PARAMETERS, "Stage": "a" * 16, "CreateVpc": "false"}
    parameters |= {"ExistingVpcId": "vpc-0123456789abcdef0", "ExistingSubnetIds": subnets}
    group = source["Resources"]["KafkaSecurityGroup"]["Properties"]
    description = Resolver(source, parameters).resolve(group["GroupDescription"])
    assert all(s in description for s in subnets.split(","))
    assert len(description) <= 255
    assert re.fullmatch(r"[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]+", description)


def test_the_dead_letter_alarm_counts_arrivals_but_not_redrives(
    cfn: dict[str, Any], resolve: Resolver
) -> None:
    """Failures arrive under dead-letters/ and aws/lambda/; a redrive moves objects under
    redriven/ (a PUT), which the alarm must not take for a new failure."""
    from operate.redrive import FAILURES_PREFIX, REDRIVEN_PREFIX
    from orderstream.dead_letter import PREFIX

    bucket = cfn["Resources"]["DeadLetterBucket"]["Properties"]
    filters = {m["Id"]: m["Prefix"] for m in bucket["MetricsConfigurations"]}
    assert sorted(filters.values()) == sorted([f"{PREFIX}/", FAILURES_PREFIX])
    assert not any(REDRIVEN_PREFIX.startswith(prefix) for prefix in filters.values())
    alarm = resolve.resolve(cfn["Resources"]["DeadLetterArrivalsAlarm"]["Properties"])
    stats = {m["Id"]: m["MetricStat"]["Metric"] for m in alarm["Metrics"] if "MetricStat" in m}
    assert {
        dim["Value"]
        for metric in stats.values()
        for dim in metric["Dimensions"]
        if dim["Name"] == "FilterId"
    } == set(filters)
    assert all(metric["MetricName"] == "PutRequests" for metric in stats.values())
    [total] = [m for m in alarm["Metrics"] if m.get("ReturnData")]
    assert total["Expression"] == " + ".join(f"FILL({i}, 0)" for i in stats)
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold")


# ---------------------------------------------------------------------------- cluster types

CLUSTER_ARNS = {
    "KafkaCluster": CLUSTER_ARN,
    "ProvisionedKafkaCluster": (
        f"arn:aws:kafka:{REGION}:{ACCOUNT_ID}:cluster/orderstream-dev-provisioned-0a1/9f8e-uuid-3"
    ),
}
CLUSTER_RESOURCES = {"AWS::MSK::ServerlessCluster", "AWS::MSK::Cluster"}


def mode_parameters(mode: dict[str, str]) -> dict[str, str]:
    return {**PARAMETERS, **mode}


def used_cluster(mode: dict[str, str]) -> str:
    """The ARN a deployment of this mode uses: the cluster it creates, or the user's."""
    created = CLUSTER_OF.get(mode["ClusterType"])
    return CLUSTER_ARNS[created] if created else mode["ExistingClusterArn"]


def resolver_for(cfn: dict[str, Any], mode: dict[str, str]) -> Resolver:
    values = mode_parameters(mode)
    refs = {name: f"{name}-physical" for name in cfn["Resources"]} | CLUSTER_ARNS
    attributes = {
        f"{name}.Arn": f"arn:aws:test:{REGION}:{ACCOUNT_ID}:{name}" for name in cfn["Resources"]
    }
    attributes["KafkaSecurityGroup.GroupId"] = "sg-0123456789abcdef0"
    attributes["KafkaBootstrapBrokers.ClusterArn"] = used_cluster(mode)
    attributes["KafkaBootstrapBrokers.BootstrapServers"] = "b-1.x:9098,b-2.x:9098"
    attributes["KafkaTopics.BootstrapServers"] = "b-1.x:9098,b-2.x:9098"
    return Resolver(cfn, values, refs, attributes)


@pytest.mark.parametrize("mode", MODES)
def test_each_cluster_type_creates_exactly_its_cluster(
    source: dict[str, Any], mode: dict[str, str]
) -> None:
    cfn = transform(source, mode_parameters(mode))
    resolve = Resolver(cfn, mode_parameters(mode))
    created = {
        name
        for name, resource in cfn["Resources"].items()
        if resource["Type"] in CLUSTER_RESOURCES
        and resolve.condition(resource.get("Condition", "CreateCluster"))
    }
    expected = CLUSTER_OF.get(mode["ClusterType"])
    assert created == ({expected} if expected else set())
    groups = {
        n
        for n, r in of_type(cfn, "AWS::EC2::SecurityGroup").items()
        if resolve.condition(r["Condition"])
    }
    assert groups == ({"KafkaSecurityGroup"} if expected else set())


@pytest.mark.parametrize("mode", MODES)
def test_one_place_chooses_the_cluster_and_every_statement_names_it(
    source: dict[str, Any], mode: dict[str, str]
) -> None:
    """The lookup's ClusterArn and its function's policy are the only places that name a
    cluster; every mapping, statement and output takes the lookup's answer, so each type's
    statements name its own cluster, topic and groups (in the stack's account and region:
    the lookup refuses a cluster elsewhere)."""
    cfn = transform(source, mode_parameters(mode))
    resolve = resolver_for(cfn, mode)
    arn = used_cluster(mode)
    name, uuid = arn.split("/")[1:3]
    lookup = resolve.resolve(cfn["Resources"]["KafkaBootstrapBrokers"]["Properties"]["ClusterArn"])
    assert lookup == arn
    [brokers_statement] = statements(cfn, resolve, "BootstrapBrokersFunctionRole")
    assert resources(brokers_statement) == [arn]

    chosen_directly = [
        logical_id
        for logical_id, resource in cfn["Resources"].items()
        if re.search(
            r'"Ref": "(KafkaCluster|ProvisionedKafkaCluster|ExistingClusterArn)"',
            json.dumps(resource.get("Properties", {})),
        )
    ]
    assert sorted(chosen_directly) == ["BootstrapBrokersFunctionRole", "KafkaBootstrapBrokers"]

    topic_arn = f"arn:aws:kafka:{REGION}:{ACCOUNT_ID}:topic/{name}/{uuid}/order-placed"
    for function in [*CONSUMERS, *KAFKA_CLIENTS]:
        for statement in statements(cfn, resolve, f"{function}Role"):
            kafka = [a for a in actions(statement) if a.startswith(("kafka:", "kafka-cluster:"))]
            if not kafka:
                continue
            for target in resources(statement):
                group = f"arn:aws:kafka:{REGION}:{ACCOUNT_ID}:group/{name}/{uuid}/"
                assert target in (arn, topic_arn) or target.startswith(group), (function, target)
    for mapping in of_type(cfn, "AWS::Lambda::EventSourceMapping").values():
        assert resolve.resolve(mapping["Properties"]["EventSourceArn"]) == arn
    assert resolve.resolve(cfn["Outputs"]["ClusterArn"]["Value"]) == arn


@pytest.mark.parametrize("mode", MODES)
def test_the_functions_in_the_vpc_join_the_group_the_cluster_admits(
    source: dict[str, Any], mode: dict[str, str]
) -> None:
    cfn = transform(source, mode_parameters(mode))
    resolve = resolver_for(cfn, mode)
    expected = (
        ["sg-0fedcba9876543210"]
        if mode["ClusterType"] == "existing"
        else ["KafkaSecurityGroup-physical"]
    )
    for function in KAFKA_CLIENTS:
        vpc = resolve.resolve(cfn["Resources"][function]["Properties"]["VpcConfig"])
        assert vpc["SecurityGroupIds"] == expected, function
    cluster = CLUSTER_OF.get(mode["ClusterType"])
    if cluster == "ProvisionedKafkaCluster":
        brokers = resolve.resolve(cfn["Resources"][cluster]["Properties"]["BrokerNodeGroupInfo"])
        assert brokers["SecurityGroups"] == expected
        subnets = resolve.resolve(
            cfn["Resources"]["OrderApiFunction"]["Properties"]["VpcConfig"]["SubnetIds"]
        )
        assert brokers["ClientSubnets"] == subnets


def test_a_provisioned_cluster_survives_a_broker_and_speaks_only_iam_over_tls(
    source: dict[str, Any],
) -> None:
    mode = {"ClusterType": "provisioned", "CreateVpc": "true"}
    cfn = transform(source, mode_parameters(mode))
    resolve = resolver_for(cfn, mode)
    cluster = resolve.resolve(cfn["Resources"]["ProvisionedKafkaCluster"]["Properties"])
    subnets = cluster["BrokerNodeGroupInfo"]["ClientSubnets"]
    assert cluster["NumberOfBrokerNodes"] == len(subnets) == 3  # one broker per subnet
    assert cluster["ClientAuthentication"] == {
        "Sasl": {"Iam": {"Enabled": True}},
        "Unauthenticated": {"Enabled": False},
    }
    assert cluster["EncryptionInfo"]["EncryptionInTransit"] == {
        "ClientBroker": "TLS",
        "InCluster": True,
    }
    assert cluster["BrokerNodeGroupInfo"]["InstanceType"] == "kafka.t3.small"
    assert cluster["KafkaVersion"] == source["Parameters"]["KafkaVersion"]["Default"]
    logs = cluster["LoggingInfo"]["BrokerLogs"]["CloudWatchLogs"]
    assert logs == {"Enabled": True, "LogGroup": "KafkaBrokerLogs-physical"}


@pytest.mark.parametrize(
    ("mode", "replication"),
    [
        ({"ClusterType": "serverless", "CreateVpc": "true"}, (-1, -1)),
        ({"ClusterType": "provisioned", "CreateVpc": "true"}, (3, 2)),
        (MODE_VALUES["existing-cluster"], (-1, -1)),
    ],
    ids=["serverless", "provisioned", "existing"],
)
def test_the_topic_gets_the_replication_its_cluster_needs(
    source: dict[str, Any], mode: dict[str, str], replication: tuple[int, int]
) -> None:
    cfn = transform(source, mode_parameters(mode))
    topics = resolver_for(cfn, mode).resolve(cfn["Resources"]["KafkaTopics"]["Properties"])
    assert (topics["ReplicationFactor"], topics["MinInsyncReplicas"]) == replication
    # What the provisioner makes of it is tested against the real broker.
    assert required_topics("order-placed", 6, *replication)


@pytest.mark.parametrize(
    ("missing", "refusal"),
    [
        ("ExistingClusterArn", "needs ExistingClusterArn"),
        ("ExistingClientSecurityGroupId", "needs ExistingClientSecurityGroupId"),
    ],
)
def test_an_existing_cluster_needs_its_arn_and_a_client_group(
    source: dict[str, Any], missing: str, refusal: str
) -> None:
    values = mode_parameters(MODE_VALUES["existing-cluster"]) | {missing: ""}
    [error] = parameter_errors(source, values)
    assert "ExistingClusterIsNamed" in error
    assert refusal in error
    created_vpc = mode_parameters(MODE_VALUES["existing-cluster"]) | {"CreateVpc": "true"}
    assert any("CreateVpc=false" in e for e in parameter_errors(source, created_vpc))
    assert parameter_errors(source, mode_parameters(MODE_VALUES["existing-cluster"])) == []
