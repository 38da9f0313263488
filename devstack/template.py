"""template.yaml as data: loaded, transformed by SAM's own translator, intrinsics resolved.

The template tests assert on the transformed template; the local stack reads functions, events
and environments from it, so what runs locally is what template.yaml declares.
"""

from __future__ import annotations

import copy
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


def transform(
    template: Mapping[str, Any], parameters: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """What CloudFormation receives after the AWS::Serverless transform, computed offline."""
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    values = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT_ID, **(parameters or {})}
    packaged = copy.deepcopy(dict(template))
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
        if spec.get("Type") == "CommaDelimitedList":
            value = [v for v in str(value).split(",") if v] if isinstance(value, str) else value
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
            case "Fn::Or":
                return any(self.resolve(a) for a in arg)
            case "Fn::And":
                return all(self.resolve(a) for a in arg)
            case "Condition":
                return self.condition(arg)
            case "Fn::GetAZs":
                return [f"{REGION}{zone}" for zone in "abc"]
            case "Fn::Cidr":
                raise KeyError("Fn::Cidr is not evaluated offline")
        return {key: self.resolve(arg)}
