"""Where the stack runs: its functions and buckets by logical id, and the clients to reach them.

One code path for AWS and the local stack: the local stack serves Lambda's Invoke API and
moto serves S3, so the same boto3 calls work against both; only the endpoints differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from devstack.stack import StackInfo

# Replays and redrives wait for the function, as the mapping would: up to its 15-minute cap.
# One attempt: a retried Invoke after a timeout would run the batch twice and count it once;
# a failed one is reported and its records stay for the next run.
LAMBDA_CONFIG = Config(
    read_timeout=900, connect_timeout=10, retries={"mode": "standard", "total_max_attempts": 1}
)


# Lambda's default BatchSize for Kafka, should a mapping not report its own.
DEFAULT_BATCH_SIZE = 100


class PlaceError(RuntimeError):
    """The stack cannot be found or read; the message says what to do."""


@dataclass
class Place:
    description: str
    functions: dict[str, str]  # logical id -> function name
    buckets: dict[str, str]  # logical id -> bucket name
    outputs: dict[str, str]
    lambda_client: Any
    s3: Any
    dynamodb: Any
    bootstrap_servers: str = ""
    api_key: Callable[[], str | None] = field(default=lambda: None)
    _environments: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    _mappings: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    def function(self, logical_id: str) -> str:
        try:
            return self.functions[logical_id]
        except KeyError:
            known = ", ".join(sorted(self.functions))
            raise PlaceError(
                f"{self.description} has no function {logical_id!r} ({known})"
            ) from None

    def bucket(self, logical_id: str) -> str:
        try:
            return self.buckets[logical_id]
        except KeyError:
            raise PlaceError(f"{self.description} has no bucket {logical_id!r}") from None

    def logical_id_of(self, function_name_or_arn: str) -> str | None:
        """The logical id of a function named by name or ARN (a qualifier is ignored)."""
        name = function_name_or_arn
        if ":function:" in name:
            name = name.split(":function:", 1)[1].split(":")[0]
        for logical_id, physical in self.functions.items():
            if name == physical:
                return logical_id
        return None

    def environment(self, logical_id: str) -> dict[str, str]:
        """The function's environment, as Lambda reports it (asked once per function, and only
        for the functions a command uses: the IAM policy names those)."""
        if logical_id not in self._environments:
            configuration = self.lambda_client.get_function_configuration(
                FunctionName=self.function(logical_id)
            )
            self._environments[logical_id] = dict(
                configuration.get("Environment", {}).get("Variables", {})
            )
        return self._environments[logical_id]

    def mappings(self, logical_id: str) -> list[dict[str, Any]]:
        """The function's event-source mappings (BatchSize, EventSourceArn, State, ...)."""
        if logical_id not in self._mappings:
            found: list[dict[str, Any]] = []
            paginator = self.lambda_client.get_paginator("list_event_source_mappings")
            for page in paginator.paginate(FunctionName=self.function(logical_id)):
                found += page.get("EventSourceMappings", [])
            self._mappings[logical_id] = found
        return self._mappings[logical_id]

    def delivery(self, logical_id: str) -> tuple[int, str] | None:
        """How the function's mapping delivers: its batch size and event source ARN (None
        without a mapping). Replays and redrives send what its deliveries would look like."""
        mappings = self.mappings(logical_id)
        if not mappings:
            return None
        size = int(mappings[0].get("BatchSize") or DEFAULT_BATCH_SIZE)
        return size, str(mappings[0].get("EventSourceArn", ""))

    def consumers(self) -> list[str]:
        """The functions with an event-source mapping: the only ones a replay or a redrive
        hands records to, and so the only ones whose configuration it reads."""
        return [logical_id for logical_id in self.functions if self.mappings(logical_id)]


def in_aws(stack: str, region: str | None) -> Place:
    """The CloudFormation stack `stack`: its resources' physical ids and its outputs."""
    session = boto3.Session(region_name=region)
    cloudformation = session.client("cloudformation")
    try:
        described = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
        resources: list[Any] = []
        for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack):
            resources += page["StackResourceSummaries"]
    except Exception as exc:
        raise PlaceError(f"cannot read stack {stack!r}: {exc}") from exc
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    by_type: dict[str, dict[str, str]] = {}
    for resource in resources:
        by_type.setdefault(resource["ResourceType"], {})[resource["LogicalResourceId"]] = resource[
            "PhysicalResourceId"
        ]
    apigateway = session.client("apigateway")

    def api_key() -> str | None:
        key_id = outputs.get("ApiKeyId")
        if not key_id:
            return None
        value: str = apigateway.get_api_key(apiKey=key_id, includeValue=True)["value"]
        return value

    return Place(
        description=f"stack {stack} ({session.region_name})",
        functions=by_type.get("AWS::Lambda::Function", {}),
        buckets=by_type.get("AWS::S3::Bucket", {}),
        outputs=outputs,
        lambda_client=session.client("lambda", config=LAMBDA_CONFIG),
        s3=session.client("s3"),
        dynamodb=session.client("dynamodb"),
        bootstrap_servers=outputs.get("BootstrapServers", ""),
        api_key=api_key,
    )


def local() -> Place:
    """The stack `make run` started (devstack/.state/stack.json)."""
    from devstack.stack import StackError, running_stack

    try:
        info = running_stack()
    except StackError as exc:
        raise PlaceError(str(exc)) from exc
    if info is None:
        raise PlaceError("no local stack is running: start one with `make run`")
    return of_local_stack(info)


def of_local_stack(info: StackInfo) -> Place:
    """A local stack, from what it wrote to stack.json."""
    from devstack import aws
    from devstack.template import REGION

    lambda_client = boto3.client(
        "lambda",
        endpoint_url=info.lambda_endpoint,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 -- the local stack takes any credentials
        config=LAMBDA_CONFIG,
    )
    return Place(
        description="the local stack",
        functions=dict(info.functions),
        buckets=dict(info.buckets),
        outputs={"ApiUrl": f"{info.api_url.rstrip('/')}/orders"},
        lambda_client=lambda_client,
        s3=aws.client("s3", info.aws_endpoint),
        dynamodb=aws.client("dynamodb", info.aws_endpoint),
        bootstrap_servers=info.bootstrap_servers,
    )
