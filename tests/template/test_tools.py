"""The template passes every offline judge: cfn-lint, sam validate --lint, checkov, sam build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.template import REGION, ROOT, load_template
from tests.template.modes import ONE_PER_TYPE, SENDER

TEMPLATE = ROOT / "template.yaml"
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = VENV_BIN / name
    assert path.exists(), f"{name} is not installed in {VENV_BIN}: run `make venv`"
    return str(path)


def env() -> dict[str, str]:
    # sam build needs python3.13 on PATH: the venv's own interpreter.
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "AWS_DEFAULT_REGION": REGION,
        "SAM_CLI_TELEMETRY": "0",
    }


def run(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def deployment(mode: dict[str, str]) -> dict[str, str]:
    return {"Stage": "dev", "SenderEmail": SENDER, **mode}


def test_cfn_lint_is_clean() -> None:
    result = run(tool("cfn-lint"), str(TEMPLATE))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("mode", ONE_PER_TYPE)
def test_cfn_lint_is_clean_for_each_cluster_type(mode: dict[str, str]) -> None:
    values = [f"{k}={v}" for k, v in deployment(mode).items()]
    result = run(tool("cfn-lint"), str(TEMPLATE), "--parameters", *values)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("mode", ONE_PER_TYPE)
def test_sam_validate_lint_is_clean_for_each_cluster_type(
    mode: dict[str, str], tmp_path: Path
) -> None:
    """sam validate takes no parameter values: each type's values become the defaults of a
    copy (its code folders made absolute), so its translation and lint see that type."""
    template = load_template()
    for name, value in deployment(mode).items():
        template["Parameters"][name]["Default"] = value
    for resource in template["Resources"].values():
        for key in ("CodeUri", "ContentUri"):
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = str(ROOT / resource["Properties"][key])
    copy = tmp_path / "template.json"
    copy.write_text(json.dumps(template))
    result = run(tool("sam"), "validate", "--lint", "--template-file", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_checkov_finds_nothing_that_is_not_skipped_with_a_reason() -> None:
    checkov = ROOT / ".venv-checkov" / "bin" / "checkov"
    assert checkov.exists(), "checkov has its own venv: run `make venv`"
    result = run(
        str(checkov),
        "-f",
        str(TEMPLATE),
        "--framework",
        "cloudformation",
        "--compact",
        "--skip-download",
        "-o",
        "json",
    )
    report = json.loads(result.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 30  # it really looked at the resources
    for skipped in report["results"]["skipped_checks"]:
        comment = skipped["check_result"].get("suppress_comment") or ""
        assert len(comment) > 15, (
            f"{skipped['check_id']} on {skipped['resource']} is skipped without a reason"
        )


@pytest.mark.slow
def test_sam_build_puts_shared_code_in_the_layer_only(sam_build: Path) -> None:
    """Each function's build folder holds its own code; the layer holds the package and every
    dependency. (tests/e2e/test_invoke.py runs each built function as Lambda would.)"""
    layer = next(p for p in sam_build.iterdir() if p.name.startswith("SharedLayer")) / "python"
    assert (layer / "orderstream" / "events.py").is_file()
    for package in ("pydantic", "aws_lambda_powertools", "kafka", "boto3", "email_validator"):
        assert (layer / package).is_dir(), f"{package} missing from the layer"
    functions = [
        name
        for name, r in load_template()["Resources"].items()
        if r["Type"] == "AWS::Serverless::Function"
    ]
    for name in functions:
        code = sam_build / name
        assert (code / "app.py").is_file(), name
        assert not (code / "pydantic").exists(), name
        assert not (code / "orderstream").exists(), name
