"""The template passes every offline judge: cfn-lint, sam validate --lint, checkov, sam build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.template import REGION, ROOT, load_template

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


def test_cfn_lint_is_clean() -> None:
    result = run(tool("cfn-lint"), str(TEMPLATE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_sam_validate_lint_is_clean() -> None:
    result = run(tool("sam"), "validate", "--lint", "--template-file", str(TEMPLATE))
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
def test_sam_build_and_every_handler_imports_from_its_build_output(tmp_path: Path) -> None:
    """sam build as a user runs it; then each handler module is imported in a fresh interpreter
    with only its build folder and the layer on the path, as Lambda would, so a dependency
    missing from the layer's requirements fails here rather than in AWS."""
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".venv*", ".git", ".aws-sam", "*cache*", "__pycache__"),
    )
    build = tmp_path / "build"
    result = run(
        tool("sam"),
        "build",
        "--build-dir",
        str(build),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--template-file",
        str(source / "template.yaml"),
        cwd=source,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    layer = next(p for p in build.iterdir() if p.name.startswith("SharedLayer")) / "python"
    assert (layer / "orderstream" / "events.py").is_file()
    functions = [
        name
        for name, r in load_template()["Resources"].items()
        if r["Type"] == "AWS::Serverless::Function"
    ]
    for name in functions:
        code = build / name
        assert (code / "app.py").is_file(), name
        # Function folders carry only their own code; shared dependencies come from the layer.
        assert not (code / "pydantic").exists() and not (code / "orderstream").exists(), name
        probe = subprocess.run(
            [
                sys.executable,
                "-I",
                "-S",
                "-c",
                "import sys; sys.path[:0] = sys.argv[1:3]; import app; assert callable(app.lambda_handler)",
                str(code),
                str(layer),
            ],
            env={
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "PATH": os.environ["PATH"],
                "POWERTOOLS_TRACE_DISABLED": "true",
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert probe.returncode == 0, f"{name}: {probe.stderr[-2000:]}"
