"""A Lambda-like container: `python -I -S host.py <result fd> <paths...> -- <handler>`.

Started by devstack.functions with the function's environment and nothing else on sys.path but
the given folders (and the standard library), so a dependency missing from the layer fails here.
Reads one invocation per line on stdin and writes one result per line to the result fd;
stdout and stderr stay the function's own log, as in Lambda.

Standard library only: this file runs before any of the function's paths are importable.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from typing import Any


class Context:
    """The attributes and method Lambda's context object offers to handlers."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.function_name: str = spec["function_name"]
        self.function_version = "$LATEST"
        self.invoked_function_arn: str = spec["invoked_function_arn"]
        self.memory_limit_in_mb: int = spec["memory_limit_in_mb"]
        self.aws_request_id: str = spec["aws_request_id"]
        self.log_group_name: str = f"/aws/lambda/{self.function_name}"
        self.log_stream_name: str = spec.get("log_stream_name", "local")
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + spec["timeout_ms"] / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def error_of(exc: BaseException) -> dict[str, Any]:
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(exc),
    }


def main(argv: list[str]) -> int:
    separator = argv.index("--")
    result_fd, paths, handler = int(argv[0]), argv[1:separator], argv[separator + 1]
    stdlib = [p for p in sys.path if p.startswith(sys.base_prefix) and "site-packages" not in p]
    sys.path[:] = [*paths, *stdlib]

    results = os.fdopen(result_fd, "w", buffering=1)
    module_name, function_name = handler.rsplit(".", 1)
    init_error: dict[str, Any] | None = None
    started = time.perf_counter()
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except BaseException as exc:  # an init error is reported per invocation, as Lambda does
        init_error = error_of(exc)
        traceback.print_exc()
    init_ms = (time.perf_counter() - started) * 1000

    for line in sys.stdin:
        request = json.loads(line)
        if init_error is not None:
            results.write(json.dumps({"ok": False, "error": init_error, "init_ms": init_ms}) + "\n")
            continue
        invoked = time.perf_counter()
        try:
            payload = function(request["event"], Context(request["context"]))
            reply = {"ok": True, "payload": payload}
        except Exception as exc:
            traceback.print_exc()
            reply = {"ok": False, "error": error_of(exc)}
        # Lambda's own two figures: Init Duration (once per container) and Duration.
        reply["invoke_ms"] = (time.perf_counter() - invoked) * 1000
        reply["init_ms"], init_ms = init_ms, 0.0
        sys.stdout.flush()
        sys.stderr.flush()
        results.write(json.dumps(reply, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
