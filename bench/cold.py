"""Cold start: each function's init and first invocation in a fresh container, vs the same I/O bare.

A cold start is what a user waits for: the runtime imports the handler module (its module-level
init included), then runs the first invocation. So the measured side is Lambda's two figures,
Init Duration + Duration, of a fresh `devstack.host` container (`python -I -S`, the function's
folder, the layer and site-packages on the path, its template environment) invoked once with its
sample event against an embedded broker and moto_server. Moving an import into the first request
cannot improve it.

The baseline does that invocation's I/O and nothing else, in the same kind of fresh interpreter:
boto3 where the function calls AWS, kafka-python where it talks to Kafka, the same clients, the same
calls with the same parameters, in order. The calls come from a recording: the same function run
once more, outside the clock, with hooks on botocore, kafka-python and urllib, against a second
broker and emulator, so that its keys and offsets are new to the first one when replayed there.

    .venv/bin/python bench/run.py --parts cold
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from bench._common import ROOT, PartResult, Row, progress

SAMPLES: Final = 5
CONSUMERS: Final = frozenset({"email_notifier", "s3_archiver"})
# Each function's first invocation: its folder under functions/ and its sample event.
FIRST_EVENTS: Final = {
    "order_api": "api-post-order.json",
    "email_notifier": "msk-orders.json",
    "s3_archiver": "msk-orders.json",
    "topic_provisioner": "cfn-topics-create.json",
}
IMPORTTIME: Final = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")

# The recording: the handler run once with hooks on every kind of I/O it may do, the calls
# written (pickled) to a file. Not timed.
RECORD: Final = r"""
import importlib, json, pickle, sys, urllib.request
sys.path[:0] = sys.argv[1].split(":")
out, module_name, event_file = sys.argv[2:5]
from botocore.client import BaseClient
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from devstack.host import Context

log = []

def portable(configs):
    # The client's settings, all of them: a setting the replay could not use would make the
    # bare side do something else (no such setting with the local stack's plaintext Kafka).
    for name, value in configs.items():
        try:
            pickle.dumps(value)
        except Exception as exc:
            raise SystemExit(f"cannot replay the client setting {name}={value!r}: {exc}")
    return dict(configs)

def recorded(entry, call):
    log.append(entry)
    try:
        result = call()
    except Exception as exc:
        entry["raised"] = type(exc).__name__
        raise
    return result

real_api_call = BaseClient._make_api_call
def api_call(self, operation, params):
    entry = {"kind": "aws", "service": self.meta.service_model.service_name,
             "operation": operation, "params": params}
    return recorded(entry, lambda: real_api_call(self, operation, params))
BaseClient._make_api_call = api_call

def record_clients(cls, kind):
    real_init = cls.__init__
    def init(self, **configs):
        log.append({"kind": kind, "configs": portable(configs)})
        real_init(self, **configs)
    cls.__init__ = init
record_clients(KafkaProducer, "producer")
record_clients(KafkaAdminClient, "admin")

real_send = KafkaProducer.send
def send(self, topic, *args, **kwargs):
    entry = {"kind": "send", "topic": topic, "args": args, "kwargs": kwargs}
    return recorded(entry, lambda: real_send(self, topic, *args, **kwargs))
KafkaProducer.send = send

depth = [0]
def admin_method(name, real):
    def method(self, *args, **kwargs):
        if depth[0]:  # one public method calling another: the outer call is what is replayed
            return real(self, *args, **kwargs)
        entry = {"kind": "admin call", "method": name, "args": args, "kwargs": kwargs}
        depth[0] += 1
        try:
            return recorded(entry, lambda: real(self, *args, **kwargs))
        finally:
            depth[0] -= 1
    return method
for name in dir(KafkaAdminClient):  # inherited methods too
    real = getattr(KafkaAdminClient, name)
    if not name.startswith("_") and callable(real) and not isinstance(real, type):
        setattr(KafkaAdminClient, name, admin_method(name, real))

real_urlopen = urllib.request.urlopen
def urlopen(request, *args, **kwargs):
    entry = {"kind": "http", "url": request.full_url, "data": request.data,
             "headers": dict(request.header_items()), "method": request.get_method()}
    return recorded(entry, lambda: real_urlopen(request, *args, **kwargs))
urllib.request.urlopen = urlopen

with open(event_file) as f:
    event = json.load(f)
spec = json.loads(sys.argv[5])
handler = importlib.import_module(module_name).lambda_handler
result = handler(event, Context(spec))
with open(out, "wb") as f:
    pickle.dump(log, f)
print(json.dumps(result, default=str))
"""

# The baseline: the recorded I/O and nothing else, timed from the first import to the last
# answer, in a fresh `python -I -S` like the function's.
BARE: Final = r"""
import sys, time
sys.path[:0] = sys.argv[1].split(":")
import pickle
started = time.perf_counter()
if "aws" in sys.argv[3]:
    import boto3
    from botocore import xform_name
if "kafka" in sys.argv[3]:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient
import urllib.request
loading = time.perf_counter()
with open(sys.argv[2], "rb") as f:
    log = pickle.load(f)
reading = time.perf_counter() - loading  # the bench's own work, not the function's: left out
clients, producer, admin, calls = {}, None, None, 0
for entry in log:
    kind = entry["kind"]
    try:
        if kind == "aws":
            service = entry["service"]
            if service not in clients:
                clients[service] = boto3.client(service)
            getattr(clients[service], xform_name(entry["operation"]))(**entry["params"])
        elif kind == "producer":  # the recording's broker was another one
            producer = KafkaProducer(**entry["configs"] | {"bootstrap_servers": sys.argv[4]})
        elif kind == "send":
            producer.send(entry["topic"], *entry["args"], **entry["kwargs"]).get(timeout=30)
        elif kind == "admin":
            admin = KafkaAdminClient(**entry["configs"] | {"bootstrap_servers": sys.argv[4]})
        elif kind == "admin call":
            getattr(admin, entry["method"])(*entry["args"], **entry["kwargs"])
        elif kind == "http":
            request = urllib.request.Request(
                entry["url"], data=entry["data"], headers=entry["headers"], method=entry["method"]
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
        if "raised" in entry:
            raise RuntimeError(f"{entry} raised for the function but not here")
    except Exception as exc:
        if entry.get("raised") != type(exc).__name__:
            raise
    calls += 1
took = time.perf_counter() - started - reading
print(took, calls, len(log))
"""


# `make build`'s output, when there is one (make bench builds first): exactly what Lambda runs,
# without the dev venv's extras (awscrt, pyOpenSSL) that botocore imports when present.
BUILT: Final = ROOT / ".aws-sam" / "build"


def built_dir() -> Path | None:
    return BUILT if (BUILT / "template.yaml").exists() else None


# As in Lambda's read-only folders: only the bytecode the build shipped is used.
NO_BYTECODE_WRITES: Final = ["-B"] if built_dir() else []


@dataclass(frozen=True)
class Function:
    name: str  # its folder under functions/
    spec: Any  # devstack.functions.FunctionSpec
    paths: list[str]  # as the container's: its code, then the layer (built) or source + venv
    libraries: list[str]  # where the bare side finds boto3 and kafka-python: the same place
    cwd: Path


@dataclass
class Backing:
    """One broker + moto_server with the template's resources, and its function specs."""

    stack: Any
    bootstrap: str
    endpoint: str
    functions: dict[str, Function]


@contextlib.contextmanager
def backing(state: Path) -> Iterator[Backing]:
    from devstack.functions import LAYER_SOURCE, load_functions
    from devstack.stack import LocalStack

    stack = LocalStack(state_dir=state, outbox=None, log=lambda line: None)
    try:
        bootstrap, endpoint, resolver = stack.start_backing()
        site = [p for p in sys.path if p.endswith("site-packages")]
        built = built_dir()
        layer = next(BUILT.glob("SharedLayer*/python"), None) if built else None
        functions = {}
        for spec in load_functions(resolver).values():
            name = spec.code_dir.name
            if name not in FIRST_EVENTS:
                continue
            if built and layer:
                code = built / spec.logical_id
                functions[name] = Function(name, spec, [str(code), str(layer)], [str(layer)], code)
            else:
                paths = [str(spec.code_dir), str(LAYER_SOURCE), *site]
                functions[name] = Function(name, spec, paths, site, spec.code_dir)
        yield Backing(stack, bootstrap, endpoint, functions)
    finally:
        stack.stop()


class ResponseCatcher:
    """Where custom resources PUT their answer (CloudFormation's presigned S3 URL, locally)."""

    def __init__(self) -> None:
        answers: list[dict[str, Any]] = []
        self.answers = answers

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                answers.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cfn-response"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def first_event(name: str, run: int, response_url: str, bootstrap: str) -> dict[str, Any]:
    """The function's sample event with identifiers of its own, so each run is a first
    delivery: new order and event ids, new requests, offsets of a block no run used."""
    event: dict[str, Any] = json.loads((ROOT / "events" / FIRST_EVENTS[name]).read_text())
    if name == "order_api":
        body = json.loads(event["body"])
        event["body"] = json.dumps({**body, "order_id": str(uuid.uuid4())})
        event["requestContext"]["requestId"] = str(uuid.uuid4())
    elif name in CONSUMERS:
        for records in event["records"].values():
            for record in records:
                value = json.loads(base64.b64decode(record["value"]))
                value["event_id"] = str(uuid.uuid4())
                value["order"]["order_id"] = str(uuid.uuid4())
                record["value"] = base64.b64encode(json.dumps(value).encode()).decode()
                record["key"] = base64.b64encode(value["order"]["order_id"].encode()).decode()
                record["offset"] += run * 1000
    else:
        event["ResponseURL"] = response_url
        event["ResourceProperties"]["BootstrapServers"] = bootstrap
        event["RequestId"] = str(uuid.uuid4())
    return copy.deepcopy(event)


def context_spec(function: Function) -> dict[str, Any]:
    spec = function.spec
    return {
        "function_name": spec.function_name,
        "invoked_function_arn": spec.arn,
        "memory_limit_in_mb": spec.memory_mb,
        "aws_request_id": str(uuid.uuid4()),
        "timeout_ms": spec.timeout_s * 1000,
    }


def record(function: Function, endpoint: str, event: dict[str, Any], work: Path) -> Path:
    """Run the handler once with hooks on its I/O; the file holds the calls it made."""
    event_file, out = work / f"{function.name}-event.json", work / f"{function.name}.calls"
    event_file.write_text(json.dumps(event))
    done = in_fresh_interpreter(
        function,
        endpoint,
        RECORD,
        [
            os.pathsep.join([*function.paths, str(ROOT)]),
            str(out),
            function.spec.handler.rpartition(".")[0],
            str(event_file),
            json.dumps(context_spec(function)),
        ],
    )
    if done.returncode != 0:
        raise RuntimeError(f"recording {function.name} failed: {done.stderr[-3000:]}")
    check_result(function.name, json.loads(done.stdout.splitlines()[-1]))
    return out


def check_result(name: str, payload: Any) -> None:
    """A first invocation that failed would time less work than a real one."""
    failed = (name == "order_api" and payload.get("statusCode") != 202) or (
        name in CONSUMERS and payload and payload.get("batchItemFailures")
    )
    if failed:
        raise RuntimeError(f"{name}'s first invocation did not succeed: {payload}")


def calls_of(recording: Path) -> tuple[Counter[str], set[str]]:
    import pickle

    with recording.open("rb") as f:
        log = pickle.load(f)  # noqa: S301 -- written by this bench a moment ago
    counted: Counter[str] = Counter()
    for entry in log:
        kind = entry["kind"]
        counted[entry["operation"] if kind == "aws" else entry.get("method", kind)] += 1
    kinds = {entry["kind"] for entry in log}
    return counted, {"aws"} & kinds | ({"kafka"} if kinds - {"aws", "http"} else set())


def handler_cold(function: Function, endpoint: str, event: dict[str, Any]) -> float:
    """Init Duration + Duration of a fresh container's first invocation, in ms."""
    from devstack.functions import FunctionHost

    host = FunctionHost(function.spec, endpoint, built_dir=built_dir())
    try:
        result = host.invoke(event)
    finally:
        host.stop()
    if not result.ok:
        raise RuntimeError(f"{function.name}'s first invocation failed: {result.error}")
    check_result(function.name, result.payload)
    return result.init_ms + result.invoke_ms


def bare_cold(function: Function, backing: Backing, recording: Path, uses: set[str]) -> float:
    """The recorded calls made bare; `uses` says which clients to import: "aws", "kafka"."""
    done = in_fresh_interpreter(
        function,
        backing.endpoint,
        BARE,
        [
            os.pathsep.join(function.libraries),
            str(recording),
            ",".join(uses),
            backing.bootstrap,
        ],
    )
    if done.returncode != 0:
        raise RuntimeError(f"the bare I/O of {function.name} failed: {done.stderr[-3000:]}")
    took, replayed, recorded = done.stdout.split()
    if replayed != recorded:  # a replay that skipped calls would look fast
        raise RuntimeError(f"{function.name}: {replayed} of {recorded} recorded calls replayed")
    return float(took) * 1000


def import_profile(function: Function, endpoint: str) -> tuple[str, bool]:
    """Where the handler module's import time goes, by top-level package (-X importtime self
    times, which never overlap), and whether it imported kafka-python."""
    script = (
        "import sys; sys.path[:0] = sys.argv[1].split(':'); __import__(sys.argv[2]); "
        "print(int('kafka' in sys.modules))"
    )
    done = in_fresh_interpreter(
        function,
        endpoint,
        script,
        [os.pathsep.join(function.paths), function.spec.handler.rpartition(".")[0]],
        flags=["-X", "importtime"],
    )
    if done.returncode != 0:
        raise RuntimeError(f"importing {function.name} failed: {done.stderr[-3000:]}")
    return import_breakdown(done.stderr), done.stdout.strip() == "1"


def in_fresh_interpreter(
    function: Function,
    endpoint: str,
    script: str,
    args: list[str],
    flags: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """`script` in a `python -I -S` with the function's environment and folder, as its
    container runs."""
    from devstack.functions import process_environment

    return subprocess.run(
        [sys.executable, "-I", "-S", *NO_BYTECODE_WRITES, *flags, "-c", script, *args],
        env=process_environment(function.spec, endpoint),
        cwd=function.cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def import_breakdown(stderr: str, top: int = 5) -> str:
    by_package: Counter[str] = Counter()
    for line in stderr.splitlines():
        found = IMPORTTIME.match(line)
        if found:
            by_package[found.group(4).split(".")[0]] += int(found.group(1))
    total = sum(by_package.values()) or 1
    return ", ".join(f"{name} {share / total:.0%}" for name, share in by_package.most_common(top))


def part(result: PartResult, quick: bool) -> None:
    samples = 2 if quick else SAMPLES
    handler_ms: defaultdict[str, list[float]] = defaultdict(list)
    bare_ms: defaultdict[str, list[float]] = defaultdict(list)
    calls: dict[str, Counter[str]] = {}
    uses: dict[str, set[str]] = {}
    catcher = ResponseCatcher()
    with (
        tempfile.TemporaryDirectory(prefix="orderstream-cold-") as state,
        backing(Path(state) / "measured") as measured,
        backing(Path(state) / "recorded") as recorder,
    ):
        work = Path(state)
        progress(f"cold: {len(FIRST_EVENTS)} functions x (1 discarded + {samples}) rounds")
        for round_ in range(1 + samples):
            for name in FIRST_EVENTS:  # round-robin, so machine noise hits every function alike
                function = measured.functions[name]
                # Runs 1..: this run's block of offsets; recordings use blocks of their own.
                recording = record(
                    recorder.functions[name],
                    recorder.endpoint,
                    first_event(name, 1000 + round_, catcher.url, recorder.bootstrap),
                    work,
                )
                calls[name], uses[name] = calls_of(recording)
                event = first_event(name, 1 + round_, catcher.url, measured.bootstrap)
                # Alternate which side goes first, so neither always finds a warmer cache.
                sides = ("handler", "bare") if round_ % 2 else ("bare", "handler")
                for side in sides:
                    if side == "handler":
                        took = handler_cold(function, measured.endpoint, event)
                    else:
                        took = bare_cold(function, measured, recording, uses[name])
                    if round_:  # the first round warms the file cache
                        (handler_ms if side == "handler" else bare_ms)[name].append(took)
                if name == "topic_provisioner":
                    answers = [a["Status"] for a in catcher.answers]
                    if answers != ["SUCCESS"] * len(answers) or len(answers) != 3:
                        raise RuntimeError(f"the custom resource answered {answers}")
                    catcher.answers.clear()
        profiles = {
            name: import_profile(measured.functions[name], measured.endpoint)
            for name in FIRST_EVENTS
        }
    catcher.close()
    for name in FIRST_EVENTS:
        imports_kafka = profiles[name][1]
        imports = "imports kafka" if imports_kafka else "no kafka"
        if name in CONSUMERS and imports_kafka:
            imports = "IMPORTS KAFKA (a consumer must not)"
        result.rows.append(
            Row(
                f"cold start: {name} init + first invocation vs its I/O bare ({imports})",
                statistics.median(handler_ms[name]),
                statistics.median(bare_ms[name]),
                "ms",
            )
        )
    result.notes.append(
        f"cold start: median of {samples} rounds (after one discarded round that warms the file "
        "cache): Lambda's Init Duration + Duration of a fresh `python -I -S` container (the "
        "function's code and the layer on the path, its template environment) "
        "invoked once with its sample event against an embedded broker and moto_server, vs the "
        "same calls made bare in the same kind of interpreter (boto3 where the function called "
        "AWS, kafka-python where "
        "the function used it, the same clients and calls, recorded from one more run). Calls "
        "per first invocation: "
        + "; ".join(
            f"{name}: " + ", ".join(f"{op} {n}" for op, n in sorted(calls[name].items()))
            for name in FIRST_EVENTS
        )
        + ". Import time by package (-X importtime self time): "
        + "; ".join(f"{name}: {profiles[name][0]}" for name in FIRST_EVENTS)
        + (
            ". Code and libraries from `make build` (.aws-sam/build), as Lambda runs them; the "
            "bare side imports boto3 and kafka-python from the same built layer."
            if built_dir()
            else ". No `make build` output: code from the source tree and libraries from the "
            "dev venv, which also holds awscrt and pyOpenSSL (botocore imports them when present, "
            "the Lambda layer does not ship them), so absolute times run higher than in Lambda."
        )
    )
