"""samconfig.toml: every environment deploys a distinct stack with parameters the template has."""

from __future__ import annotations

import shlex
import tomllib
from typing import Any

import pytest

from devstack.template import ROOT, load_template

ENVIRONMENTS = ["default", "dev", "prod"]


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return tomllib.loads((ROOT / "samconfig.toml").read_text())


def overrides(deploy: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(deploy["parameter_overrides"]))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_environment_is_complete(config: dict[str, Any], env: str) -> None:
    parameters = load_template()["Parameters"]
    deploy = config[env]["deploy"]["parameters"]
    assert config[env]["global"]["parameters"]["stack_name"].startswith("orderstream-")
    assert deploy["resolve_s3"] is True
    assert "CAPABILITY_IAM" in deploy["capabilities"]
    assert config[env]["build"]["parameters"] == {"cached": True, "parallel": True}
    for name in overrides(deploy):
        assert name in parameters, f"{env}: {name} is not a template parameter"
    stage = overrides(deploy)["Stage"]
    assert config[env]["global"]["parameters"]["stack_name"] == f"orderstream-{stage}"


def test_prod_is_separate_and_confirms_changesets(config: dict[str, Any]) -> None:
    prod = config["prod"]["deploy"]["parameters"]
    assert prod["confirm_changeset"] is True
    assert overrides(prod)["Stage"] == "prod"
    assert "EmailRedirectTo" not in overrides(prod)  # production mails real customers
    names = {config[e]["global"]["parameters"]["stack_name"] for e in ENVIRONMENTS}
    assert names == {"orderstream-dev", "orderstream-prod"}
