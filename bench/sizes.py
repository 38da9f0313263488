"""What every cold start reads: the built layer's and each function's unzipped size.

Reads `make build`'s output (.aws-sam/build). Lambda's limit for a function and its layers,
unzipped, is 250 MB (in MiB: 262,144,000 bytes). The baseline of each row is that limit, so
the ratio is the share used.

    make build && .venv/bin/python bench/run.py --parts sizes
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from bench._common import ROOT, PartResult, Row, progress

BUILD: Final = ROOT / ".aws-sam" / "build"
LIMIT_BYTES: Final = 250 * 1024 * 1024  # function + layers, unzipped


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def part(result: PartResult, quick: bool) -> None:
    if not (BUILD / "template.yaml").exists():
        raise RuntimeError("no build to measure: run `make build` first (make bench does)")
    progress("sizes: .aws-sam/build")
    layer = next(p for p in BUILD.iterdir() if p.name.startswith("SharedLayer"))
    layer_bytes = size_of(layer)
    result.rows.append(
        Row("size: SharedLayer, unzipped", layer_bytes / 2**20, LIMIT_BYTES / 2**20, "MiB")
    )
    functions = sorted(p for p in BUILD.iterdir() if p.is_dir() and p != layer)
    for function in functions:
        result.rows.append(
            Row(
                f"size: {function.name} + layer, unzipped",
                (size_of(function) + layer_bytes) / 2**20,
                LIMIT_BYTES / 2**20,
                "MiB",
            )
        )
    packages = sorted(
        ((size_of(p), p.name) for p in (layer / "python").iterdir() if p.is_dir()), reverse=True
    )
    result.notes.append(
        "sizes: `make build` output against Lambda's 250 MB limit for a function and its layers "
        "unzipped. Functions alone: "
        + ", ".join(f"{f.name} {size_of(f) / 1e3:.0f} KB" for f in functions)
        + ". The layer's largest packages: "
        + ", ".join(f"{name} {size / 1e6:.1f} MB" for size, name in packages[:8])
        + "."
    )
