"""Custom resources always answer CloudFormation exactly once."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, ClassVar

import pytest

from orderstream import custom_resource
from orderstream.custom_resource import (
    SAFETY_MARGIN_MS,
    Answer,
    CustomResourceRequest,
    answer,
    put_response,
    while_iam_propagates,
)
from tests.fakes import in_this_thread, recording_http_server
from tests.samples import load_event


class Sent:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, url: str, body: bytes) -> None:
        with self.lock:
            self.bodies.append(json.loads(body))


def request(name: str = "cfn-topics-create.json") -> CustomResourceRequest:
    return CustomResourceRequest.from_event(load_event(name))


def test_success_reports_data_and_the_physical_id() -> None:
    sent = Sent()
    status = answer(
        request(), lambda r: Answer("pid-1", {"BootstrapServers": "b:9098"}), lambda: 60_000, sent
    )
    assert status == "SUCCESS"
    [body] = sent.bodies
    assert body["Status"] == "SUCCESS"
    assert body["PhysicalResourceId"] == "pid-1"
    assert body["Data"] == {"BootstrapServers": "b:9098"}
    assert body["RequestId"] == request().request_id
    assert body["LogicalResourceId"] == "KafkaTopics"


def test_an_exception_becomes_failed_with_the_reason() -> None:
    def boom(_: CustomResourceRequest) -> Answer:
        raise RuntimeError("cluster unreachable")

    sent = Sent()
    assert answer(request(), boom, lambda: 60_000, sent) == "FAILED"
    [body] = sent.bodies
    assert body["Status"] == "FAILED"
    assert "cluster unreachable" in body["Reason"]
    assert body["PhysicalResourceId"].startswith("failed-")  # a Create that made nothing


def test_work_that_outlives_the_function_is_answered_failed_once() -> None:
    release = threading.Event()

    def hangs(_: CustomResourceRequest) -> Answer:
        release.wait(5)
        return Answer("late")

    sent = Sent()
    worker = threading.Thread(
        target=answer, args=(request(), hangs, lambda: SAFETY_MARGIN_MS + 100, sent)
    )
    worker.start()
    for _ in range(100):
        if sent.bodies:
            break
        time.sleep(0.05)
    release.set()
    worker.join(5)
    assert [b["Status"] for b in sent.bodies] == ["FAILED"]  # the late success is not sent
    assert "timed out" in sent.bodies[0]["Reason"]


def test_delete_keeps_the_physical_id_cloudformation_sent() -> None:
    sent = Sent()
    delete = request("cfn-topics-delete.json")

    def boom(_: CustomResourceRequest) -> Answer:
        raise RuntimeError("x")

    answer(delete, boom, lambda: 60_000, sent)
    assert sent.bodies[0]["PhysicalResourceId"] == delete.physical_resource_id


def test_reason_is_truncated_to_fit_cloudformations_limit() -> None:
    def verbose(_: CustomResourceRequest) -> Answer:
        raise ValueError("x" * 10_000)

    sent = Sent()
    answer(request(), verbose, lambda: 60_000, sent)
    assert len(json.dumps(sent.bodies[0])) < 4096


def test_put_response_over_real_http() -> None:
    with recording_http_server() as (url, received):
        put_response(url + "?X-Amz-Signature=abc", b'{"Status": "SUCCESS"}')
    [call] = received
    assert call.method == "PUT"
    assert call.path == "/response?X-Amz-Signature=abc"
    assert call.body == b'{"Status": "SUCCESS"}'
    # The pre-signed URL is signed without a content type: sending one breaks the signature.
    assert call.headers.get("Content-Type", "") == ""


def test_unparseable_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="RequestType"):
        CustomResourceRequest.from_event(
            {**load_event("cfn-topics-create.json"), "RequestType": "Upsert"}
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"RequestType": None}, "RequestType must be one of"),
        ({"ResponseURL": None}, "ResponseURL must be a string, not None"),
        ({"StackId": 7}, "StackId must be a string, not 7"),
        ({"RequestId": ["r"]}, "RequestId must be a string"),
        ({"LogicalResourceId": None}, "LogicalResourceId must be a string"),
        ({"PhysicalResourceId": 5}, "PhysicalResourceId must be a string, not 5"),
        ({"ResourceProperties": "x"}, "ResourceProperties must be an object, not 'x'"),
        ({"OldResourceProperties": []}, "OldResourceProperties must be an object, not \\[\\]"),
    ],
)
def test_each_field_is_checked_and_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CustomResourceRequest.from_event({**load_event("cfn-topics-create.json"), **change})


def test_a_create_reads_as_cloudformation_wrote_it() -> None:
    event = load_event("cfn-topics-create.json")
    parsed = CustomResourceRequest.from_event(event)
    assert parsed.request_type == "Create"
    assert parsed.response_url == event["ResponseURL"]
    assert parsed.stack_id == event["StackId"]
    assert parsed.request_id == event["RequestId"]
    assert parsed.logical_resource_id == event["LogicalResourceId"]
    assert parsed.physical_resource_id is None
    assert parsed.properties == event["ResourceProperties"]
    assert parsed.old_properties is None
    bare = {k: v for k, v in event.items() if k != "ResourceProperties"}
    assert CustomResourceRequest.from_event(bare).properties == {}
    delete = CustomResourceRequest.from_event(load_event("cfn-topics-delete.json"))
    assert delete.request_type == "Delete"
    assert delete.physical_resource_id == load_event("cfn-topics-delete.json")["PhysicalResourceId"]


def test_a_policy_not_yet_in_force_is_waited_for_a_minute_at_most() -> None:
    """The topic provisioner after its role changed (a new cluster's ARN): MSK refuses the
    Kafka calls until IAM has propagated, then they pass."""
    from kafka.errors import SaslAuthenticationFailedError, TopicAuthorizationFailedError

    from functions.topic_provisioner.app import kafka_denied

    answers: list[Exception | str] = [
        SaslAuthenticationFailedError("not yet"),
        TopicAuthorizationFailedError("not yet"),
        "created",
    ]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    slept: list[float] = []
    assert while_iam_propagates(call, kafka_denied, slept.append) == "created"
    assert slept == [1.0, 2.0]

    # A denial that outlasts the window is raised; anything else at once.
    def denied() -> str:
        raise TopicAuthorizationFailedError("still")

    slept.clear()
    with pytest.raises(TopicAuthorizationFailedError):
        while_iam_propagates(denied, kafka_denied, slept.append, window_s=30)
    assert slept == [1.0, 2.0, 4.0, 8.0, 10.0]  # 25 s waited; another 10 would pass 30

    # A wait that ends exactly at the window still happens: 1 + 2 = 3 s of a 3 s window.
    slept.clear()
    with pytest.raises(TopicAuthorizationFailedError):
        while_iam_propagates(denied, kafka_denied, slept.append, window_s=3)
    assert slept == [1.0, 2.0]

    def broken() -> str:
        raise ValueError("not a denial")

    slept.clear()
    with pytest.raises(ValueError, match="not a denial"):
        while_iam_propagates(broken, kafka_denied, slept.append)
    assert slept == []


def test_each_wait_for_iam_is_logged_with_its_delay(caplog: pytest.LogCaptureFixture) -> None:
    from kafka.errors import TopicAuthorizationFailedError

    from functions.topic_provisioner.app import kafka_denied

    answers: list[Exception | str] = [TopicAuthorizationFailedError("not yet"), "done"]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with caplog.at_level("WARNING", logger="orderstream.custom_resource"):
        assert while_iam_propagates(call, kafka_denied, lambda s: None) == "done"
    [record] = caplog.records
    assert record.getMessage() == "denied, retrying while IAM propagates"
    assert record.delay_s == 1.0  # type: ignore[attr-defined]


class HeldTimer:
    """threading.Timer, held: the test fires it when it chooses, and sees how it was set."""

    made: ClassVar[list[HeldTimer]] = []

    def __init__(self, interval: float, function: Any, args: tuple[Any, ...]) -> None:
        self.interval, self.function, self.args = interval, function, args
        self.daemon = False
        self.started = self.cancelled = False
        HeldTimer.made.append(self)

    def start(self) -> None:
        self.started = True

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        self.function(*self.args)


@pytest.fixture
def held_timer(monkeypatch: pytest.MonkeyPatch) -> type[HeldTimer]:
    HeldTimer.made = []
    monkeypatch.setattr("orderstream.custom_resource.threading.Timer", HeldTimer)
    return HeldTimer


@pytest.mark.parametrize(
    ("remaining_ms", "budget_s"), [(60_000, 50.0), (SAFETY_MARGIN_MS + 1_500, 1.5), (3_000, 0.0)]
)
def test_the_timer_answers_the_safety_margin_before_the_function_ends(
    held_timer: type[HeldTimer], remaining_ms: int, budget_s: float
) -> None:
    sent = Sent()
    answer(request(), lambda r: Answer("pid-1"), lambda: remaining_ms, sent)
    [timer] = held_timer.made
    assert timer.interval == budget_s
    assert timer.started
    assert timer.daemon  # a daemon: it never keeps a finished function alive
    assert timer.cancelled  # the work answered; the timer must not answer again


def test_a_timer_that_fires_first_answers_failed_and_the_late_outcome_is_dropped(
    held_timer: type[HeldTimer],
) -> None:
    sent = Sent()

    def slow(_: CustomResourceRequest) -> Answer:
        held_timer.made[0].fire()
        return Answer("pid-late", {"K": "v"})

    assert answer(request(), slow, lambda: 60_000, sent) == "FAILED"
    assert sent.bodies == [
        {
            "Status": "FAILED",
            "Reason": "timed out before the work finished",
            "PhysicalResourceId": f"failed-{request().request_id}",
            "StackId": request().stack_id,
            "RequestId": request().request_id,
            "LogicalResourceId": "KafkaTopics",
            "NoEcho": False,
            "Data": {},
        }
    ]


def test_the_answer_body_is_exactly_what_cloudformation_reads() -> None:
    sent = Sent()
    delete = request("cfn-topics-delete.json")
    answer(delete, lambda r: Answer("pid-9", {"A": "1"}, reason="kept"), lambda: 60_000, sent)
    assert sent.bodies == [
        {
            "Status": "SUCCESS",
            "Reason": "kept",
            "PhysicalResourceId": "pid-9",
            "StackId": delete.stack_id,
            "RequestId": delete.request_id,
            "LogicalResourceId": delete.logical_resource_id,
            "NoEcho": False,
            "Data": {"A": "1"},
        }
    ]


def test_a_failure_names_its_type_and_message_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom(_: CustomResourceRequest) -> Answer:
        raise RuntimeError("cluster unreachable")

    sent = Sent()
    with caplog.at_level("INFO", logger="orderstream.custom_resource"):
        answer(request(), boom, lambda: 60_000, sent)
    assert sent.bodies[0]["Reason"] == "RuntimeError: cluster unreachable"
    failed, answered = caplog.records
    assert (failed.levelname, failed.getMessage()) == ("ERROR", "custom resource work failed")
    assert failed.exc_info is not None
    assert failed.exc_info[0] is RuntimeError
    assert (answered.levelname, answered.getMessage()) == ("INFO", "answered CloudFormation")
    assert answered.status == "FAILED"  # type: ignore[attr-defined]
    assert answered.reason == "RuntimeError: cluster unreachable"  # type: ignore[attr-defined]


def test_a_reason_keeps_its_first_3000_characters() -> None:
    def verbose(_: CustomResourceRequest) -> Answer:
        raise ValueError("x" * 10_000)

    sent = Sent()
    answer(request(), verbose, lambda: 60_000, sent)
    assert sent.bodies[0]["Reason"] == "ValueError: " + "x" * (3_000 - len("ValueError: "))


def test_put_response_retries_a_refused_put_after_half_a_second_then_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(
        "orderstream.custom_resource.time.sleep", in_this_thread(slept.append, time.sleep)
    )
    with recording_http_server(failures=2) as (url, received):
        put_response(url, b"{}")
    assert len(received) == 3
    assert slept == [0.5, 1.0]


def test_put_response_gives_up_after_four_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(
        "orderstream.custom_resource.time.sleep", in_this_thread(slept.append, time.sleep)
    )
    with recording_http_server(failures=10) as (url, received), pytest.raises(OSError, match="503"):
        put_response(url, b"{}")
    assert len(received) == 4
    assert slept == [0.5, 1.0, 2.0]


def test_put_response_waits_ten_seconds_at_most_for_an_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, str, float]] = []

    class Answered:
        def __enter__(self) -> Answered:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def read(self) -> bytes:
            return b""

    def urlopen(request: Any, timeout: float) -> Answered:
        calls.append((request.get_method(), request.full_url, timeout))
        return Answered()

    monkeypatch.setattr("orderstream.custom_resource.urllib.request.urlopen", urlopen)
    put_response("https://example.invalid/r", b"{}")
    assert calls == [("PUT", "https://example.invalid/r", 10)]


def test_respond_names_the_request_in_the_logs_before_the_work() -> None:
    keys: list[dict[str, Any]] = []
    event = load_event("cfn-topics-create.json")
    with recording_http_server() as (url, received):
        event["ResponseURL"] = url
        result = custom_resource.respond(
            event,
            lambda r: Answer("pid", reason=str(keys)),
            lambda: 60_000,
            lambda **k: keys.append(k),
        )
    assert result == {"Status": "SUCCESS"}
    assert keys == [{"request_type": "Create", "stack_request_id": event["RequestId"]}]
    assert json.loads(received[0].body)["Reason"] == str(keys)  # named before the work ran
