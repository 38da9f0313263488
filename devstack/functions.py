"""The functions template.yaml declares, run like Lambda runs them, without Docker.

Each function gets containers (`FunctionHost`): a fresh interpreter with the function's own
environment (Globals merged, references to local resources resolved), only its code and the
layer on the path, the template's Timeout enforced, and a Lambda-like context. Containers are
reused between invocations, so module-level clients and caches behave as in Lambda.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from devstack.template import ACCOUNT_ID, REGION, ROOT, Resolver
from orderstream import settings

HOST_SCRIPT = Path(__file__).with_name("host.py")
LAYER_SOURCE = ROOT / "layers" / "shared"

# What differs from AWS locally, and nothing else: the broker speaks plaintext, and tracing has
# no X-Ray daemon to talk to.
LOCAL_OVERRIDES = {settings.KAFKA_SECURITY: "plaintext", "POWERTOOLS_TRACE_DISABLED": "true"}


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    function_name: str
    code_dir: Path
    handler: str
    timeout_s: int
    memory_mb: int
    environment: dict[str, str]
    events: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.function_name}"


def load_functions(resolver: Resolver) -> dict[str, FunctionSpec]:
    """Every AWS::Serverless::Function, with Globals applied and intrinsics resolved."""
    template = resolver.template
    defaults = template.get("Globals", {}).get("Function", {})
    specs: dict[str, FunctionSpec] = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        props = resource["Properties"]

        def prop(name: str, fallback: Any, props: Mapping[str, Any] = props) -> Any:
            return resolver.resolve(props.get(name, defaults.get(name, fallback)))

        env: dict[str, str] = {}
        for source in (defaults, props):
            env.update(resolver.resolve(source.get("Environment", {}).get("Variables", {})))
        specs[logical_id] = FunctionSpec(
            logical_id=logical_id,
            function_name=str(prop("FunctionName", logical_id)),
            code_dir=ROOT / props["CodeUri"],
            handler=str(prop("Handler", "app.lambda_handler")),
            timeout_s=int(prop("Timeout", 3)),
            memory_mb=int(prop("MemorySize", 128)),
            environment={k: str(v) for k, v in env.items()},
            events=props.get("Events", {}),
        )
    return specs


def process_environment(spec: FunctionSpec, aws_endpoint: str | None) -> dict[str, str]:
    """The variables Lambda sets, the function's own, then the local overrides."""
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_LAMBDA_FUNCTION_NAME": spec.function_name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.function_name}",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
    }
    if aws_endpoint:
        base["AWS_ENDPOINT_URL"] = aws_endpoint
    return {**base, **spec.environment, **LOCAL_OVERRIDES}


@dataclass
class Invocation:
    """One invocation's outcome, in the shape `sam local invoke` reports it."""

    request_id: str
    ok: bool
    payload: Any
    error: dict[str, Any] | None
    duration_ms: float  # as the caller waited for it: the init of a cold container included
    init_ms: float
    invoke_ms: float = 0.0  # the handler's own run, as Lambda's Duration measures it


class FunctionHost:
    """One container: a long-lived interpreter that runs the function's handler on request."""

    def __init__(
        self,
        spec: FunctionSpec,
        aws_endpoint: str | None = None,
        built_dir: Path | None = None,
        log: IO[str] | None = None,
    ) -> None:
        self.spec = spec
        self.aws_endpoint = aws_endpoint
        self.built_dir = built_dir
        self.log = log
        self._process: subprocess.Popen[str] | None = None
        self._results: IO[str] | None = None
        self._lock = threading.Lock()
        #: True from handing the event over until the answer (or the container's end) is read:
        #: fault tests kill a container only while it holds an invocation.
        self.in_flight = False

    def _paths(self) -> list[str]:
        if self.built_dir is not None:
            # Exactly what Lambda has: the function's build folder and the layer's python/.
            layer = next(p for p in self.built_dir.iterdir() if p.name.startswith("SharedLayer"))
            return [str(self.built_dir / self.spec.logical_id), str(layer / "python")]
        site = [p for p in sys.path if p.endswith("site-packages")]
        return [str(self.spec.code_dir), str(LAYER_SOURCE), *site]

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                # A built function runs as in Lambda, whose folders are read-only: no bytecode
                # is written, so only what the build shipped is used (scripts/bytecode.py).
                *(["-B"] if self.built_dir is not None else []),
                str(HOST_SCRIPT),
                str(write_fd),
                *self._paths(),
                "--",
                self.spec.handler,
            ],
            stdin=subprocess.PIPE,
            stdout=self.log or subprocess.DEVNULL,
            stderr=self.log or subprocess.DEVNULL,
            env=process_environment(self.spec, self.aws_endpoint),
            cwd=Path(self._paths()[0]),  # Lambda runs in its code folder (/var/task)
            text=True,
            pass_fds=(write_fd,),  # the result channel; stdout and stderr are the function's log
        )
        os.close(write_fd)
        self._results = os.fdopen(read_fd, "r")

    def kill(self) -> bool:
        """End the container at once, as Lambda does on a timeout or a crash. An invocation in
        flight returns a Runtime.ExitError; the next one starts a fresh container (cold).
        True when an invocation was in flight."""
        process, in_flight = self._process, self.in_flight
        if process is not None and process.poll() is None:
            process.kill()
            return in_flight
        return False

    def stop(self) -> None:
        self.kill()
        with self._lock:
            self._cleanup()

    def _cleanup(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait(5)
            if process.stdin:
                with contextlib.suppress(OSError):  # unflushed input to a dead container
                    process.stdin.close()
        if self._results is not None:
            self._results.close()
            self._results = None

    def invoke(self, event: Any, request_id: str | None = None) -> Invocation:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._cleanup()
                self.start()
            process, results = self._process, self._results
            assert process is not None
            assert process.stdin is not None
            assert results is not None
            request_id = request_id or str(uuid.uuid4())
            context = {
                "function_name": self.spec.function_name,
                "invoked_function_arn": self.spec.arn,
                "memory_limit_in_mb": self.spec.memory_mb,
                "aws_request_id": request_id,
                "timeout_ms": self.spec.timeout_s * 1000,
            }
            started = time.perf_counter()
            self.in_flight = True
            try:
                return self._exchange(process, results, event, context, request_id, started)
            finally:
                self.in_flight = False

    def _exchange(
        self,
        process: subprocess.Popen[str],
        results: IO[str],
        event: Any,
        context: dict[str, Any],
        request_id: str,
        started: float,
    ) -> Invocation:
        """Hand one event to the running container and read its answer (the caller holds the
        container's lock)."""
        assert process.stdin is not None
        try:
            process.stdin.write(json.dumps({"event": event, "context": context}) + "\n")
            process.stdin.flush()
        except (BrokenPipeError, ValueError):
            self._cleanup()
            return self._failure(request_id, started, "Runtime.ExitError", "container exited")
        line = self._read_line(results, self.spec.timeout_s)
        if line is None:
            # Like Lambda: the container is discarded and the next invocation starts cold.
            self._cleanup()
            return self._failure(
                request_id,
                started,
                "Sandbox.Timedout",
                f"Task timed out after {self.spec.timeout_s:.2f} seconds",
            )
        if not line:
            self._cleanup()
            return self._failure(
                request_id, started, "Runtime.ExitError", "the container exited mid-invocation"
            )
        reply = json.loads(line)
        return Invocation(
            request_id=request_id,
            ok=reply["ok"],
            payload=reply.get("payload"),
            error=reply.get("error"),
            duration_ms=(time.perf_counter() - started) * 1000,
            init_ms=reply.get("init_ms", 0.0),
            invoke_ms=reply.get("invoke_ms", 0.0),
        )

    @staticmethod
    def _read_line(results: IO[str], timeout_s: float) -> str | None:
        """The next result line; "" when the container died, None when it ran out of time."""
        box: queue.Queue[str] = queue.Queue()

        def read() -> None:
            try:
                box.put(results.readline())
            except (OSError, ValueError):  # closed under us: the container is gone
                box.put("")

        threading.Thread(target=read, daemon=True).start()
        try:
            return box.get(timeout=timeout_s)
        except queue.Empty:
            return None

    @staticmethod
    def _failure(request_id: str, started: float, kind: str, message: str) -> Invocation:
        return Invocation(
            request_id=request_id,
            ok=False,
            payload=None,
            error={"errorType": kind, "errorMessage": message},
            duration_ms=(time.perf_counter() - started) * 1000,
            init_ms=0.0,
        )


class FunctionPool:
    """Up to `size` containers of one function, for concurrent callers (the local API)."""

    def __init__(self, make: Any, size: int) -> None:
        self._free: queue.Queue[FunctionHost] = queue.Queue()
        self._all: list[FunctionHost] = []
        self._make = make
        self._size = size
        self._lock = threading.Lock()

    def invoke(self, event: Any, request_id: str | None = None) -> Invocation:
        host = self._acquire()
        try:
            return host.invoke(event, request_id)
        finally:
            self._free.put(host)

    def _acquire(self) -> FunctionHost:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if len(self._all) < self._size:
                host: FunctionHost = self._make()
                self._all.append(host)
                return host
        return self._free.get()

    def in_flight(self) -> int:
        """How many invocations the pool's containers hold right now."""
        return sum(host.in_flight for host in list(self._all))

    def kill(self) -> int:
        """Kill every container mid-whatever (fault tests); the pool keeps serving, cold.
        Returns how many invocations were in flight in the containers it killed."""
        return sum(host.kill() for host in list(self._all))

    def stop(self) -> None:
        for host in self._all:
            host.stop()
