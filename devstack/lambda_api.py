"""Lambda's own HTTP API for the local functions, served on 127.0.0.1.

boto3's lambda client, given this endpoint, works as against AWS for the calls the operator
tools make: Invoke (RequestResponse, Event, DryRun), GetFunctionConfiguration and
ListEventSourceMappings. Answers have AWS's shapes and headers, and errors its rest-json form
(the code in x-amzn-ErrorType, the message in the body), so boto3 raises the modeled exception
(ResourceNotFoundException...). A function is found by name or ARN, as in AWS (a template
logical id is no name there, so it is none here); only $LATEST exists. Signatures are not
checked, and LogType=Tail returns no log.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from devstack.esm import MappingSpec
from devstack.functions import FunctionSpec, Invocation
from devstack.msk_event import MAX_PAYLOAD_BYTES
from devstack.ports import LoopbackServer
from devstack.template import ACCOUNT_ID, REGION, Resolver

API_VERSION = "2015-03-31"
LATEST = "$LATEST"
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
DEFAULT_MAX_ITEMS = 100  # ListEventSourceMappings' page size when MaxItems is not given
# botocore's NamespacedFunctionName: a name, a partial ARN or an ARN, with an optional qualifier.
FUNCTION_NAME_PATTERN = (
    r"(arn:(aws[a-zA-Z-]*)?:lambda:)?((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?"
    r"(\d{12}:)?(function:)?([a-zA-Z0-9-_\.]+)(:(\$LATEST(\.PUBLISHED)?|[a-zA-Z0-9-_]+))?"
)
_FUNCTION_NAME = re.compile(
    r"^(?:arn:(?:aws[a-zA-Z-]*)?:lambda:)?"
    r"(?:(?P<region>(?:eusc-)?[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d):)?"
    r"(?:(?P<account>\d{12}):)?(?:function:)?(?P<name>[a-zA-Z0-9-_.]+)"
    r"(?::(?P<qualifier>\$LATEST(?:\.PUBLISHED)?|[a-zA-Z0-9-_]+))?$"
)

Invoker = Callable[[str, Any], Invocation]  # (logical id, event) -> outcome


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, document: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(document).encode(), headers or {})


def error_reply(status: int, code: str, message: str, user: bool = True) -> Reply:
    """An error as Lambda sends it: botocore takes the code from x-amzn-ErrorType (the body's
    "Type" is only User/Service) and the message from the body's "message"."""
    body: dict[str, Any] = {"Type": "User", "message": message} if user else {"message": message}
    return json_reply(status, body, {"x-amzn-ErrorType": code})


def function_arn(name: str, qualifier: str | None = None) -> str:
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def template_properties(resolver: Resolver) -> dict[str, dict[str, Any]]:
    """What GetFunctionConfiguration reports that a FunctionSpec does not hold (Runtime,
    Architectures), from each function's properties with Globals applied."""
    template = resolver.template
    defaults = template.get("Globals", {}).get("Function", {})
    found: dict[str, dict[str, Any]] = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        props = resource["Properties"]
        found[logical_id] = {
            key: resolver.resolve(props[key] if key in props else defaults[key])
            for key in ("Runtime", "Architectures")
            if key in props or key in defaults
        }
    return found


def mapping_configuration(
    spec: MappingSpec, function_name: str, last_modified: float
) -> dict[str, Any]:
    """An MSK mapping as ListEventSourceMappings describes it."""
    config: dict[str, Any] = {
        "UUID": spec.uuid,
        "EventSourceMappingArn": (
            f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:event-source-mapping:{spec.uuid}"
        ),
        "FunctionArn": function_arn(function_name),
        "EventSourceArn": spec.event_source_arn,
        "Topics": list(spec.topics),
        "StartingPosition": spec.starting_position,
        "BatchSize": spec.batch_size,
        # Whole seconds in the API; the local default (0.5 s, Lambda's for Kafka) reads as 0.
        "MaximumBatchingWindowInSeconds": int(spec.batching_window_s),
        "MaximumRetryAttempts": spec.maximum_retry_attempts,
        "MaximumRecordAgeInSeconds": spec.maximum_record_age_s,
        "BisectBatchOnFunctionError": spec.bisect_on_error,
        "FunctionResponseTypes": ["ReportBatchItemFailures"]
        if spec.report_batch_item_failures
        else [],
        "AmazonManagedKafkaEventSourceConfig": {"ConsumerGroupId": spec.group_id},
        "State": "Enabled",
        "StateTransitionReason": "USER_INITIATED",
        "LastModified": last_modified,
    }
    if spec.filters:
        config["FilterCriteria"] = {
            "Filters": [{"Pattern": json.dumps(pattern)} for pattern in spec.filters]
        }
    if spec.on_failure_bucket:
        config["DestinationConfig"] = {
            "OnFailure": {"Destination": f"arn:aws:s3:::{spec.on_failure_bucket}"}
        }
    return config


class LambdaApiServer(LoopbackServer):
    """A threaded HTTP server on 127.0.0.1 that answers Lambda API calls for the functions."""

    thread_name = "lambda-api"

    def __init__(
        self,
        functions: Mapping[str, tuple[str, FunctionSpec]],
        invoke: Invoker,
        mappings: Callable[[], list[MappingSpec]],
        port: int = 0,
        properties: Mapping[str, Mapping[str, Any]] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        """`functions`: logical id -> (physical name, spec); `mappings` is asked on every
        request, as the stack restarts its mappings; `properties`: see template_properties."""
        self.functions = dict(functions)
        self.invoke = invoke
        self.mappings = mappings
        self.properties = {k: dict(v) for k, v in (properties or {}).items()}
        self.log = log
        self.started = datetime.now(UTC)
        self._by_name = {name: logical_id for logical_id, (name, _) in self.functions.items()}
        super().__init__(port, self._handler_class())

    # ------------------------------------------------------------------ requests

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """One request: `headers` with lower-case names."""
        url = urlsplit(target)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        match method, parts:
            case "POST", [version, "functions", name, "invocations"] if version == API_VERSION:
                return self._invoke(name, query, headers, body)
            case "GET", [version, "functions", name, "configuration"] if version == API_VERSION:
                return self._configuration(name, query)
            case "GET", [version, "event-source-mappings"] if version == API_VERSION:
                return self._list_mappings(query)  # botocore asks with and without a final /
        return error_reply(
            404, "UnknownOperationException", f"{method} {url.path} is not served locally"
        )

    def resolve(self, given: str, qualifier: str | None = None) -> str | Reply:
        """The logical id of a function given by name or (partial) ARN, or the error Lambda
        answers: ValidationException for a malformed name, else 404."""
        found = _FUNCTION_NAME.match(given) if len(given) <= 256 else None
        if found is None:
            return error_reply(
                400,
                "ValidationException",
                f"1 validation error detected: Value '{given}' at 'functionName' failed to "
                f"satisfy constraint: Member must satisfy regular expression pattern: "
                f"{FUNCTION_NAME_PATTERN}",
                user=False,
            )
        name = found["name"]
        qualifier = qualifier or found["qualifier"]
        logical_id = self._by_name.get(name)
        elsewhere = found["region"] not in (None, REGION) or found["account"] not in (
            None,
            ACCOUNT_ID,
        )
        if logical_id is None or elsewhere or qualifier not in (None, LATEST):
            arn = f"arn:aws:lambda:{found['region'] or REGION}:{found['account'] or ACCOUNT_ID}"
            arn += f":function:{name}" + (f":{qualifier}" if qualifier else "")
            return error_reply(404, "ResourceNotFoundException", f"Function not found: {arn}")
        return logical_id

    def _invoke(
        self, name: str, query: dict[str, str], headers: Mapping[str, str], body: bytes
    ) -> Reply:
        started = time.perf_counter()
        logical_id = self.resolve(name, query.get("Qualifier"))
        if isinstance(logical_id, Reply):
            return logical_id
        kind = headers.get("x-amz-invocation-type") or "RequestResponse"
        if kind not in INVOCATION_TYPES:
            return error_reply(
                400,
                "ValidationException",
                f"1 validation error detected: Value '{kind}' at 'invocationType' failed to "
                f"satisfy constraint: Member must satisfy enum value set: "
                f"[{', '.join(INVOCATION_TYPES)}]",
                user=False,
            )
        try:
            # Lambda hands a function {} when the request has no payload.
            event = json.loads(body.decode("utf-8")) if body.strip() else {}
        except ValueError as exc:
            return error_reply(
                400,
                "InvalidRequestContentException",
                f"Could not parse request body into json: {exc}",
            )
        request_id = str(uuid.uuid4())
        if kind == "DryRun":
            return Reply(204, headers={"x-amzn-RequestId": request_id})
        if kind == "Event":
            threading.Thread(
                target=self._invoke_async,
                args=(logical_id, event, started),
                name=f"lambda-event-{logical_id}",
                daemon=True,
            ).start()
            return Reply(202, headers={"x-amzn-RequestId": request_id})
        result = self.invoke(logical_id, event)
        reply = json_reply(
            200,
            result.payload if result.ok else result.error,
            {"X-Amz-Executed-Version": LATEST, "x-amzn-RequestId": result.request_id},
        )
        if not result.ok:
            reply.headers["X-Amz-Function-Error"] = "Unhandled"
        self._log_invocation(logical_id, kind, result, started)
        return reply

    def _invoke_async(self, logical_id: str, event: Any, started: float) -> None:
        self._log_invocation(logical_id, "Event", self.invoke(logical_id, event), started)

    def _log_invocation(
        self, logical_id: str, kind: str, result: Invocation, started: float
    ) -> None:
        outcome = "ok" if result.ok else f"Unhandled {(result.error or {}).get('errorType')}"
        took = (time.perf_counter() - started) * 1000
        self.log(f"{logical_id:<24} Invoke {kind} -> {outcome} {took:7.0f} ms")

    def _configuration(self, name: str, query: dict[str, str]) -> Reply:
        logical_id = self.resolve(name, query.get("Qualifier"))
        if isinstance(logical_id, Reply):
            return logical_id
        physical, spec = self.functions[logical_id]
        return json_reply(
            200,
            {
                "FunctionName": physical,
                "FunctionArn": function_arn(physical),
                **self.properties.get(logical_id, {}),
                "Handler": spec.handler,
                "Timeout": spec.timeout_s,
                "MemorySize": spec.memory_mb,
                "Environment": {"Variables": dict(spec.environment)},
                "Version": LATEST,
                "PackageType": "Zip",
                "State": "Active",
                "LastUpdateStatus": "Successful",
                "LastModified": self.started.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
            },
        )

    def _list_mappings(self, query: dict[str, str]) -> Reply:
        """All mappings, or those of one function or event source; a function that does not
        exist has none (Lambda does not answer 404 here)."""
        specs = self.mappings()
        if "FunctionName" in query:
            logical_id = self.resolve(query["FunctionName"])
            if isinstance(logical_id, Reply):
                if logical_id.status != 404:
                    return logical_id
                specs = []
            else:
                specs = [s for s in specs if s.function == logical_id]
        if "EventSourceArn" in query:
            specs = [s for s in specs if s.event_source_arn == query["EventSourceArn"]]
        known = [s for s in specs if s.function in self.functions]
        try:
            start = int(query.get("Marker") or 0)
            size = int(query.get("MaxItems") or DEFAULT_MAX_ITEMS)
        except ValueError:
            return error_reply(400, "InvalidParameterValueException", "invalid Marker or MaxItems")
        if not 1 <= size <= 10_000:
            return error_reply(
                400, "InvalidParameterValueException", "MaxItems must be between 1 and 10000"
            )
        modified = self.started.timestamp()
        page: dict[str, Any] = {
            "EventSourceMappings": [
                mapping_configuration(s, self.functions[s.function][0], modified)
                for s in known[start : start + size]
            ]
        }
        if start + size < len(known):
            page["NextMarker"] = str(start + size)
        return json_reply(200, page)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "orderstream-devstack"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_PAYLOAD_BYTES:
                    # The body is left unread: the connection must not be reused.
                    self.close_connection = True
                    reply = error_reply(
                        413,
                        "RequestTooLargeException",
                        f"Request must be smaller than {MAX_PAYLOAD_BYTES} bytes for the "
                        "InvokeFunction operation",
                    )
                    reply.headers["Connection"] = "close"
                else:
                    body = self.rfile.read(length) if length else b""
                    headers = {name.lower(): value for name, value in self.headers.items()}
                    reply = server.handle(self.command, self.path, headers, body)
                reply.headers.setdefault("x-amzn-RequestId", str(uuid.uuid4()))
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
