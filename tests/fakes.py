"""Small real stand-ins shared by tests: a Lambda context and an HTTP server that records PUTs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devstack.context import LambdaContext

__all__ = ["LambdaContext", "Recorded", "emitted_metrics", "recording_http_server"]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@contextmanager
def recording_http_server() -> Iterator[tuple[str, list[Recorded]]]:
    """A real HTTP server on 127.0.0.1 that answers 200 to PUT and records each request."""
    received: list[Recorded] = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(Recorded("PUT", self.path, dict(self.headers.items()), body))
            self.send_response(200)
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


def emitted_metrics(stdout: str) -> dict[str, Any]:
    """Metric values from the CloudWatch EMF blob(s) Powertools printed."""
    values: dict[str, Any] = {}
    for text in stdout.splitlines():
        if text.startswith("{") and '"_aws"' in text:
            blob = json.loads(text)
            for directive in blob["_aws"]["CloudWatchMetrics"]:
                for metric in directive["Metrics"]:
                    value = blob[metric["Name"]]
                    values[metric["Name"]] = value[0] if isinstance(value, list) else value
    return values
