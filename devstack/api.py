"""The local REST API: every `Type: Api` event in template.yaml, served on 127.0.0.1.

Each request becomes the REST API proxy event (payload v1) that API Gateway sends, and the
function's answer becomes the HTTP response, as API Gateway would make it: unknown routes get
403 "Missing Authentication Token", an unhandled function error 502, a timeout 504. The API key
the stage requires in AWS is not asked for locally. The event builder is ours rather than SAM
CLI's: see docs/design.md, "Ours or a library's".
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from devstack.functions import Invocation
from devstack.ports import LoopbackServer
from devstack.template import ACCOUNT_ID

MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
LOCAL_API_ID = "localapi01"


@dataclass(frozen=True)
class Route:
    function: str
    method: str  # upper case, or ANY
    resource: str  # the template's path, e.g. /orders or /orders/{id}
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, function: str, method: str, path: str) -> Route:
        regex = re.sub(r"\\\{(\w+)\\\+?\\\}", r"(?P<\1>[^/]+)", re.escape(path))
        regex = regex.replace(r"(?P<proxy>[^/]+)", r"(?P<proxy>.+)")
        return cls(function, method.upper(), path, re.compile(f"^{regex}$"))


def routes_of(functions: dict[str, Any]) -> list[Route]:
    """The Api events of every function (a FunctionSpec's `events`)."""
    routes = []
    for logical_id, spec in functions.items():
        for event in spec.events.values():
            if event.get("Type") == "Api":
                props = event["Properties"]
                routes.append(Route.of(logical_id, props["Method"], props["Path"]))
    return routes


def proxy_event(
    route: Route,
    method: str,
    raw_path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    stage: str,
    path_parameters: dict[str, str],
) -> dict[str, Any]:
    """API Gateway's REST proxy event (v1) for one request."""
    url = urlsplit(raw_path)
    query = parse_qsl(url.query, keep_blank_values=True)
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in headers:
        single[name] = value
        multi.setdefault(name, []).append(value)
    query_single: dict[str, str] = {}
    query_multi: dict[str, list[str]] = {}
    for name, value in query:
        query_single[name] = value
        query_multi.setdefault(name, []).append(value)
    try:
        text, encoded = body.decode("utf-8"), False
    except UnicodeDecodeError:
        # As with binaryMediaTypes */*: bytes that are not text arrive base64-encoded.
        text, encoded = base64.b64encode(body).decode(), True
    now = datetime.now(UTC)
    request_id = str(uuid.uuid4())
    user_agent = single.get("User-Agent") or single.get("user-agent")
    return {
        "resource": route.resource,
        "path": url.path,
        "httpMethod": method,
        "headers": single or None,
        "multiValueHeaders": multi or None,
        "queryStringParameters": query_single or None,
        "multiValueQueryStringParameters": query_multi or None,
        "pathParameters": path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "local",
            "resourcePath": route.resource,
            "httpMethod": method,
            "extendedRequestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "path": f"/{stage}{url.path}",
            "accountId": ACCOUNT_ID,
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": "localhost",
            "requestId": request_id,
            "identity": {
                "sourceIp": source_ip,
                "userAgent": user_agent,
                "accessKey": None,
                "accountId": None,
                "caller": None,
                "user": None,
                "userArn": None,
                "apiKey": None,
                "apiKeyId": None,
                "cognitoIdentityPoolId": None,
                "cognitoIdentityId": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "principalOrgId": None,
            },
            "domainName": "localhost",
            "apiId": LOCAL_API_ID,
        },
        "body": text if body else None,
        "isBase64Encoded": encoded,
    }


Invoker = Callable[[str, dict[str, Any]], Invocation]


class LocalApi(LoopbackServer):
    """A threaded HTTP server on 127.0.0.1 that hands requests to the functions."""

    thread_name = "local-api"

    def __init__(
        self,
        routes: list[Route],
        invoke: Invoker,
        port: int,
        stage: str = "local",
        log: Callable[[str], None] = print,
    ) -> None:
        self.routes = routes
        self.invoke = invoke
        self.stage = stage
        self.log = log
        super().__init__(port, self._handler_class())

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            found = route.pattern.match(path)
            if found and route.method in {method, "ANY"}:
                return route, found.groupdict()
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "orderstream-devstack"

            def _serve(self) -> None:
                started = time.perf_counter()
                path = urlsplit(self.path).path
                body = self._body()
                if body is None:
                    # The rest of the request is left unread: the connection must not be reused.
                    self.close_connection = True
                    self._reply(413, {"Connection": ["close"]}, b'{"message":"Request Too Long"}')
                    return
                found = api.match(self.command, path)
                if found is None:
                    # What API Gateway answers for a route or method it does not have.
                    self._reply(403, {}, b'{"message":"Missing Authentication Token"}')
                    return
                route, parameters = found
                event = proxy_event(
                    route,
                    self.command,
                    self.path,
                    list(self.headers.items()),
                    body,
                    self.client_address[0],
                    api.stage,
                    parameters,
                )
                result = api.invoke(route.function, event)
                status, headers, payload = to_http(result)
                self._reply(status, headers, payload)
                took = (time.perf_counter() - started) * 1000
                api.log(f"{route.function:<24} {self.command} {path} -> {status} {took:7.0f} ms")

            def _body(self) -> bytes | None:
                """The request body (plain or chunked), or None when it exceeds the limit."""
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks: list[bytes] = []
                    size = 0
                    while True:
                        length = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if length == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        size += length
                        if size > MAX_BODY_BYTES:
                            return None
                        chunks.append(self.rfile.read(length))
                        self.rfile.readline()  # the CRLF after each chunk
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    return None
                return self.rfile.read(length) if length else b""

            def _reply(self, status: int, headers: dict[str, list[str]], body: bytes) -> None:
                self.send_response(status)
                has_type = any(name.lower() == "content-type" for name in headers)
                for name, values in headers.items():
                    if name.lower() in {"content-length", "transfer-encoding"}:
                        continue
                    for value in values:
                        self.send_header(name, value)
                if not has_type:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve
            do_TRACE = do_CONNECT = _serve

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def to_http(result: Invocation) -> tuple[int, dict[str, list[str]], bytes]:
    """The HTTP response API Gateway makes of a proxy integration's answer."""
    if not result.ok:
        if (result.error or {}).get("errorType") == "Sandbox.Timedout":
            return 504, {}, b'{"message": "Endpoint request timed out"}'
        return 502, {}, b'{"message": "Internal server error"}'
    answer = result.payload
    if not isinstance(answer, dict) or not isinstance(answer.get("statusCode"), int):
        return 502, {}, b'{"message": "Internal server error"}'  # a malformed proxy response
    headers: dict[str, list[str]] = {}
    for name, value in (answer.get("headers") or {}).items():
        headers[name] = [str(value)]
    for name, values in (answer.get("multiValueHeaders") or {}).items():
        headers[name] = [str(v) for v in values]
    body = answer.get("body") or ""
    payload = base64.b64decode(body) if answer.get("isBase64Encoded") else str(body).encode()
    return int(answer["statusCode"]), headers, payload
