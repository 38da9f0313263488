"""The AWS side of the local stack: moto_server, with the resources template.yaml declares.

Buckets, the idempotency table, the SES sender identity and the SES template are created from
their definitions in template.yaml, so local runs use the same key schema, TTL attribute and
email template as AWS. Physical names are chosen here the way CloudFormation would choose them.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Self

import boto3

from devstack.ports import LOOPBACK, ServerProcess, wait_for_port
from devstack.template import ACCOUNT_ID, REGION, Resolver

CREATED_LOCALLY = {"AWS::S3::Bucket", "AWS::DynamoDB::Table", "AWS::SES::Template"}
LOCAL_CLUSTER_ARN = f"arn:aws:kafka:{REGION}:{ACCOUNT_ID}:cluster/orderstream-local/local-0000-s1"


class AwsEmulatorError(RuntimeError):
    pass


class MotoServer(ServerProcess):
    """`moto_server` on one loopback port: S3, DynamoDB, SES and the rest, over real HTTP."""

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> Self:
        self._claim_port(AwsEmulatorError)
        # moto_server itself, with S3's conditional writes made atomic (devstack/moto_strict.py).
        self._launch(
            [sys.executable, "-m", "devstack.moto_strict", "-H", LOOPBACK, "-p", str(self.port)],
            "moto-",
        )
        if not wait_for_port(self.port, timeout_s) or not self.running:
            tail = self.log_tail()
            self.stop()
            raise AwsEmulatorError(f"moto_server did not start on {self.endpoint_url}: {tail}")
        return self

    def data(self) -> dict[str, Any]:
        return self.data_at(self.endpoint_url)

    @staticmethod
    def data_at(endpoint_url: str) -> dict[str, Any]:
        """moto's own view of its state (sent emails included)."""
        with urllib.request.urlopen(f"{endpoint_url}/moto-api/data.json", timeout=10) as r:  # noqa: S310
            state: dict[str, Any] = json.load(r)
        return state


def client(service: str, endpoint_url: str) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 -- moto accepts any credentials
    )


@dataclass
class LocalResources:
    """Physical names and attributes of the template's resources, as the local stack made them."""

    refs: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)

    def resolver(self, template: dict[str, Any], parameters: dict[str, str]) -> Resolver:
        return Resolver(template, parameters, self.refs, self.attributes)


def plan(
    template: dict[str, Any], parameters: dict[str, str], bootstrap_servers: str
) -> LocalResources:
    """Name every resource the way CloudFormation would, without creating anything yet."""
    resources = LocalResources()
    stage = str(parameters["Stage"])
    naming = Resolver(template, parameters)
    for logical_id, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        match resource["Type"]:
            case "AWS::S3::Bucket":
                name = f"orderstream-{stage}-{logical_id.lower()}"
                resources.refs[logical_id] = name
                resources.attributes[f"{logical_id}.Arn"] = f"arn:aws:s3:::{name}"
            case "AWS::DynamoDB::Table":
                # Unnamed in the template, as the buckets: CloudFormation would generate one.
                name = f"orderstream-{stage}-{logical_id.lower()}"
                resources.refs[logical_id] = name
                resources.attributes[f"{logical_id}.Arn"] = (
                    f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{name}"
                )
            case "AWS::SES::Template":
                resources.refs[logical_id] = naming.resolve(props["Template"]["TemplateName"])
            case "AWS::MSK::ServerlessCluster" | "AWS::MSK::Cluster":
                # Every ClusterType is the one embedded broker locally.
                resources.refs[logical_id] = LOCAL_CLUSTER_ARN
            case "Custom::KafkaTopics" | "Custom::KafkaBootstrapBrokers":
                resources.refs[logical_id] = logical_id
                resources.attributes[f"{logical_id}.BootstrapServers"] = bootstrap_servers
                resources.attributes[f"{logical_id}.ClusterArn"] = LOCAL_CLUSTER_ARN
            case _:
                resources.refs[logical_id] = logical_id
                resources.attributes[f"{logical_id}.Arn"] = (
                    f"arn:aws:local:{REGION}:{ACCOUNT_ID}:{logical_id}"
                )
    return resources


def create(resolver: Resolver, endpoint_url: str) -> list[str]:
    """Create the buckets, tables, SES identity and templates; return what was created."""
    created: list[str] = []
    template = resolver.template
    s3, dynamodb, ses = (client(s, endpoint_url) for s in ("s3", "dynamodb", "ses"))
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] not in CREATED_LOCALLY:
            continue  # networking, the cluster, functions: the local stack has its own
        if "Condition" in resource and not resolver.condition(resource["Condition"]):
            continue
        props = resolver.resolve(resource.get("Properties", {}))
        name = resolver.values[logical_id]
        match resource["Type"]:
            case "AWS::S3::Bucket":
                s3.create_bucket(
                    Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION}
                )
                if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
                    s3.put_bucket_versioning(
                        Bucket=name, VersioningConfiguration={"Status": "Enabled"}
                    )
            case "AWS::DynamoDB::Table":
                dynamodb.create_table(
                    TableName=name,
                    KeySchema=props["KeySchema"],
                    AttributeDefinitions=props["AttributeDefinitions"],
                    BillingMode=props.get("BillingMode", "PAY_PER_REQUEST"),
                )
                if "TimeToLiveSpecification" in props:
                    dynamodb.update_time_to_live(
                        TableName=name, TimeToLiveSpecification=props["TimeToLiveSpecification"]
                    )
            case "AWS::SES::Template":
                ses.create_template(Template=props["Template"])
        created.append(f"{resource['Type']} {name}")
    sender = resolver.values.get("SenderEmail")
    if sender:
        ses.verify_email_identity(EmailAddress=sender)
        created.append(f"SES identity {sender}")
    return created


def wait_until_ready(endpoint_url: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client("s3", endpoint_url).list_buckets()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
