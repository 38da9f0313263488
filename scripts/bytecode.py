"""Compile a `sam build` output's Python to bytecode that stays valid in Lambda.

Lambda's /var/task and /opt are read-only, so Python cannot cache what it compiles there: a
module without a usable .pyc is compiled from source at every cold start. `sam build` ships
none for our own code (it copies the source), and pip's .pyc for the libraries are checked
against each source file's modification time, which a zip round trip may not keep (zip stores
times to two seconds). Checked-hash .pyc files (PEP 552) are checked against the source's hash
instead: valid wherever the files land, and never stale after a rebuild. The hash costs a read
of each source; bench/README.md measures what the .pyc files save.

    python scripts/bytecode.py .aws-sam/build      (make build runs it)
"""

from __future__ import annotations

import compileall
import py_compile
import re
import sys
from pathlib import Path


def compile_build(build: Path) -> bool:
    """Every .py under `build`, for this interpreter (the runtime's version: `main` checks).

    A library may ship a file this Python cannot compile (a template, an example for another
    version); pip skips those, and so does this, as long as our own code compiles."""
    if compileall.compile_dir(
        build,
        quiet=2,
        force=True,
        workers=0,
        invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
    ):
        return True
    ours = [p for p in build.rglob("*.py") if _is_ours(build, p)]
    try:
        for path in ours:
            py_compile.compile(
                str(path),
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
            )
    except py_compile.PyCompileError as exc:
        print(exc.msg, file=sys.stderr)
        return False
    print("some library files did not compile; Lambda never imports them", file=sys.stderr)
    return True


def _is_ours(build: Path, path: Path) -> bool:
    """A function's own code, or the layer's orderstream package."""
    parts = path.relative_to(build).parts
    return "orderstream" in parts or not any(part.startswith("SharedLayer") for part in parts)


def runtime_version(template: Path) -> tuple[int, int]:
    """The functions' `Runtime: pythonX.Y` in template.yaml: one version for all of them."""
    found = set(re.findall(r"^\s+Runtime: python(\d+)\.(\d+)\s*$", template.read_text(), re.M))
    if len(found) != 1:
        raise ValueError(f"not one python Runtime in {template}: {sorted(found)}")
    [(major, minor)] = found
    return int(major), int(minor)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python scripts/bytecode.py <sam build folder>", file=sys.stderr)
        return 2
    wanted = runtime_version(Path(argv[0]) / "template.yaml")
    if sys.version_info[:2] != wanted:
        # Lambda would ignore bytecode of another version and compile at every cold start.
        print(
            f"bytecode for python{wanted[0]}.{wanted[1]} needs that interpreter, not "
            f"{sys.version_info[0]}.{sys.version_info[1]}",
            file=sys.stderr,
        )
        return 1
    return 0 if compile_build(Path(argv[0])) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
