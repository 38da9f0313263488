"""Cold start: each handler imported (its init too) in a fresh interpreter, vs `import boto3`.

.venv/bin/python bench/run.py --parts cold
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench._common import ROOT, PartResult, Row, progress

SAMPLES: Final = 5
HANDLERS: Final = ("order_api", "email_notifier", "s3_archiver", "topic_provisioner")
CONSUMERS: Final = frozenset({"email_notifier", "s3_archiver"})
# Runs in a fresh `python -I -S`, as the local stack's function host does: only the paths
# given, the clock around the import of the handler module (its module-level init included).
SCRIPT: Final = """
import sys, time
sys.path[:0] = sys.argv[1].split(":")
started = time.perf_counter()
__import__(sys.argv[2])
took = time.perf_counter() - started
print(took, int("kafka" in sys.modules), len(sys.modules))
"""
IMPORTTIME: Final = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


@dataclass(frozen=True)
class ColdTarget:
    name: str
    module: str
    paths: list[str]
    env: dict[str, str]
    cwd: Path


def cold_targets() -> list[ColdTarget]:
    from devstack import aws
    from devstack.functions import LAYER_SOURCE, load_functions, process_environment
    from devstack.stack import LOCAL_PARAMETERS
    from devstack.template import load_template

    template = load_template()
    resolver = aws.plan(template, LOCAL_PARAMETERS, "127.0.0.1:9092").resolver(
        template, LOCAL_PARAMETERS
    )
    site = [p for p in sys.path if p.endswith("site-packages")]
    # Nothing listens on the discard port: a handler that called AWS at import would fail fast.
    specs = {s.code_dir.name: s for s in load_functions(resolver).values()}
    env = process_environment(next(iter(specs.values())), "http://127.0.0.1:9")
    targets = [ColdTarget("import boto3", "boto3", [str(LAYER_SOURCE), *site], env, ROOT)]
    for name in HANDLERS:
        spec = specs[name]
        module = spec.handler.rpartition(".")[0]
        targets.append(
            ColdTarget(
                name,
                module,
                [str(spec.code_dir), str(LAYER_SOURCE), *site],
                process_environment(spec, "http://127.0.0.1:9"),
                spec.code_dir,
            )
        )
    return targets


def cold_import(target: ColdTarget, importtime: bool = False) -> tuple[float, bool, str]:
    flags = ["-X", "importtime"] if importtime else []
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            *flags,
            "-c",
            SCRIPT,
            os.pathsep.join(target.paths),
            target.module,
        ],
        env=target.env,
        cwd=target.cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"importing {target.name} failed: {done.stderr[-2000:]}")
    took, kafka, _ = done.stdout.split()
    return float(took), kafka == "1", done.stderr


def import_breakdown(stderr: str, top: int = 4) -> str:
    """Where the import time went, by top-level package (self times, which never overlap)."""
    by_package: Counter[str] = Counter()
    for line in stderr.splitlines():
        found = IMPORTTIME.match(line)
        if found:
            by_package[found.group(4).split(".")[0]] += int(found.group(1))
    total = sum(by_package.values()) or 1
    return ", ".join(f"{name} {share / total:.0%}" for name, share in by_package.most_common(top))


def part(result: PartResult, quick: bool) -> None:
    targets = cold_targets()
    samples = 2 if quick else SAMPLES
    progress(f"cold: {len(targets)} modules x (1 discarded + {samples}) fresh interpreters")
    times: defaultdict[str, list[float]] = defaultdict(list)
    kafka: dict[str, bool] = {}
    for round_ in range(1 + samples):
        for target in targets:  # round-robin, so machine noise hits every module alike
            took, kafka[target.name], _ = cold_import(target)
            if round_:  # the first round compiles .pyc files and warms the file cache
                times[target.name].append(took)
    baseline = statistics.median(times["import boto3"]) * 1000
    for name in HANDLERS:
        imports = "imports kafka" if kafka[name] else "no kafka"
        if name in CONSUMERS and kafka[name]:
            imports = "IMPORTS KAFKA (a consumer must not)"
        result.rows.append(
            Row(
                f"cold start: {name} import + init ({imports})",
                statistics.median(times[name]) * 1000,
                baseline,
                "ms",
            )
        )
    breakdown = "; ".join(
        f"{t.name}: {import_breakdown(cold_import(t, importtime=True)[2])}"
        for t in targets
        if t.name in HANDLERS
    )
    result.notes.append(
        f"cold start: median of {samples} fresh `python -I -S` per module (after one discarded "
        "run that compiles .pyc), with the function's folder, the layer and site-packages on the "
        "path and its template environment; baseline a bare `import boto3` the same way. "
        "`kafka` checked in sys.modules after the import. Import time by package (-X "
        f"importtime self time): {breakdown}. The dev venv also holds awscrt and pyOpenSSL, "
        "which botocore imports when present and the Lambda layer does not ship: absolute "
        "times here run higher than in Lambda, for handlers and baseline alike."
    )
