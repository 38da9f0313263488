"""Small real stand-ins shared by tests: a Lambda context, an HTTP server that records PUTs, and
an archive store that enforces S3's conditional writes atomically."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devstack.context import LambdaContext
from orderstream.archive import StoredObject, WriteConflict

__all__ = [
    "ConditionalStore",
    "LambdaContext",
    "Recorded",
    "emitted_metrics",
    "recording_http_server",
]


class ConditionalStore:
    """An archive store with S3's documented conditional-write semantics, checked atomically.

    moto checks If-Match / If-None-Match with a read then a write, unlocked; S3 does not let two
    conditional writers both win, and neither does this store. Hooks let a test put another
    writer between a read and a write (`before_put`), answer 409 ConditionalRequestConflict
    (`conflict`), fail like a lost connection before the write (`fail`), or lose the answer to
    a write that happened (`lost`: the caller then sees what botocore's retry of it would get,
    a 412, or a connection error once its retries are spent), each by key.
    """

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str], str]] = {}
        self._lock = threading.Lock()
        self.gets = 0
        self.puts = 0
        self.refused = 0
        self.before_put: Callable[[str], None] | None = None
        self.conflict: Callable[[str], bool] = lambda key: False
        self.fail: Callable[[str], bool] = lambda key: False
        self.lost: Callable[[str], Exception | None] = lambda key: None

    def get(self, key: str) -> StoredObject | None:
        with self._lock:
            self.gets += 1
            found = self.objects.get(key)
        return None if found is None else StoredObject(found[0], found[2])

    def put(
        self, key: str, body: bytes, metadata: Mapping[str, str], *, replaces: str | None
    ) -> None:
        hook, self.before_put = self.before_put, None  # one slipped-in writer per arming
        if hook is not None:
            hook(key)
        if self.fail(key):
            raise ConnectionError(f"injected: S3 unreachable writing {key}")
        with self._lock:
            self.puts += 1
            current = self.objects.get(key)
            if self.conflict(key):
                self.refused += 1
                raise WriteConflict(f"{key}: 409 ConditionalRequestConflict")
            if (current is None) != (replaces is None) or (
                current is not None and current[2] != replaces
            ):
                self.refused += 1
                raise WriteConflict(f"{key}: 412 PreconditionFailed")
            etag = f'"{hashlib.md5(body).hexdigest()}"'  # noqa: S324 -- S3's single-part ETag
            self.objects[key] = (body, dict(metadata), etag)
        answer = self.lost(key)
        if answer is not None:
            raise answer

    def contents(self) -> dict[str, tuple[bytes, dict[str, str]]]:
        return {key: (body, metadata) for key, (body, metadata, _) in self.objects.items()}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@contextmanager
def recording_http_server(failures: int = 0) -> Iterator[tuple[str, list[Recorded]]]:
    """A real HTTP server on 127.0.0.1 that records each PUT and answers it 200, after answering
    the first `failures` of them 503 (S3's "slow down")."""
    received: list[Recorded] = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(Recorded("PUT", self.path, dict(self.headers.items()), body))
            self.send_response(503 if len(received) <= failures else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/response", received
    finally:
        server.shutdown()
        server.server_close()


def _emitted(stdout: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(EMF blob, metric definition) for every metric of the blobs Powertools printed."""
    for line in stdout.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            blob = json.loads(line)
            for directive in blob["_aws"]["CloudWatchMetrics"]:
                for metric in directive["Metrics"]:
                    yield blob, metric


def emitted_metric_values(stdout: str) -> dict[str, list[float]]:
    """Metric name -> every value, from the CloudWatch EMF blobs Powertools printed."""
    found: dict[str, list[float]] = {}
    for blob, metric in _emitted(stdout):
        values = blob[metric["Name"]]
        found.setdefault(metric["Name"], []).extend(
            values if isinstance(values, list) else [values]
        )
    return found


def emitted_metric_units(stdout: str) -> dict[str, str | None]:
    """Metric name -> the unit CloudWatch gets (None when Powertools was given none)."""
    return {metric["Name"]: metric.get("Unit") for _, metric in _emitted(stdout)}


def emitted_metrics(stdout: str) -> dict[str, float]:
    """Metric name -> its value, for handlers that emit each metric once."""
    return {name: values[-1] for name, values in emitted_metric_values(stdout).items()}


@contextmanager
def logger_output(logger: Any) -> Iterator[io.StringIO]:
    """Everything a Powertools Logger writes while inside, as the JSON lines CloudWatch gets.

    The stream is swapped without `setStream`, which would flush the one it replaces: that may
    be a capture pytest already closed, when pytest runs more than once in a process (mutmut).
    """
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    previous, handler.stream = handler.stream, stream
    try:
        yield stream
    finally:
        handler.stream = previous


def in_this_thread[**P, R](fake: Callable[P, R], real: Callable[P, R]) -> Callable[P, R]:
    """`fake` for the thread that asks, `real` for every other. Patching a function of the time
    module patches it for every thread in the process, and a thread another test left running
    (a Kafka client's I/O thread) must neither read a test's fake clock nor skip its sleeps."""
    caller = threading.get_ident()

    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return fake(*args, **kwargs) if threading.get_ident() == caller else real(*args, **kwargs)

    return call
