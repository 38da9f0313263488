"""CloudFormation's decisions about a transformed template, replayed offline.

What the rehearsal relies on, each from AWS's own documentation or data:
- Order: "if the properties of resource A use a !Ref to resource B: B is created before A, A is
  deleted before B" (DependsOn attribute, CloudFormation template reference), and so for
  !GetAtt, !Sub and DependsOn. CloudFormation runs everything else in parallel, in any order,
  so only the transitive closure of these edges is a guarantee. A reference inside an Fn::If
  counts only in the branch the deployment's parameters take. References in Metadata are left
  out: they order resources in practice, but no AWS guide says so, and nothing here relies on it.
- Replacement: a change to a createOnlyProperties property replaces the resource (the resource
  provider schemas that cfn-lint ships, the registry's own data). A resource whose physical
  id changes makes every property that references it change too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources as package_files
from typing import Any

from devstack.template import REGION, Resolver

PSEUDO = re.compile(r"^AWS::")


@cache
def _schema_index() -> Mapping[str, str]:
    providers = package_files.files("cfnlint.data.schemas.providers")
    index: Mapping[str, str] = json.loads(providers.joinpath(f"{REGION}.json").read_text())
    return index


@cache
def create_only_properties(resource_type: str) -> list[tuple[str, ...]]:
    """The property paths whose change replaces a resource of this type."""
    if resource_type.startswith("Custom::"):
        resource_type = "AWS::CloudFormation::CustomResource"
    digest = _schema_index().get(resource_type)
    if digest is None:
        raise KeyError(f"no provider schema for {resource_type}")
    schemas = package_files.files("cfnlint.data.schemas.resources")
    schema = json.loads(schemas.joinpath(f"{digest}.json").read_text())
    return [
        tuple(path.split("/")[2:])
        for path in schema.get("createOnlyProperties", [])
        if path.startswith("/properties/")
    ]


def property_at(properties: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = properties
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


@dataclass
class Stack:
    """One deployment of a transformed template: its parameters decide conditions and branches."""

    template: Mapping[str, Any]
    parameters: Mapping[str, str]

    @cached_property
    def conditions(self) -> Resolver:
        return Resolver(self.template, self.parameters)

    @cached_property
    def resources(self) -> dict[str, dict[str, Any]]:
        """The resources this deployment creates (their Condition, if any, holds)."""
        return {
            name: resource
            for name, resource in self.template["Resources"].items()
            if "Condition" not in resource or self.conditions.condition(resource["Condition"])
        }

    @cached_property
    def values(self) -> Resolver:
        """Resolves a property with every resource standing for its logical id."""
        names = {name: name for name in self.template["Resources"]}
        attributes = {
            f"{name}.{attribute}": f"{name}.{attribute}"
            for name in self.template["Resources"]
            for attribute in ("Arn", "GroupId", "BootstrapServers", "ClusterArn", "Id")
        }
        return Resolver(self.template, self.parameters, names, attributes)

    def references(self, node: Any) -> set[str]:
        """Resources a value refers to, through Ref, GetAtt and Sub, in taken branches only."""
        found: set[str] = set()
        if isinstance(node, list):
            for item in node:
                found |= self.references(item)
        elif isinstance(node, dict):
            if len(node) == 1:
                [(key, arg)] = node.items()
                if key == "Ref":
                    return {arg} if arg in self.template["Resources"] else set()
                if key == "Fn::GetAtt":
                    name = arg[0] if isinstance(arg, list) else str(arg).split(".")[0]
                    return {name}
                if key == "Fn::If":
                    condition, then, otherwise = arg
                    taken = then if self.conditions.condition(condition) else otherwise
                    return self.references(taken)
                if key == "Fn::Sub":
                    text, local = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                    for variable in re.findall(r"\$\{([^}!][^}]*)\}", text):
                        name = variable.split(".")[0]
                        if name not in local and name in self.template["Resources"]:
                            found.add(name)
                    return found | self.references(list(local.values()))
            for value in node.values():
                found |= self.references(value)
        return found

    def dependencies(self, name: str) -> set[str]:
        resource = self.resources[name]
        depends_on = resource.get("DependsOn", [])
        explicit = {depends_on} if isinstance(depends_on, str) else set(depends_on)
        found = explicit | self.references(resource.get("Properties", {}))
        missing = found - set(self.resources)
        if missing:
            raise ValueError(f"{name} refers to resources this deployment lacks: {missing}")
        return found

    @cached_property
    def edges(self) -> dict[str, set[str]]:
        return {name: self.dependencies(name) for name in self.resources}

    def ancestors(self, name: str) -> set[str]:
        """Everything created before `name` and deleted after it, whatever the parallelism."""
        seen: set[str] = set()
        pending = list(self.edges[name])
        while pending:
            current = pending.pop()
            if current not in seen:
                seen.add(current)
                pending.extend(self.edges[current])
        return seen

    def create_order(self) -> list[str]:
        """One order CloudFormation may create in (it raises on a cycle, as CloudFormation does)."""
        done: list[str] = []
        remaining = dict(self.edges)
        while remaining:
            ready = sorted(n for n, deps in remaining.items() if deps <= set(done))
            if not ready:
                raise ValueError(f"circular dependency among {sorted(remaining)}")
            done.extend(ready)
            for n in ready:
                del remaining[n]
        return done

    def kept(self) -> set[str]:
        """What a stack deletion leaves in the account (DeletionPolicy Retain)."""
        return {
            name
            for name, resource in self.resources.items()
            if resource.get("DeletionPolicy") in ("Retain", "RetainExceptOnCreate", "Snapshot")
        }

    def delete_waves(self) -> list[set[str]]:
        """A stack deletion, wave by wave, each as parallel as CloudFormation may run it: a
        resource leaves once nothing that depends on it remains."""
        remaining = set(self.resources)
        waves: list[set[str]] = []
        while remaining:
            wave = {
                name
                for name in remaining
                if not any(name in self.edges[other] for other in remaining - {name})
            }
            if not wave:
                raise ValueError(f"circular dependency among {sorted(remaining)}")
            waves.append(wave)
            remaining -= wave
        return waves

    def of_type(self, *kinds: str) -> dict[str, dict[str, Any]]:
        return {n: r for n, r in self.resources.items() if r["Type"] in kinds}

    def resolved(self, name: str, *path: str) -> Any:
        return self.values.resolve(property_at(self.resources[name].get("Properties", {}), path))

    # ------------------------------------------------------------------ what runs, and needs

    def role_actions(self, function: str) -> set[str]:
        role = self.references(self.resources[function]["Properties"]["Role"])
        actions: set[str] = set()
        for role_name in role:
            for policy in self.resources[role_name]["Properties"].get("Policies", []):
                for statement in policy["PolicyDocument"]["Statement"]:
                    action = statement["Action"]
                    actions |= {action} if isinstance(action, str) else set(action)
        return actions

    def in_vpc(self, function: str) -> bool:
        return "VpcConfig" in self.resources[function]["Properties"]

    def custom_resources(self) -> dict[str, str]:
        """Custom resource -> the function that serves it."""
        served: dict[str, str] = {}
        for name, resource in self.resources.items():
            if resource["Type"].startswith("Custom::"):
                [function] = self.references(resource["Properties"]["ServiceToken"])
                served[name] = function
        return served

    CLUSTER_TYPES = ("AWS::MSK::ServerlessCluster", "AWS::MSK::Cluster")
    LOOKUP = "KafkaBootstrapBrokers"  # the custom resource that names the cluster

    def cluster(self) -> str | None:
        """The cluster resource this deployment uses, or None for a cluster the user runs."""
        chosen = self.resolved(self.LOOKUP, "ClusterArn")
        if chosen in self.resources:
            assert self.resources[chosen]["Type"] in self.CLUSTER_TYPES, chosen
            return str(chosen)
        assert not self.of_type(*self.CLUSTER_TYPES), "a cluster is created but not used"
        return None

    def cluster_network(self) -> tuple[list[str], list[str]]:
        """The created cluster's subnets and security groups (the pollers use them too); none
        for a cluster the user runs (its network is theirs)."""
        cluster = self.cluster()
        if cluster is None:
            return [], []
        if self.resources[cluster]["Type"] == "AWS::MSK::ServerlessCluster":
            config = self.resolved(cluster, "VpcConfigs")[0]
            return config["SubnetIds"], config["SecurityGroups"]
        brokers = self.resolved(cluster, "BrokerNodeGroupInfo")
        return brokers["ClientSubnets"], brokers["SecurityGroups"]

    def kafka_mappings(self) -> dict[str, dict[str, Any]]:
        sources = {f"{self.LOOKUP}.ClusterArn", *self.of_type(*self.CLUSTER_TYPES)}
        return {
            name: resource
            for name, resource in self.of_type("AWS::Lambda::EventSourceMapping").items()
            if self.resolved(name, "EventSourceArn") in sources
        }

    def route_to(self, service: str, subnets: list[str]) -> set[str]:
        """The stack's resources that carry traffic from these subnets to an AWS service's
        gateway endpoint: the endpoint, each subnet's route-table association, the table.
        Empty for subnets the stack does not own (their routes are the user's prerequisite);
        raises when an owned subnet has no route."""
        owned = [s for s in subnets if s in self.resources]
        if not owned:
            return set()
        wanted = f"com.amazonaws.{REGION}.{service}"
        needed: set[str] = set()
        for subnet in owned:
            tables = {
                str(self.resolved(a, "RouteTableId")): a
                for a in self.of_type("AWS::EC2::SubnetRouteTableAssociation")
                if self.resolved(a, "SubnetId") == subnet
            }
            endpoints = [
                e
                for e in self.of_type("AWS::EC2::VPCEndpoint")
                if self.resolved(e, "ServiceName") == wanted
                and self.resolved(e, "VpcEndpointType") == "Gateway"
                and set(self.resolved(e, "RouteTableIds") or []) & set(tables)
            ]
            if not endpoints:
                raise LookupError(f"no route from {subnet} to {service}")
            endpoint = endpoints[0]
            table = next(t for t in self.resolved(endpoint, "RouteTableIds") if t in tables)
            needed |= {endpoint, tables[table], table}
        return needed

    def kafka_port_rules(self, clients: list[str], cluster_groups: list[str]) -> set[str]:
        """The stack's security-group rules that let these groups reach the cluster on 9098.
        Empty when the stack owns none of the groups (a cluster the user runs: its rules are
        the user's prerequisite); raises when it owns some and no rule joins them."""
        if not set(clients + cluster_groups) & set(self.resources):
            return set()

        def allows(
            rule: str, group_key: str, peer_key: str, own: list[str], peers: list[str]
        ) -> bool:
            return (
                self.resolved(rule, group_key) in own
                and self.resolved(rule, peer_key) in peers
                and self.resolved(rule, "IpProtocol") in ("tcp", "-1")
                and int(self.resolved(rule, "FromPort"))
                <= 9098
                <= int(self.resolved(rule, "ToPort"))
            )

        ingress = [
            r
            for r in self.of_type("AWS::EC2::SecurityGroupIngress")
            if allows(r, "GroupId", "SourceSecurityGroupId", cluster_groups, clients)
        ]
        egress = [
            r
            for r in self.of_type("AWS::EC2::SecurityGroupEgress")
            if allows(r, "GroupId", "DestinationSecurityGroupId", clients, cluster_groups)
        ]
        if not ingress or not egress:
            raise LookupError(f"no 9098 rules between {clients} and {cluster_groups}")
        return {ingress[0], egress[0]}

    def network_needs(self) -> Iterator[tuple[str, str, set[str]]]:
        """(who, why, the resources that must be created before it and deleted after it) for
        every function in the VPC, every custom resource a VPC function serves, and every
        Kafka mapping (whose pollers run in the cluster's subnets with its security groups)."""
        cluster = self.cluster()
        cluster_subnets, cluster_groups = self.cluster_network()
        served = self.custom_resources()
        for function in self.of_type("AWS::Lambda::Function"):
            if not self.in_vpc(function):
                continue
            subnets = self.resolved(function, "VpcConfig", "SubnetIds")
            groups = self.resolved(function, "VpcConfig", "SecurityGroupIds")
            actions = self.role_actions(function)
            services = {a.split(":")[0] for a in actions}
            # A VPC function's invokers: the custom resources it serves, or itself.
            anchors = [cr for cr, f in served.items() if f == function] or [function]
            for anchor in anchors:
                needs: set[str] = set()
                if anchor in served:
                    needs |= self.route_to("s3", subnets)  # the answer to CloudFormation
                for service in sorted(services - {"kafka-cluster", "logs", "xray"}):
                    if service not in ("s3", "dynamodb"):
                        raise LookupError(
                            f"{function} in the VPC calls {service}, which has no gateway endpoint"
                        )
                    needs |= self.route_to(service, subnets)
                if "kafka-cluster" in services:
                    needs |= self.kafka_port_rules(groups, cluster_groups)
                yield anchor, f"{function} in the VPC ({', '.join(sorted(services))})", needs
        for mapping, resource in self.kafka_mappings().items():
            props = resource["Properties"]
            if "ProvisionedPollerConfig" not in props:
                raise LookupError(f"{mapping}: on-demand pollers need Lambda and STS endpoints")
            needs = self.kafka_port_rules(cluster_groups, cluster_groups)
            destination = self.values.resolve(
                property_at(props, ("DestinationConfig", "OnFailure", "Destination"))
            )
            if (
                destination
                and self.resources.get(str(destination).split(".")[0], {}).get("Type")
                == "AWS::S3::Bucket"
            ):
                needs |= self.route_to("s3", cluster_subnets)  # failed batches to the bucket
            needs |= {self.LOOKUP, *([cluster] if cluster else [])}
            if destination:
                needs.add(str(destination).split(".")[0])
            [function] = self.references(props["FunctionName"])
            needs.add(function)
            yield mapping, f"{mapping} pollers (provisioned mode)", needs


def replaced_by(stack: Stack, parameter: str) -> set[str]:
    """The resources an update of `parameter` alone would replace (an over-approximation:
    anything whose create-only properties mention it, directly or through a replaced resource)."""
    mentions_parameter = {
        name: _mentions(stack.template, resource.get("Properties", {}), parameter)
        for name, resource in stack.template["Resources"].items()
    }
    replaced: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, resource in stack.template["Resources"].items():
            if name in replaced:
                continue
            props = resource.get("Properties", {})
            for path in create_only_properties(resource["Type"]):
                value = property_at(props, path)
                if value is None:
                    continue
                direct = mentions_parameter[name] and _mentions(stack.template, value, parameter)
                if direct or stack.references(value) & replaced:
                    replaced.add(name)
                else:
                    continue
                changed = True
                break
    return replaced


def value_changes(stack: Stack, value: Any, parameter: str, replaced: set[str]) -> bool:
    return _mentions(stack.template, value, parameter) or bool(
        _all_references(stack.template, value) & replaced
    )


def _all_references(template: Mapping[str, Any], node: Any) -> set[str]:
    """Resource references in every branch (a name may change through either)."""
    found: set[str] = set()
    text = json.dumps(node)
    for name in template["Resources"]:
        if (
            f'{{"Ref": "{name}"}}' in text
            or f'"Fn::GetAtt": ["{name}"' in text
            or re.search(r"\$\{" + re.escape(name) + r"[.}]", text)
        ):
            found.add(name)
    return found


def _mentions(template: Mapping[str, Any], node: Any, parameter: str) -> bool:
    """Whether a value can change with a parameter: a Ref, a ${} in a Sub, or a condition."""
    text = json.dumps(node)
    if f'{{"Ref": "{parameter}"}}' in text or "${" + parameter + "}" in text:
        return True
    conditions = template.get("Conditions", {})
    for condition in re.findall(r'"Fn::If": \["([^"]+)"', text):
        if _condition_mentions(conditions, condition, parameter, set()):
            return True
    return False


def _condition_mentions(
    conditions: Mapping[str, Any], name: str, parameter: str, seen: set[str]
) -> bool:
    if name in seen:
        return False
    seen.add(name)
    text = json.dumps(conditions[name])
    if f'{{"Ref": "{parameter}"}}' in text:
        return True
    return any(
        _condition_mentions(conditions, other, parameter, seen)
        for other in re.findall(r'\{"Condition": "([^"]+)"\}', text)
    )
