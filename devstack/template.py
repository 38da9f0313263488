"""template.yaml as data: loaded, transformed by SAM's own translator, intrinsics resolved.

The template tests assert on the transformed template; the local stack reads functions, events
and environments from it, so what runs locally is what template.yaml declares. `Resolver` is
ours rather than SAM CLI's: see docs/design.md, "Ours or a library's".
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"

ACCOUNT_ID = "123456789012"
REGION = "eu-west-1"
ARTIFACT_BUCKET = "sam-artifacts"


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template with short-form intrinsics (!Ref, !Sub...) as their long forms."""
    from samcli.yamlhelper import yaml_parse

    parsed: dict[str, Any] = yaml_parse(path.read_text())
    return parsed


class _NoManagedPolicyLookups:
    """SAM asks IAM for managed-policy ARNs only when given policy *names*; we never do."""

    def load(self) -> dict[str, str]:
        raise AssertionError("template.yaml must name managed policies by ARN or SAM template")


LANGUAGE_EXTENSIONS = "AWS::LanguageExtensions"
SERVERLESS = "AWS::Serverless-2016-10-31"
POLICY_ATTRIBUTES = ("DeletionPolicy", "UpdateReplacePolicy")
POLICY_VALUES = {
    "DeletionPolicy": {"Delete", "Retain", "RetainExceptOnCreate", "Snapshot"},
    "UpdateReplacePolicy": {"Delete", "Retain", "Snapshot"},
}
# Functions only the LanguageExtensions transform knows. We use none of them; an offline reader
# that passed them through would be testing a template CloudFormation never sees.
UNSUPPORTED_EXTENSIONS = ("Fn::ForEach", "Fn::Length", "Fn::ToJsonString")


def transforms(template: Mapping[str, Any]) -> list[str]:
    declared = template.get("Transform", [])
    return [declared] if isinstance(declared, str) else list(declared)


def apply_language_extensions(
    template: Mapping[str, Any], parameters: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """What CloudFormation's AWS::LanguageExtensions transform makes of this template.

    It runs before SAM's and, for the part of it we use, resolves intrinsic functions in
    DeletionPolicy and UpdateReplacePolicy against the deployment's parameters ("Intrinsic
    function references in DeletionPolicy and UpdateReplacePolicy attributes", CloudFormation
    user guide). The result must be one of the attribute's documented values.
    """
    result = copy.deepcopy(dict(template))
    declared = transforms(result)
    if LANGUAGE_EXTENSIONS not in declared:
        return result
    if declared[0] != LANGUAGE_EXTENSIONS:
        raise ValueError(f"{LANGUAGE_EXTENSIONS} must be the first transform")
    _refuse_unsupported(result)
    resolver = Resolver(result, parameters)
    for logical_id, resource in result.get("Resources", {}).items():
        for attribute in POLICY_ATTRIBUTES:
            value = resource.get(attribute)
            if value is None or isinstance(value, str):
                continue
            resolved = resolver.resolve(value)
            if resolved not in POLICY_VALUES[attribute]:
                raise ValueError(f"{logical_id}.{attribute} resolves to {resolved!r}")
            resource[attribute] = resolved
    rest = declared[1:]
    if rest:
        result["Transform"] = rest[0] if len(rest) == 1 else rest
    else:
        del result["Transform"]
    return result


def _refuse_unsupported(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _refuse_unsupported(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if str(key).startswith(UNSUPPORTED_EXTENSIONS):
                raise ValueError(f"{key} is not understood offline: teach devstack.template")
            _refuse_unsupported(value)


def transform(
    template: Mapping[str, Any], parameters: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """What CloudFormation receives after its transforms (LanguageExtensions, then SAM's)."""
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    values = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT_ID, **(parameters or {})}
    packaged = apply_language_extensions(template, parameters)
    # As `sam package` would: local code folders become S3 URIs (named after the folder).
    for resource in packaged["Resources"].values():
        properties = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str) and not properties[key].startswith("s3://"):
                properties[key] = f"s3://{ARTIFACT_BUCKET}/{properties[key].strip('/')}"
    translator = Translator(None, Parser(), boto_session=boto3.Session(region_name=REGION))
    result: dict[str, Any] = translator.translate(
        packaged,
        parameter_values=values,
        get_managed_policy_map=_NoManagedPolicyLookups().load,
    )
    return result


def parameter_values(template: Mapping[str, Any], overrides: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, spec in template.get("Parameters", {}).items():
        value = overrides.get(name, spec.get("Default"))
        if value is None:
            raise KeyError(f"parameter {name} has no default: give it a value")
        if spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
            value = value.split(",")  # as CloudFormation: "" is [""], not []
        values[name] = value
    return values


class Resolver:
    """Evaluates intrinsic functions against known parameters, resources and attributes."""

    def __init__(
        self,
        template: Mapping[str, Any],
        parameters: Mapping[str, str] | None = None,
        refs: Mapping[str, Any] | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        self.template = template
        self.values: dict[str, Any] = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": "orderstream",
            "AWS::NoValue": None,
            **parameter_values(template, parameters or {}),
            **(refs or {}),
        }
        self.attributes = dict(attributes or {})  # "Logical.Attribute" -> value
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = bool(self.resolve(self.template["Conditions"][name]))
        return self._conditions[name]

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [r for r in (self.resolve(v) for v in value) if r is not None]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: r for k, v in value.items() if (r := self.resolve(v)) is not None}
        [(key, arg)] = value.items()
        match key:
            case "Ref":
                if arg not in self.values:
                    raise KeyError(f"cannot resolve Ref {arg}")
                return self.values[arg]
            case "Fn::GetAtt":
                name = ".".join(arg) if isinstance(arg, list) else arg
                if name not in self.attributes:
                    raise KeyError(f"cannot resolve GetAtt {name}")
                return self.attributes[name]
            case "Fn::FindInMap":
                mapping, top, second = (self.resolve(a) for a in arg)
                return self.template["Mappings"][mapping][top][second]
            case "Fn::Sub":
                text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                local = {k: self.resolve(v) for k, v in extra.items()}

                def substitute(match: re.Match[str]) -> str:
                    name = match.group(1)
                    if name.startswith("!"):
                        return "${" + name[1:] + "}"
                    if name in local:
                        return str(local[name])
                    if "." in name:
                        return str(self.resolve({"Fn::GetAtt": name}))
                    return str(self.resolve({"Ref": name}))

                return re.sub(r"\$\{([^}]+)\}", substitute, text)
            case "Fn::Join":
                separator, items = arg
                return separator.join(str(i) for i in self.resolve(items))
            case "Fn::Select":
                index, items = self.resolve(arg[0]), self.resolve(arg[1])
                return items[int(index)]
            case "Fn::Split":
                separator, text = arg
                return str(self.resolve(text)).split(separator)
            case "Fn::If":
                name, then, otherwise = arg
                return self.resolve(then if self.condition(name) else otherwise)
            case "Fn::Equals":
                left, right = (self.resolve(a) for a in arg)
                return str(left) == str(right)
            case "Fn::Not":
                return not self.resolve(arg[0])
            case "Fn::Contains":  # Rules only: [list of strings, string]
                items, item = (self.resolve(a) for a in arg)
                return str(item) in [str(i) for i in items]
            case "Fn::Or":
                return any(self.resolve(a) for a in arg)
            case "Fn::And":
                return all(self.resolve(a) for a in arg)
            case "Condition":
                return self.condition(arg)
            case "Fn::GetAZs":
                return [f"{REGION}{zone}" for zone in "abc"]
            case "Fn::Cidr":
                # As CloudFormation: `count` blocks of `bits` host bits, in order, from the start
                # of the block; an error when they do not fit.
                block, count, bits = (self.resolve(a) for a in arg)
                network = ipaddress.ip_network(str(block), strict=False)
                prefix = network.max_prefixlen - int(bits)
                if prefix < network.prefixlen:
                    raise ValueError(f"Fn::Cidr: /{prefix} subnets do not fit in {network}")
                subnets = list(itertools.islice(network.subnets(new_prefix=prefix), int(count)))
                if len(subnets) < int(count):
                    raise ValueError(f"Fn::Cidr: {count} /{prefix} subnets do not fit in {network}")
                return [str(s) for s in subnets]
        return {key: self.resolve(arg)}


def parameter_errors(template: Mapping[str, Any], overrides: Mapping[str, str]) -> list[str]:
    """What CloudFormation refuses before it creates anything: a parameter without a value, a
    value outside AllowedValues/AllowedPattern/MinValue/MaxValue, a failed Rules assertion."""
    errors: list[str] = []
    for name, spec in template.get("Parameters", {}).items():
        value = overrides.get(name, spec.get("Default"))
        if value is None:
            errors.append(f"{name}: must have a value")
            continue
        text = str(value)
        if "AllowedValues" in spec and text not in {str(v) for v in spec["AllowedValues"]}:
            errors.append(f"{name}: {text!r} is not one of {spec['AllowedValues']}")
        if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], text):
            errors.append(f"{name}: {text!r} does not match {spec['AllowedPattern']}")
        if spec.get("Type") == "Number":
            number = float(text)
            if "MinValue" in spec and number < float(spec["MinValue"]):
                errors.append(f"{name}: {text} is below {spec['MinValue']}")
            if "MaxValue" in spec and number > float(spec["MaxValue"]):
                errors.append(f"{name}: {text} is above {spec['MaxValue']}")
    if errors:
        return errors
    resolver = Resolver(template, overrides)
    for rule_name, rule in template.get("Rules", {}).items():
        if "RuleCondition" in rule and not resolver.resolve(rule["RuleCondition"]):
            continue
        for assertion in rule["Assertions"]:
            if not resolver.resolve(assertion["Assert"]):
                errors.append(f"rule {rule_name}: {assertion.get('AssertDescription', '')}")
    return errors
