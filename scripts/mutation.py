"""`make mutation`: mutmut over the layer and the handlers, driven by the fast unit tests.

mutmut names a mutant after its file's path, so the code it mutates must sit where its import
name says: the layer's `orderstream` package is staged at the top of a scratch tree
(`.mutation/`), beside `functions/` and what the unit tests read. mutmut then runs there, at
most `--minutes` long, and its summary (killed, survived, timed out, score per module, every
survivor with the reason it is equivalent, or none) is written to tests/MUTATION.md.

    .venv/bin/python scripts/mutation.py                 # everything, then tests/MUTATION.md
    .venv/bin/python scripts/mutation.py --only 'orderstream/text.py' --no-report
    .venv/bin/python scripts/mutation.py --resume       # finish a run stopped at its limit
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
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
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.json"
EQUIVALENT_HEADING = "## Equivalent mutants"
LAST_RUN = STAGE / "run.json"  # how the last run ended, for --report-only
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


def run_mutmut(minutes: float, only: str | list[str] | None) -> bool:
    """mutmut run in the scratch tree; False when it was stopped at the time limit."""
    # No PYTHONPATH to mutants/: it does not exist yet when mutmut starts, and an entry that did
    # not exist is remembered as empty, so the repo's own layer (the venv's .pth) would be
    # imported instead. mutmut puts mutants/ first on the path itself once it has made it.
    env = {**os.environ, "HYPOTHESIS_PROFILE": "mutation"}
    env.pop("PYTHONPATH", None)
    command = [MUTMUT, "run", "--max-children", str(os.cpu_count() or 2)]
    if isinstance(only, str):
        command.append(only)
    elif only:
        command += only
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


def code_unchanged_since_the_run(*, tests_too: bool = False) -> None:
    """Refuse when the code under test (or the tests) changed since the stage was made: a
    change to the code renumbers its mutants, and that needs a whole run."""
    pairs = [
        (ROOT / "layers" / "shared" / "orderstream", STAGE / "orderstream"),
        (ROOT / "functions", STAGE / "functions"),
    ]
    if tests_too:
        pairs.append((ROOT / "tests", STAGE / "tests"))
    for source, staged in pairs:
        if not same_tree(source, staged):
            raise SystemExit(f"{source.relative_to(ROOT)} changed since the run: run it whole")


def again(minutes: float) -> bool:
    """The last run's unexplained survivors, judged again by today's tests, in the same
    mutants. Only the tests are copied in; the equivalent ones wait for the next whole run."""
    code_unchanged_since_the_run()
    for target in (STAGE / "tests", STAGE / "mutants" / "tests"):
        shutil.rmtree(target)
        shutil.copytree(
            ROOT / "tests", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    os.chdir(STAGE)  # where mutmut's diffs of the mutants are read
    known = {(e["function"], e["removed"], e["added"]) for e in equivalents()}
    survivors = [
        n
        for n, s in results().items()
        if s in (SURVIVED, NO_TESTS) and (function_of(n), *change_of(n)) not in known
    ]
    return run_mutmut(minutes, survivors) if survivors else True


def resume(minutes: float) -> bool:
    """The mutants a run stopped at its limit left unjudged, by the same tests: mutmut keeps
    every verdict in the stage and runs only the mutants without one."""
    code_unchanged_since_the_run(tests_too=True)
    return run_mutmut(minutes, None)


def same_tree(one: Path, other: Path) -> bool:
    files = {p.relative_to(one) for p in one.rglob("*.py")}
    if files != {p.relative_to(other) for p in other.rglob("*.py")}:
        return False
    return all(filecmp.cmp(one / f, other / f, shallow=False) for f in files)


def equivalents() -> list[dict[str, str]]:
    """The survivors no test can kill, each with why: {function, removed, added, why}.

    Kept by the change, not by mutmut's name: a mutant's number moves whenever its function
    changes, a line of code does not."""
    if not EQUIVALENTS.exists():
        return []
    listed: list[dict[str, str]] = json.loads(EQUIVALENTS.read_text())
    return listed


def function_of(mutant: str) -> str:
    return mutant.rpartition("__mutmut_")[0]


def change_of(mutant: str) -> tuple[str, str]:
    """The lines a mutant removes and adds, stripped: what the equivalents are matched on."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    module = module_of(mutant)
    diff = get_diff_for_mutant(mutant, path=module.replace(".", "/") + ".py")
    lines = diff.splitlines()[3:]  # past the ---/+++/@@ header
    removed = "\n".join(line[1:].strip() for line in lines if line.startswith("-"))
    added = "\n".join(line[1:].strip() for line in lines if line.startswith("+"))
    return removed, added


def module_of(mutant: str) -> str:
    return mutant.partition(".x")[0]


def report(found: dict[str, str], finished: bool, seconds: float, sittings: int = 1) -> str:
    known = {(e["function"], e["removed"], e["added"]): e for e in equivalents()}
    survivors = sorted(n for n, s in found.items() if s in (SURVIVED, NO_TESTS))
    changes = {name: change_of(name) for name in survivors}
    equivalent = {n for n in survivors if (function_of(n), *changes[n]) in known}
    seen = {(function_of(n), *changes[n]) for n in equivalent}
    stale = [e for key, e in known.items() if key not in seen]
    by_module: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for name, status in found.items():
        by_module[module_of(name)][status] += 1
        if name in equivalent:
            by_module[module_of(name)]["equivalent"] += 1

    def score(counts: Counter[str]) -> str:
        caught = counts[KILLED] + counts[TIMEOUT]
        judged = caught + counts[SURVIVED] + counts[NO_TESTS]
        return f"{caught / judged:.1%}" if judged else "n/a"

    def score_of_killable(counts: Counter[str]) -> str:
        caught = counts[KILLED] + counts[TIMEOUT]
        killable = caught + counts[SURVIVED] + counts[NO_TESTS] - counts["equivalent"]
        return f"{caught / killable:.1%}" if killable else "n/a"

    rows = [
        "| module | mutants | killed | timed out | survived | no tests | equivalent | score "
        "| score of the killable |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    total: Counter[str] = Counter()
    layer: Counter[str] = Counter()

    def row(label: str, counts: Counter[str], bold: str = "") -> str:
        return (
            f"| {label} | {sum(counts[s] for s in (KILLED, TIMEOUT, SURVIVED, NO_TESTS))} | "
            f"{counts[KILLED]} | {counts[TIMEOUT]} | {counts[SURVIVED]} | {counts[NO_TESTS]} | "
            f"{counts['equivalent']} | {bold}{score(counts)}{bold} | "
            f"{bold}{score_of_killable(counts)}{bold} |"
        )

    for module in sorted(by_module):
        counts = by_module[module]
        total += counts
        if module.startswith("orderstream"):
            layer += counts
        rows.append(row(f"`{module}`", counts))
    rows.append(row("**the layer (orderstream)**", layer, "**"))
    rows.append(row("**everything**", total, "**"))
    unexplained = [n for n in survivors if n not in equivalent]
    lines = [
        "## Latest run",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}, {os.cpu_count()} CPUs, "
        f"{seconds / 60:.0f} min"
        + (f" in {sittings} sittings (the run, then --resume or --again)" if sittings > 1 else "")
        + f", {sum(total[s] for s in (KILLED, TIMEOUT, SURVIVED, NO_TESTS)):,} of "
        f"{len(found):,} mutants judged"
        + ("" if finished else ", STOPPED AT THE TIME LIMIT: the figures cover what ran")
        + ".",
        "",
        *rows,
        "",
        "Score = (killed + timed out) / every mutant judged; a mutant no test reaches counts as "
        "surviving. The score of the killable leaves out the equivalent mutants below.",
        "",
        f"Survivors not explained: {len(unexplained)}",
        *[f"- `{name}`: {shown(changes[name])}" for name in unexplained],
        "",
        f"Equivalent mutants listed but not seen in this run: {len(stale)}"
        + ("" if finished else " (the run stopped before it judged them all)"),
        *[f"- `{e['function']}`: {shown((e['removed'], e['added']))}" for e in stale],
        "",
        EQUIVALENT_HEADING,
        "",
        f"{len(known)} changes no test can tell from the original, from "
        f"`{EQUIVALENTS.relative_to(ROOT)}` (matched by the function and the lines changed, so "
        "mutmut's renumbering never moves them), each with why:",
        "",
        *[
            f"- `{e['function']}`: {shown((e['removed'], e['added']))}: {e['why']}"
            for e in known.values()
        ],
    ]
    return "\n".join(lines)


def shown(change: tuple[str, str]) -> str:
    removed, added = (part.replace("\n", " / ").replace("`", "'") for part in change)
    return f"`{removed}` → `{added or '(removed)'}`"


def write_report(section: str) -> None:
    """Everything from "## Latest run" on is the generated report; the text above it stays."""
    text = REPORT.read_text() if REPORT.exists() else "# Mutation testing\n"
    start = text.find("## Latest run")
    head = text[:start] if start >= 0 else text
    REPORT.write_text(head.rstrip() + "\n\n" + section + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=50.0, help="stop mutmut after this long")
    parser.add_argument("--only", help="a mutant name glob, as `mutmut run` takes")
    parser.add_argument("--no-report", action="store_true", help="leave tests/MUTATION.md alone")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="no new run: report the last one again, e.g. after explaining survivors in "
        f"{EQUIVALENTS.relative_to(ROOT)}",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="judge the mutants a run stopped at its time limit left, with the same tests",
    )
    parser.add_argument(
        "--again",
        action="store_true",
        help="judge the last run's survivors again with the tests as they are now",
    )
    args = parser.parse_args()
    started = time.monotonic()
    if args.report_only:
        last = json.loads(LAST_RUN.read_text())
        finished, seconds, sittings = last["finished"], last["seconds"], last.get("sittings", 1)
    elif args.again or args.resume:
        last = json.loads(LAST_RUN.read_text())
        if args.again:
            # Every mutant keeps its verdict: re-judging survivors leaves the run as whole as
            # it was, even when this sitting stops at its limit.
            if not again(args.minutes):
                print("--again stopped at its limit: some survivors were not judged again")
            finished = last["finished"]
        else:
            finished = resume(args.minutes)
        seconds = last["seconds"] + time.monotonic() - started
        sittings = last.get("sittings", 1) + 1
        LAST_RUN.write_text(
            json.dumps({"finished": finished, "seconds": seconds, "sittings": sittings})
        )
    else:
        stage()
        finished = run_mutmut(args.minutes, args.only)
        seconds, sittings = time.monotonic() - started, 1
        # A run of some mutants judged the rest nowhere: as a last run, it did not finish.
        LAST_RUN.write_text(
            json.dumps({"finished": finished and not args.only, "seconds": seconds})
        )
    os.chdir(STAGE)  # where mutmut's diffs of the mutants are read
    section = report(results(), finished, seconds, sittings)
    print(section)
    if not args.no_report and not args.only:
        write_report(section)
        print(f"\nwritten to {REPORT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
