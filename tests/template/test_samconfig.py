"""samconfig.toml: every environment deploys a distinct stack, in a named region, with every
parameter named, read the way SAM CLI reads it."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

from devstack.template import ROOT, load_template, parameter_errors

ENVIRONMENTS = ["default", "dev", "prod", "provisioned", "existing"]
CLUSTER_TYPES = {"default": "serverless", "dev": "serverless", "prod": "serverless"} | {
    "provisioned": "provisioned",
    "existing": "existing",
}
SAMPLE_SENDER = "orders@example.com"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return tomllib.loads((ROOT / "samconfig.toml").read_text())


def overrides(deploy: dict[str, Any]) -> dict[str, str]:
    """parameter_overrides as `sam deploy` parses it (its own click type)."""
    from samcli.cli.types import CfnParameterOverridesType

    value = deploy["parameter_overrides"]
    parsed: dict[str, str] = CfnParameterOverridesType().convert(
        value if isinstance(value, list) else [value], None, None
    )
    return parsed


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_environment_is_complete(config: dict[str, Any], env: str) -> None:
    """`sam deploy` sends the previous value of every parameter the list leaves out (or the
    default on a new stack): each environment names them all, so this file is the whole truth."""
    parameters = load_template()["Parameters"]
    deploy = config[env]["deploy"]["parameters"]
    named = overrides(deploy)
    assert set(named) == set(parameters), f"{env}: {set(parameters) ^ set(named)}"
    assert config[env]["global"]["parameters"]["region"]
    assert config[env]["global"]["parameters"]["stack_name"] == f"orderstream-{named['Stage']}"
    assert deploy["resolve_s3"] is True
    # IAM roles, and the AWS::LanguageExtensions macro (compatible whether or not a change set
    # of it needs the acknowledgement).
    assert set(deploy["capabilities"].split()) == {"CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"}
    assert config[env]["build"]["parameters"] == {"cached": True, "parallel": True}
    # sam build uses the template's default architecture: a different one here would deploy
    # code built for another CPU.
    assert named["Architecture"] == parameters["Architecture"]["Default"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_only_the_sample_sender_stands_between_the_file_and_a_deploy(
    config: dict[str, Any], env: str
) -> None:
    """CloudFormation's own checks (allowed values, patterns, rules) pass once SenderEmail is
    a real identity; with the sample, the template's rule refuses the deploy before it starts."""
    template = load_template()
    named = overrides(config[env]["deploy"]["parameters"])
    assert named["ClusterType"] == CLUSTER_TYPES[env]
    if named["SenderEmail"] == SAMPLE_SENDER:  # as checked in; a user's own copy passes
        refused = parameter_errors(template, named)
        assert any("SenderIsNotTheSample" in r for r in refused), refused
        if env == "existing":  # and the four values only the user knows, each refused by name
            needs = ["ExistingClusterArn", "ExistingClientSecurityGroupId", "ExistingVpcId"]
            assert all(any(n in r for r in refused) for n in needs), refused
            assert len(refused) == 5, refused
        else:
            assert len(refused) == 1, refused
        named["SenderEmail"] = "orders@shop.example"
        named |= commented_examples(env)
    assert parameter_errors(template, named) == []


def commented_examples(env: str) -> dict[str, str]:
    """The `# "Name=value"` examples written above an environment's empty values."""
    text = (ROOT / "samconfig.toml").read_text()
    section = text[text.index(f"[{env}.deploy.parameters]") :]
    section = section[: section.index("\ntags")]
    return dict(re.findall(r'#.*?"(Existing\w+)=([^"]+)"', section))


def test_prod_is_separate_and_confirms_changesets(config: dict[str, Any]) -> None:
    prod = config["prod"]["deploy"]["parameters"]
    assert prod["confirm_changeset"] is True
    named = overrides(prod)
    assert named["Stage"] == "prod"
    assert named["EmailRedirectTo"] == ""  # production mails real customers
    names = {config[e]["global"]["parameters"]["stack_name"] for e in ENVIRONMENTS}
    assert names == {
        "orderstream-dev",
        "orderstream-prod",
        "orderstream-dev-provisioned",
        "orderstream-dev-existing",
    }
    # Two stacks of one account and region must not both own its API Gateway logging role.
    owners = [
        e
        for e in ENVIRONMENTS[1:]
        if overrides(config[e]["deploy"]["parameters"])["ApiGatewayLogging"]
        == "create-account-role"
    ]
    assert len(owners) <= 1


def test_a_command_line_list_without_stage_cannot_deploy(config: dict[str, Any]) -> None:
    """`--parameter-overrides` replaces this file's list; without Stage the deploy fails."""
    template = load_template()
    errors = parameter_errors(template, {"SenderEmail": "orders@shop.example"})
    assert errors == ["Stage: must have a value"]
