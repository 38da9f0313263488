"""`make mutation`: mutmut over the layer and the handlers, driven by the fast unit tests.

mutmut names a mutant after its file's path, so the code it mutates must sit where its import
name says: the layer's `orderstream` package is staged at the top of a scratch tree
(`.mutation/`), beside `functions/` and what the unit tests read. mutmut then runs there, at
most `--minutes` long, and its summary (killed, survived, timed out, score per module, every
survivor with the reason it is equivalent, or none) is written to tests/MUTATION.md.

    .venv/bin/python scripts/mutation.py                 # everything, then tests/MUTATION.md
    .venv/bin/python scripts/mutation.py --only 'orderstream/text.py' --no-report
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / ".mutation"
REPORT = ROOT / "tests" / "MUTATION.md"
EQUIVALENT_HEADING = "## Equivalent mutants"
# What the unit tests read besides the code under test.
COPIED = [
    "functions",
    "tests",
    "devstack",
    "operate",
    "bench",
    "events",
    "schemas",
    "docs",
    "template.yaml",
    "samconfig.toml",
    "README.md",
    "layers",
]
MUTATED = ["orderstream", "functions"]
# Statuses as `mutmut results --all true` prints them.
KILLED, SURVIVED, TIMEOUT, NO_TESTS = "killed", "survived", "timeout", "no tests"
# The console script, not `python -m mutmut`: run as __main__, mutmut's module would exist twice
# and the trampolines would report their hits to the copy that does not collect them.
MUTMUT = str(Path(sys.executable).parent / "mutmut")


def stage() -> None:
    """A scratch tree with the layer's package at the top, and a pyproject that says so."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    STAGE.mkdir()
    shutil.copytree(ROOT / "layers" / "shared" / "orderstream", STAGE / "orderstream")
    ignore = shutil.ignore_patterns("__pycache__", ".state", "*.pyc")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, STAGE / name, ignore=ignore)
        else:
            shutil.copy2(source, STAGE / name)
    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    pytest_options = {**ours, "pythonpath": ["."], "addopts": "-p no:cacheprovider"}
    lines = ["[tool.pytest.ini_options]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in pytest_options.items()]
    lines += [
        "",
        "[tool.mutmut]",
        f"source_paths = {json.dumps(MUTATED)}",
        # The fast unit tests only: no broker, no stack, nothing marked slow.
        'pytest_add_cli_args_test_selection = ["tests/unit"]',
        'pytest_add_cli_args = ["-m", "not slow"]',
        f"also_copy = {json.dumps(COPIED)}",
        # A mutant that loops is stopped at 5x its tests' time; at 10x the timeouts took much
        # of the run.
        "timeout_multiplier = 5.0",
        "use_git_change_detection = false",
    ]
    (STAGE / "pyproject.toml").write_text("\n".join(lines) + "\n")


def run_mutmut(minutes: float, only: str | None) -> bool:
    """mutmut run in the scratch tree; False when it was stopped at the time limit."""
    # No PYTHONPATH to mutants/: it does not exist yet when mutmut starts, and an entry that did
    # not exist is remembered as empty, so the repo's own layer (the venv's .pth) would be
    # imported instead. mutmut puts mutants/ first on the path itself once it has made it.
    env = {**os.environ, "HYPOTHESIS_PROFILE": "mutation"}
    env.pop("PYTHONPATH", None)
    command = [MUTMUT, "run", "--max-children", str(os.cpu_count() or 2)]
    if only:
        command.append(only)
    process = subprocess.Popen(command, cwd=STAGE, env=env, start_new_session=True)
    try:
        process.wait(timeout=minutes * 60)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        return False


def results() -> dict[str, str]:
    """mutant name -> status, as mutmut reports them."""
    done = subprocess.run(
        [MUTMUT, "results", "--all", "true"],
        cwd=STAGE,
        capture_output=True,
        text=True,
        check=True,
    )
    found = {}
    for line in done.stdout.splitlines():
        name, sep, status = line.strip().partition(": ")
        if sep and "__mutmut_" in name:
            found[name] = status.strip()
    return found


def equivalents() -> dict[str, str]:
    """The survivors tests/MUTATION.md explains: mutant name -> why no test can kill it."""
    if not REPORT.exists():
        return {}
    text = REPORT.read_text()
    start = text.find(EQUIVALENT_HEADING)
    if start < 0:
        return {}
    return dict(re.findall(r"^- `([^`]+)`: (.+)$", text[start:], re.M))


def module_of(mutant: str) -> str:
    return mutant.partition(".x")[0]


def report(found: dict[str, str], finished: bool, seconds: float) -> str:
    explained = equivalents()
    by_module: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for name, status in found.items():
        by_module[module_of(name)][status] += 1

    def score(counts: Counter[str]) -> str:
        caught = counts[KILLED] + counts[TIMEOUT]
        judged = caught + counts[SURVIVED] + counts[NO_TESTS]
        return f"{caught / judged:.1%}" if judged else "n/a"

    rows = ["| module | mutants | killed | timed out | survived | no tests | score |"]
    rows.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    total: Counter[str] = Counter()
    layer: Counter[str] = Counter()
    for module in sorted(by_module):
        counts = by_module[module]
        total += counts
        if module.startswith("orderstream"):
            layer += counts
        rows.append(
            f"| `{module}` | {sum(counts.values())} | {counts[KILLED]} | {counts[TIMEOUT]} | "
            f"{counts[SURVIVED]} | {counts[NO_TESTS]} | {score(counts)} |"
        )
    for label, counts in (("the layer (orderstream)", layer), ("everything", total)):
        rows.append(
            f"| **{label}** | {sum(counts.values())} | {counts[KILLED]} | {counts[TIMEOUT]} | "
            f"{counts[SURVIVED]} | {counts[NO_TESTS]} | **{score(counts)}** |"
        )
    survivors = sorted(n for n, s in found.items() if s in (SURVIVED, NO_TESTS))
    unexplained = [n for n in survivors if n not in explained]
    lines = [
        "## Latest run",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}, {os.cpu_count()} CPUs, "
        f"{seconds / 60:.0f} min"
        + ("" if finished else ", STOPPED AT THE TIME LIMIT: the figures cover what ran")
        + ".",
        "",
        *rows,
        "",
        "Score = (killed + timed out) / every mutant judged; a mutant no test reaches counts as "
        "surviving.",
        "",
        f"Survivors not explained below: {len(unexplained)}",
        *[f"- `{name}`" for name in unexplained],
    ]
    return "\n".join(lines)


def write_report(section: str) -> None:
    text = REPORT.read_text() if REPORT.exists() else "# Mutation testing\n"
    start = text.find("## Latest run")
    end = text.find(EQUIVALENT_HEADING)
    head = text[:start] if start >= 0 else text[:end] if end >= 0 else text
    tail = text[end:] if end >= 0 else f"{EQUIVALENT_HEADING}\n\nNone yet.\n"
    REPORT.write_text(head.rstrip() + "\n\n" + section + "\n\n" + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=50.0, help="stop mutmut after this long")
    parser.add_argument("--only", help="a mutant name glob, as `mutmut run` takes")
    parser.add_argument("--no-report", action="store_true", help="leave tests/MUTATION.md alone")
    parser.add_argument(
        "--report-only",
        type=float,
        metavar="MINUTES",
        help="no new run: report the last one (which took MINUTES), e.g. after explaining "
        "survivors in tests/MUTATION.md",
    )
    args = parser.parse_args()
    if args.report_only is not None:
        section = report(results(), True, args.report_only * 60)
        print(section)
        write_report(section)
        return
    started = time.monotonic()
    stage()
    finished = run_mutmut(args.minutes, args.only)
    section = report(results(), finished, time.monotonic() - started)
    print(section)
    if not args.no_report and not args.only:
        write_report(section)
        print(f"\nwritten to {REPORT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
