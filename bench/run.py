"""`make bench`: every benchmark in one table, each figure a ratio to a baseline from the same run.

Each part is a module of this folder with a `part(result, quick)` function, run in a fresh
interpreter of its own, bounded in count and time, on 127.0.0.1 only. This file runs them,
prints one table and writes it, with the machine, into bench/README.md under "Latest results".
Nothing asserts on time: these are measurements, not tests.

    .venv/bin/python bench/run.py                      # everything (make bench)
    .venv/bin/python bench/run.py --parts producer,e2e # some parts; README left alone
    .venv/bin/python bench/run.py --quick              # a tenth of the counts; README left alone
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

from bench._common import ROOT, PartResult, machine, progress

README: Final = ROOT / "bench" / "README.md"
RESULTS_HEADING: Final = "## Latest results"
# The whole bench stays under 10 minutes: each part gets its own limit, and no more than what
# is left of this budget (plus the grace period to stop, should it overrun).
BUDGET_S: Final = 540.0
STOP_GRACE_S: Final = 30.0  # a part stopped at its limit gets this long to stop its servers


@dataclass(frozen=True)
class Part:
    module: str  # bench.<module>.part(result, quick) runs it
    limit_s: float
    what: str


PARTS: Final[dict[str, Part]] = {
    "producer": Part("producer", 180, "POST /orders, warm, vs the I/O it made, replayed"),
    "archiver": Part("archiver", 60, "archive_batch, 10,000 x 1 KB, vs base64-decode + gzip"),
    "email": Part("emails", 60, "SES calls per 1,000 orders, bulk vs one call per order"),
    "cold": Part("cold", 180, "each function's init + first invocation vs the same I/O bare"),
    "sizes": Part("sizes", 30, "make build's layer and functions, unzipped, vs Lambda's limit"),
    "cost": Part("cost", 200, "every billable call per order, counted on the local stack"),
    "e2e": Part("e2e", 240, "2,000 orders through the local stack: POST -> archived, -> email"),
}


def fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "n/a"
    if unit == "ms":
        return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "MiB":
        return f"{value:,.1f} MiB"
    if unit == "n":  # a plain count
        return f"{value:,.0f}"
    if unit == "calls":
        return f"{value:,.0f} calls"
    return f"{value:,.0f} {unit}"


def render(results: list[PartResult], host: dict[str, str], seconds: float) -> str:
    lines = [
        "| benchmark | measured | baseline | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for part in results:
        for row in part.rows:
            ratio = "n/a" if row.ratio != row.ratio else f"{row.ratio:.2f}x"
            lines.append(
                f"| {row.benchmark} | {fmt(row.measured, row.unit)} | "
                f"{fmt(row.baseline, row.unit)} | {ratio} |"
            )
        if part.error:
            lines.append(f"| {part.part}: FAILED ({part.error[:150]}) | | | |")
    lines += ["", "Ratio = measured / baseline, both measured in this run."]
    lines += [f"- {note}" for part in results for note in part.notes]
    timing = ", ".join(f"{p.part} {p.seconds:.0f} s" for p in results)
    lines += [
        "",
        f"Machine: {host['nproc']} CPUs ({host['cpu']}), {host['system']}, Python "
        f"{host['python']}; {host['date']}. Whole bench {seconds:.0f} s ({timing}).",
    ]
    return "\n".join(lines)


def update_readme(table: str) -> None:
    text = README.read_text()
    start = text.find(RESULTS_HEADING)
    if start < 0:
        head, tail = text.rstrip() + "\n\n", ""
    else:
        head = text[:start]
        following = text.find("\n## ", start + len(RESULTS_HEADING))
        tail = "" if following < 0 else text[following:]
    section = f"{RESULTS_HEADING}\n\nFrom `make bench`:\n\n{table}\n"
    README.write_text(head + section + tail)


def run_part(name: str, limit_s: float, quick: bool) -> PartResult:
    """One part in a fresh interpreter; stopped (servers and all) when it exceeds its limit."""
    with tempfile.TemporaryDirectory(prefix="orderstream-bench-") as folder:
        result_file = Path(folder) / "result.json"
        command = [sys.executable, __file__, "--child", name, "--result", str(result_file)]
        # The handlers under test log to stdout, as in Lambda; here nobody reads it.
        child = subprocess.Popen(
            [*command, *(["--quick"] if quick else [])], stdout=subprocess.DEVNULL, cwd=ROOT
        )
        stopped = None
        try:
            child.wait(limit_s)
        except subprocess.TimeoutExpired:
            stopped = f"stopped at its time limit of {limit_s:.0f} s"
            child.terminate()  # the part's finally blocks stop its servers
            try:
                child.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        except BaseException:
            child.terminate()
            child.wait(STOP_GRACE_S)
            raise
        if result_file.exists():
            result = PartResult.from_dict(json.loads(result_file.read_text()))
        else:
            result = PartResult(name, error=f"exited with {child.returncode} and no result")
        if stopped:
            result.error = stopped
        return result


@contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM becomes SystemExit, so try/finally blocks stop the servers a part started."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def child(name: str, result_file: Path, quick: bool) -> None:
    result = PartResult(name)
    started = time.monotonic()
    try:
        with stopped_by_sigterm():
            importlib.import_module(f"bench.{PARTS[name].module}").part(result, quick)
    except BaseException as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        result.seconds = time.monotonic() - started
        result_file.write_text(json.dumps(result.to_dict()))
        progress(f"{name}: {result.seconds:.0f} s" + (f" ({result.error})" if result.error else ""))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="parts: " + "; ".join(f"{name}: {p.what}" for name, p in PARTS.items()),
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    parser.add_argument("--quick", action="store_true", help="a tenth of the counts")
    parser.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.result, args.quick)
        return

    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = set(names) - PARTS.keys()
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    started = time.monotonic()
    results = []
    for name in names:
        left = BUDGET_S - (time.monotonic() - started)
        if left < 10:
            results.append(PartResult(name, error="skipped: the bench's time budget is spent"))
            continue
        results.append(run_part(name, min(PARTS[name].limit_s, left), args.quick))
    table = render(results, machine(), time.monotonic() - started)
    print(table)
    if names == list(PARTS) and not args.quick:
        update_readme(table)
        print(f"\nwritten to {README.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
