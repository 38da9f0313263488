"""Fault injection for the local stack: real network faults, on loopback, switched by tests.

`HttpFaultProxy` sits between the functions and moto_server and answers chosen AWS calls with
the errors AWS sends (SES throttling, S3 SlowDown), or holds them (S3 writes held until released).
`TcpFaultProxy` sits between every Kafka client and the broker (the broker advertises the
proxy's address) and can cut all connections, so "the broker is unreachable" without
restarting it and losing its in-memory data.
"""

from __future__ import annotations

import json
import random
import select
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from devstack.ports import LOOPBACK


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def action(self) -> str | None:
        """The query-protocol action (SES, SQS...), from the form body or the query string."""
        for source in (self.body.decode(errors="replace"), self.query):
            found = parse_qs(source).get("Action")
            if found:
                return found[0]
        return None


@dataclass
class Fault:
    """Fail matching requests with `status`/`body` at `rate`, until `until` (monotonic) or
    `times` injections, whichever comes first."""

    matches: Callable[[Request], bool]
    status: int
    body: bytes
    rate: float = 1.0
    until: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    injected: int = 0
    times: int | None = None
    # Hold the request until `hold` is set (at most HOLD_LIMIT_S); with status 0 it then goes
    # through.
    hold: threading.Event | None = None

    def release(self) -> None:
        if self.hold is not None:
            self.hold.set()

    # Each fault samples its own sequence: which calls fail never depends on what other faults,
    # or earlier tests, drew before.
    sampler: random.Random = field(
        default_factory=lambda: random.Random(7),  # noqa: S311 -- fault sampling, not security
        repr=False,
    )


def _ses_error(code: str, message: str) -> bytes:
    """An SES (query protocol) error response, as the service writes it."""
    return (
        '<ErrorResponse xmlns="http://ses.amazonaws.com/doc/2010-12-01/"><Error><Type>Sender</Type>'
        f"<Code>{code}</Code><Message>{message}</Message></Error>"
        f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    ).encode()


def ses_throttling(action: str = "SendBulkTemplatedEmail", rate: float = 1.0) -> Fault:
    body = _ses_error("Throttling", "Maximum sending rate exceeded.")
    return Fault(
        lambda r: r.action == action, 400, body, rate, headers={"Content-Type": "text/xml"}
    )


def s3_put_failures(bucket: str, seconds: float) -> Fault:
    body = (
        "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
        f"<RequestId>{uuid.uuid4().hex[:16]}</RequestId></Error>"
    ).encode()
    return Fault(
        lambda r: r.method == "PUT" and r.path.startswith(f"/{bucket}/") and not r.query,
        503,
        body,
        until=time.monotonic() + seconds,
        headers={"Content-Type": "application/xml"},
    )


HOLD_LIMIT_S = 60.0


def s3_writes_held(bucket: str) -> Fault:
    """PutObject to `bucket` held until the fault's `release()`: invocations stay in flight
    while a test moves their partitions to another poller."""
    return Fault(
        lambda r: r.method == "PUT" and r.path.startswith(f"/{bucket}/") and not r.query,
        0,
        b"",
        hold=threading.Event(),
    )


def dynamodb_failures(
    operation: str,
    key_contains: str,
    times: int,
    error: str = "InternalServerError",
    status: int = 500,
) -> Fault:
    """DynamoDB answering `error` to `times` calls of `operation` whose request names a key
    containing `key_contains` (say, the email notifier's records only)."""
    body = json.dumps(
        {"__type": f"com.amazonaws.dynamodb.v20120810#{error}", "message": f"{error} (injected)"}
    ).encode()
    return Fault(
        lambda r: (
            r.headers.get("X-Amz-Target", "").endswith(f".{operation}")
            and key_contains.encode() in r.body
        ),
        status,
        body,
        times=times,
        headers={"Content-Type": "application/x-amz-json-1.0"},
    )


def ses_refuses_calls_to(address: str) -> Fault:
    """SES refusing a whole SendBulkTemplatedEmail that names `address`, as the SES sandbox
    does for a recipient that is not verified (MessageRejected)."""
    body = _ses_error(
        "MessageRejected",
        "Email address is not verified. The following identities failed the check in region "
        f"EU-WEST-1: {address}",
    )

    def names_address(request: Request) -> bool:
        if request.action != "SendBulkTemplatedEmail":
            return False
        form = parse_qs(request.body.decode(errors="replace"))
        return any(address in values for key, values in form.items() if "ToAddresses" in key)

    return Fault(names_address, 400, body, headers={"Content-Type": "text/xml"})


class HttpFaultProxy:
    """A pass-through HTTP proxy to `upstream` that injects the active faults."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def start(self) -> HttpFaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def _fault_for(self, request: Request) -> Fault | None:
        with self._lock:
            now = time.monotonic()
            for fault in self.faults:
                if fault.until is not None and now > fault.until:
                    continue
                if fault.times is not None and fault.injected >= fault.times:
                    continue
                if fault.matches(request) and fault.sampler.random() < fault.rate:
                    fault.injected += 1
                    return fault
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                request = Request(
                    self.command, url.path, url.query, dict(self.headers.items()), body
                )
                fault = proxy._fault_for(request)
                if fault is not None:
                    if fault.hold is not None:
                        fault.hold.wait(HOLD_LIMIT_S)
                    if fault.status:
                        self._send(fault.status, fault.headers, fault.body)
                        return
                upstream = urllib.request.Request(  # noqa: S310 -- our own moto_server
                    proxy.upstream + self.path,
                    data=body if self.command not in {"GET", "HEAD"} else None,
                    method=self.command,
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                )
                try:
                    with urllib.request.urlopen(upstream, timeout=60) as response:  # noqa: S310
                        self._send(response.status, dict(response.headers.items()), response.read())
                except urllib.error.HTTPError as error:
                    self._send(error.code, dict(error.headers.items()), error.read())

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in {"content-length", "connection", "transfer-encoding"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _forward

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


class TcpFaultProxy:
    """Forwards TCP connections from a loopback port to `target`; `cut()` drops them all."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self._listener = socket.create_server((LOOPBACK, port))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._stop = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> TcpFaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.cut()
        self._thread.join(2)
        self._listener.close()

    def cut(self) -> None:
        """The broker becomes unreachable: open connections die, new ones are refused."""
        self._up.clear()
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    def restore(self) -> None:
        self._up.set()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections.update({client, upstream})
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        sockets = [client, upstream]
        try:
            while self._up.is_set():
                readable, _, _ = select.select(sockets, [], [], 0.2)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is client else client).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._connections.discard(client)
                self._connections.discard(upstream)
            for sock in sockets:
                sock.close()
