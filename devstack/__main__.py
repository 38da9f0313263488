"""`python -m devstack <command>`: orderstream on one machine, without Docker or AWS.

run      the whole pipeline in the foreground (what `make run` starts)
invoke   one function with one event, like `sam local invoke`
status   topics, consumer groups, emails, archive objects and dead letters of the running stack
schemas  regenerate the checked-in JSON schemas
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from devstack import schemas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="start broker, AWS emulator, API, Lambda's API and mappings"
    )
    run.add_argument(
        "--built",
        nargs="?",
        const=Path(".aws-sam/build"),
        type=Path,
        metavar="BUILD_DIR",
        help="run the functions from `sam build` output (default .aws-sam/build)",
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where stack.json, logs and the servers' record go (default devstack/.state); "
        "`status`, `invoke` and `orderstream --local` find only the stack in the default one",
    )
    run.add_argument(
        "--outbox", type=Path, metavar="DIR", help="where sent emails go (default outbox/)"
    )

    invoke = commands.add_parser("invoke", help="invoke one function with one event")
    invoke.add_argument("function", help="logical id in template.yaml, e.g. OrderApiFunction")
    invoke.add_argument(
        "-e",
        "--event",
        required=True,
        type=Path,
        help="event file, e.g. events/api-post-order.json",
    )
    invoke.add_argument(
        "--built",
        nargs="?",
        const=Path(".aws-sam/build"),
        type=Path,
        metavar="BUILD_DIR",
        help="run from `sam build` output (default .aws-sam/build) with only the function's "
        "folder and the layer on the path, as in Lambda",
    )

    commands.add_parser("status", help="what the running stack holds")

    schema_cmd = commands.add_parser("schemas", help="regenerate the checked-in JSON schemas")
    schema_cmd.add_argument("--check", action="store_true", help="only report drift (exit 1)")

    args = parser.parse_args(argv)
    match args.command:
        case "run":
            return run_stack(built=args.built, state_dir=args.state_dir, outbox=args.outbox)
        case "invoke":
            return invoke_function(args.function, args.event, built=args.built)
        case "status":
            return show_status()
        case "schemas":
            return write_schemas(check=args.check)
    return 2


def built_dir(built: Path | None) -> Path | None:
    if built is None:
        return None
    if not (built / "template.yaml").exists():
        raise SystemExit(f"{built} holds no `sam build` output: run `make build` first")
    return built.resolve()


def run_stack(built: Path | None, state_dir: Path | None = None, outbox: Path | None = None) -> int:
    from devstack.stack import OUTBOX, STATE_DIR, LocalStack, StackError, configured_ports
    from orderstream import settings

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        ports = configured_ports()
        stack = LocalStack(
            broker_port=ports["BROKER_PORT"],
            aws_port=ports["AWS_PORT"],
            api_port=ports["API_PORT"],
            lambda_port=ports["LAMBDA_PORT"],
            console_port=ports["CONSOLE_PORT"],
            external_bootstrap=os.environ.get(settings.KAFKA_BOOTSTRAP_SERVERS) or None,
            built_dir=built_dir(built),
            log=say,
            state_dir=state_dir or STATE_DIR,
            outbox=outbox or OUTBOX,
        )
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        stack.start()
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        stopping.wait()
    finally:
        say("stopping")
        stack.stop()
        say("stopped")
    return 0


def invoke_function(function: str, event_file: Path, built: Path | None) -> int:
    """Like `sam local invoke`: the result on stdout, the function's log on stderr."""
    import tempfile

    from devstack import aws
    from devstack.functions import FunctionHost, load_functions
    from devstack.stack import LOCAL_PARAMETERS, LocalStack, StackError, running_stack
    from devstack.template import load_template

    event = json.loads(event_file.read_text())
    try:
        running = running_stack()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    owned: LocalStack | None = None
    if running is None:
        # No stack up: a broker and an emulator for the length of this call.
        owned = LocalStack(
            outbox=None,
            log=lambda line: print(line, file=sys.stderr),
            state_dir=Path(tempfile.mkdtemp(prefix="devstack-invoke-")),
        )
        try:
            _, endpoint, resolver = owned.start_backing()
        except BaseException:
            owned.stop()
            raise
    else:
        template = load_template()
        resources = aws.plan(template, LOCAL_PARAMETERS, running.bootstrap_servers)
        resolver = resources.resolver(template, LOCAL_PARAMETERS)
        endpoint = running.aws_endpoint
    try:
        functions = load_functions(resolver)
        if function not in functions:
            print(
                f"error: no function {function} in template.yaml ({', '.join(functions)})",
                file=sys.stderr,
            )
            return 2
        host = FunctionHost(
            functions[function], endpoint, built_dir=built_dir(built), log=sys.stderr
        )
        try:
            result = host.invoke(event)
        finally:
            host.stop()
    finally:
        if owned is not None:
            owned.stop()
    output: Any = result.payload if result.ok else result.error
    print(json.dumps(output, indent=2, default=str))
    print(
        f"{function}: {'ok' if result.ok else 'error'} in {result.duration_ms:.0f} ms "
        f"(init {result.init_ms:.0f} ms)",
        file=sys.stderr,
    )
    return 0 if result.ok else 1


def show_status() -> int:
    from devstack.stack import StackError, running_stack
    from devstack.status import report

    try:
        info = running_stack()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if info is None:
        print("no stack is running: start one with `make run`", file=sys.stderr)
        return 1
    print(report(info))
    return 0


def write_schemas(check: bool) -> int:
    if check:
        drifted = schemas.stale()
        for path in drifted:
            print(f"out of date: {path.relative_to(schemas.ROOT)}", file=sys.stderr)
        return 1 if drifted else 0
    for path in schemas.write():
        print(f"wrote {path.relative_to(schemas.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
