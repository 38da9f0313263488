"""`python -m devstack <command>`: tools for working on orderstream without Docker or AWS."""

from __future__ import annotations

import argparse
import sys

from devstack import schemas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    schema_cmd = commands.add_parser("schemas", help="regenerate the checked-in JSON schemas")
    schema_cmd.add_argument("--check", action="store_true", help="only report drift (exit 1)")
    args = parser.parse_args(argv)

    if args.command == "schemas":
        if args.check:
            drifted = schemas.stale()
            for path in drifted:
                print(f"out of date: {path.relative_to(schemas.ROOT)}", file=sys.stderr)
            return 1 if drifted else 0
        for path in schemas.write():
            print(f"wrote {path.relative_to(schemas.ROOT)}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
