"""Our intrinsic-function resolver (devstack.template.Resolver) against SAM CLI's, and against
the CloudFormation template reference where SAM CLI's departs from it.

Why ours exists at all: SAM CLI's IntrinsicResolver, the one maintained Python implementation,
is internal to aws-sam-cli and mis-evaluates four constructs this template uses (pinned below:
`Fn::Cidr` is missing, `${!Literal}` is kept as written, a `Fn::Sub` variable map leaves a `$`
behind, and `AWS::NoValue` in a `Fn::If` raises). Everywhere else the two must agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from samcli.lib.intrinsic_resolver.intrinsic_property_resolver import IntrinsicResolver
from samcli.lib.intrinsic_resolver.intrinsics_symbol_table import IntrinsicsSymbolTable

from devstack.template import (
    ACCOUNT_ID,
    REGION,
    Resolver,
    load_template,
    parameter_values,
    transform,
)
from tests.template.modes import MODES

PARAMETERS = {"Stage": "dev", "SenderEmail": "orders@shop.example"}
PSEUDO = {
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT_ID,
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "orderstream",
}


def samcli_cannot_evaluate(node: Any) -> bool:
    """The constructs SAM CLI's resolver gets wrong (see the tests at the end of this file)."""
    if isinstance(node, list):
        return any(samcli_cannot_evaluate(n) for n in node)
    if not isinstance(node, dict):
        return False
    if "Fn::Cidr" in node or node.get("Ref") == "AWS::NoValue":
        return True
    sub = node.get("Fn::Sub")
    if isinstance(sub, list) or (isinstance(sub, str) and "${!" in sub):
        return True
    return any(samcli_cannot_evaluate(v) for v in node.values())


def attribute_names(node: Any) -> Iterator[str]:
    """Every "Logical.Attribute" the template reads, by GetAtt or inside a Sub."""
    if isinstance(node, list):
        for item in node:
            yield from attribute_names(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "Fn::GetAtt":
                yield ".".join(value) if isinstance(value, list) else str(value)
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                yield from (n for n in re.findall(r"\$\{([^}!]+)\}", text) if "." in n)
            yield from attribute_names(value)


def both_resolvers(
    parameters: dict[str, str],
) -> tuple[dict[str, Any], Resolver, IntrinsicResolver]:
    template = transform(load_template(), parameters)  # as deployed: SAM's resources too
    refs = {name: f"{name}-physical" for name in template["Resources"]}
    attributes = {name: f"{name}-value" for name in attribute_names(template)}
    ours = Resolver(template, parameters, refs, attributes)
    translator: dict[str, Any] = {**PSEUDO, **parameter_values(template, parameters)}
    for name, ref in refs.items():
        translator[name] = {"Ref": ref}
    for name, value in attributes.items():
        logical_id, _, attribute = name.partition(".")
        translator.setdefault(logical_id, {})[attribute] = value
    table = IntrinsicsSymbolTable(template=template, logical_id_translator=translator)
    return template, ours, IntrinsicResolver(template=template, symbol_resolver=table)


@pytest.mark.parametrize("values", MODES)
def test_ours_and_sam_clis_agree_on_every_condition(values: dict[str, str]) -> None:
    template, ours, theirs = both_resolvers({**PARAMETERS, **values})
    assert template["Conditions"]
    for name in template["Conditions"]:
        expected = theirs.intrinsic_property_resolver({"Fn::If": [name, True, False]}, False)
        assert ours.condition(name) == expected, name


@pytest.mark.parametrize("values", MODES)
def test_ours_and_sam_clis_agree_on_every_resource_and_output_they_both_read(
    values: dict[str, str],
) -> None:
    template, ours, theirs = both_resolvers({**PARAMETERS, **values})
    sections = [("Resources", k, v.get("Properties", {})) for k, v in template["Resources"].items()]
    sections += [("Outputs", k, v) for k, v in template["Outputs"].items()]
    compared = []
    for section, name, body in sections:
        if samcli_cannot_evaluate(body):
            continue
        assert ours.resolve(body) == theirs.intrinsic_property_resolver(body, False), (
            f"{section}.{name}"
        )
        compared.append(name)
    assert len(compared) > 50  # most of the template, not a lucky few
    assert {"OrderApiFunction", "S3ArchiverFunction", "KafkaTopics"} <= set(compared)


# What the CloudFormation template reference says, where SAM CLI's resolver says otherwise.


@pytest.fixture
def resolver() -> Resolver:
    template = {
        "Parameters": {"SenderEmail": {"Type": "String"}, "Flag": {"Type": "String"}},
        "Conditions": {"On": {"Fn::Equals": [{"Ref": "Flag"}, "on"]}},
        "Resources": {},
    }
    return Resolver(template, {"SenderEmail": "orders@shop.example", "Flag": "off"})


def test_sub_writes_an_exclamation_marked_variable_literally(resolver: Resolver) -> None:
    """Fn::Sub: "${!Literal}" resolves as "${Literal}"."""
    assert resolver.resolve({"Fn::Sub": "year=${!year}/x=${SenderEmail}"}) == (
        "year=${year}/x=orders@shop.example"
    )


def test_sub_takes_variables_from_its_map_before_the_template(resolver: Resolver) -> None:
    domain = {"Fn::Select": [1, {"Fn::Split": ["@", {"Ref": "SenderEmail"}]}]}
    sub = {"Fn::Sub": ["identity/${Domain} ${AWS::Region}", {"Domain": domain}]}
    assert resolver.resolve(sub) == f"identity/shop.example {REGION}"


def test_cidr_carves_count_blocks_of_the_given_host_bits_in_order(resolver: Resolver) -> None:
    """Fn::Cidr: cidrBits 8 in an IPv4 block gives /24 subnets, from the block's start."""
    assert resolver.resolve({"Fn::Cidr": ["192.168.0.0/16", 3, 8]}) == [
        "192.168.0.0/24",
        "192.168.1.0/24",
        "192.168.2.0/24",
    ]
    with pytest.raises(ValueError, match="do not fit"):
        resolver.resolve({"Fn::Cidr": ["10.0.0.0/24", 3, 8]})


def test_no_value_in_an_if_removes_the_property(resolver: Resolver) -> None:
    body = {"Kept": "yes", "Gone": {"Fn::If": ["On", "on", {"Ref": "AWS::NoValue"}]}}
    assert resolver.resolve(body) == {"Kept": "yes"}
    listed = ["a", {"Fn::If": ["On", "b", {"Ref": "AWS::NoValue"}]}]
    assert resolver.resolve(listed) == ["a"]
