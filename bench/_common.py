"""What bench/run.py's parts share: result rows, percentiles, progress, the machine, a cluster ARN.

Only standard-library modules are imported here, and no module of this folder may be named after
one (the email benchmark is emails.py): a script run from here would import ours instead.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The cluster the synthetic MSK events name (no call goes to it).
CLUSTER_ARN = "arn:aws:kafka:eu-west-1:123456789012:cluster/orderstream/bench-s1"


@dataclass(frozen=True)
class Row:
    """One line of the table. `ratio` is always measured / baseline."""

    benchmark: str
    measured: float
    baseline: float
    unit: str  # "ms", "calls", "orders/s"

    @property
    def ratio(self) -> float:
        return self.measured / self.baseline if self.baseline else math.nan

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        return cls(
            str(data["benchmark"]), float(data["measured"]), float(data["baseline"]), data["unit"]
        )


@dataclass
class PartResult:
    """What one part hands back to the table: rows, and notes saying what was compared."""

    part: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "part": self.part,
            "rows": [row.__dict__ for row in self.rows],
            "notes": self.notes,
            "seconds": self.seconds,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartResult:
        return cls(
            part=str(data["part"]),
            rows=[Row.from_dict(r) for r in data.get("rows", [])],
            notes=[str(n) for n in data.get("notes", [])],
            seconds=float(data.get("seconds", 0.0)),
            error=data.get("error"),
        )


def percentile(values: Sequence[float], q: int) -> float:
    """The q-th percentile (1-99), linear between the closest ranks; the median for q=50."""
    if len(values) < 2:
        return float(values[0]) if values else math.nan
    if q == 50:
        return statistics.median(values)
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def percentile_rows(
    label: str, measured_s: Sequence[float], baseline_s: Sequence[float]
) -> list[Row]:
    """A p50 and a p99 row in milliseconds; `label` holds `{q}` where the percentile goes."""
    return [
        Row(
            label.format(q=q),
            percentile(measured_s, q) * 1000,
            percentile(baseline_s, q) * 1000,
            "ms",
        )
        for q in (50, 99)
    ]


def progress(message: str) -> None:
    """Progress goes to stderr: stdout is where the handlers under test write their logs."""
    print(message, file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": str(cores),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
