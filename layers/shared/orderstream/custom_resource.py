"""CloudFormation custom resources that always answer.

A custom resource that never answers leaves the stack waiting (ServiceTimeout, else an hour).
`answer()` guarantees exactly one response per request: the outcome of the work, the error it
raised, or a FAILED sent shortly before the Lambda would time out. Ours rather than crhelper:
see docs/design.md, "Ours or a library's".
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast, get_args

logger = logging.getLogger(__name__)

# Answer this long before the function's own timeout, so the PUT itself has time to finish.
SAFETY_MARGIN_MS = 10_000
MAX_REASON = 3_000  # CloudFormation truncates the response body at 4 KiB
# A custom resource runs seconds after CloudFormation created or changed its function's role,
# and IAM is eventually consistent: a denial then is a policy not yet in force.
IAM_PROPAGATION_S = 60.0


def while_iam_propagates[T](
    call: Callable[[], T],
    denied: Callable[[Exception], bool],
    sleep: Callable[[float], None] = time.sleep,
    window_s: float = IAM_PROPAGATION_S,
) -> T:
    """`call()`, again after 1, 2, 4... (at most 10) seconds while it is `denied`, until a wait
    would end past `window_s`; then the denial is raised."""
    waited, delay = 0.0, 1.0
    while True:
        try:
            return call()
        except Exception as error:
            if not denied(error) or waited + delay > window_s:
                raise
            logger.warning("denied, retrying while IAM propagates", extra={"delay_s": delay})
            sleep(delay)
            waited, delay = waited + delay, min(delay * 2, 10.0)


RequestType = Literal["Create", "Update", "Delete"]
_REQUEST_TYPES: Final = get_args(RequestType)


@dataclass(frozen=True, slots=True)
class CustomResourceRequest:
    """The fields of CloudFormation's custom-resource request that the functions use.

    Read by hand rather than by a pydantic model: pydantic's import was a fifth of the topic
    provisioner's cold start, and these are eight keys of a document CloudFormation writes."""

    request_type: RequestType
    response_url: str
    stack_id: str
    request_id: str
    logical_resource_id: str
    physical_resource_id: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    old_properties: Mapping[str, Any] | None = None

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> CustomResourceRequest:
        """The request in `event`; ValueError naming the first field that is missing or wrong."""
        request_type = event.get("RequestType")
        if request_type not in _REQUEST_TYPES:
            raise ValueError(f"RequestType must be one of {_REQUEST_TYPES}, not {request_type!r}")
        return cls(
            request_type=cast(RequestType, request_type),
            response_url=_text(event, "ResponseURL"),
            stack_id=_text(event, "StackId"),
            request_id=_text(event, "RequestId"),
            logical_resource_id=_text(event, "LogicalResourceId"),
            physical_resource_id=_text(event, "PhysicalResourceId", required=False),
            properties=_object(event, "ResourceProperties") or {},
            old_properties=_object(event, "OldResourceProperties"),
        )


def _text(event: Mapping[str, Any], name: str, *, required: bool = True) -> Any:
    value = event.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {value!r}"[:200])
    return value


def _object(event: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    value = event.get(name)
    if value is not None and not isinstance(value, Mapping):
        raise ValueError(f"{name} must be an object, not {value!r}"[:200])
    return value


@dataclass(frozen=True, slots=True)
class Answer:
    physical_resource_id: str
    data: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""


Sender = Callable[[str, bytes], None]


def put_response(url: str, body: bytes) -> None:
    """PUT to the pre-signed S3 URL CloudFormation gave us, retrying transient failures."""
    for attempt in range(4):
        request = urllib.request.Request(  # noqa: S310 -- CloudFormation's own https URL
            url, data=body, method="PUT", headers={"Content-Type": ""}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                response.read()
            return
        except OSError:
            if attempt == 3:
                raise
            time.sleep(0.5 * 2**attempt)


def response_body(
    request: CustomResourceRequest,
    status: Literal["SUCCESS", "FAILED"],
    physical_resource_id: str,
    reason: str,
    data: Mapping[str, str],
) -> bytes:
    return json.dumps(
        {
            "Status": status,
            "Reason": reason[:MAX_REASON],
            "PhysicalResourceId": physical_resource_id,
            "StackId": request.stack_id,
            "RequestId": request.request_id,
            "LogicalResourceId": request.logical_resource_id,
            "NoEcho": False,
            "Data": dict(data),
        }
    ).encode()


def answer(
    request: CustomResourceRequest,
    work: Callable[[CustomResourceRequest], Answer],
    remaining_ms: Callable[[], int],
    send: Sender = put_response,
) -> Literal["SUCCESS", "FAILED"]:
    """Run `work` and report its outcome to CloudFormation, exactly once, whatever happens.
    Returns the status CloudFormation was sent (FAILED when the timer answered first)."""
    lock = threading.Lock()
    answered = False
    # Until the work decides, failures keep the id CloudFormation knows (or the request's own),
    # so a failed Create followed by its rollback Delete refers to something we recognise.
    fallback_id = request.physical_resource_id or f"failed-{request.request_id}"

    def reply(status: Literal["SUCCESS", "FAILED"], outcome: Answer) -> bool:
        nonlocal answered
        with lock:
            if answered:
                return False
            answered = True
        body = response_body(
            request, status, outcome.physical_resource_id, outcome.reason, outcome.data
        )
        send(request.response_url, body)
        logger.info("answered CloudFormation", extra={"status": status, "reason": outcome.reason})
        return True

    budget_s = max(0.0, (remaining_ms() - SAFETY_MARGIN_MS) / 1000)
    timer = threading.Timer(
        budget_s,
        reply,
        args=("FAILED", Answer(fallback_id, reason="timed out before the work finished")),
    )
    timer.daemon = True
    timer.start()
    try:
        outcome = work(request)
        status: Literal["SUCCESS", "FAILED"] = "SUCCESS"
    except Exception as exc:
        logger.exception("custom resource work failed")
        outcome = Answer(fallback_id, reason=f"{type(exc).__name__}: {exc}")
        status = "FAILED"
    finally:
        timer.cancel()
    return status if reply(status, outcome) else "FAILED"


def respond(
    event: Mapping[str, Any],
    work: Callable[[CustomResourceRequest], Answer],
    remaining_ms: Callable[[], int],
    log_keys: Callable[..., None],
) -> dict[str, str]:
    """A custom-resource handler's whole body: parse the request, name it in the logs
    (`log_keys`, say a Powertools logger's `append_keys`), run `work` and answer once."""
    request = CustomResourceRequest.from_event(event)
    log_keys(request_type=request.request_type, stack_request_id=request.request_id)
    return {"Status": answer(request, work, remaining_ms)}
