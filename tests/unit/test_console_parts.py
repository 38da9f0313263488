"""The console's parts without a stack: escaping, rendering, the order form, the journal, and
the HTTP guards (Host, origin, form posts, one run per dry run)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka import TopicPartition

from devstack import console_page as view
from devstack.console import (
    EMAIL_POLICY,
    PAGE_POLICY,
    PLAN_LIFETIME_S,
    Console,
    _dead_letter_facts,
    _Plan,
    order_body,
    sample_fields,
)
from devstack.functions import Invocation
from devstack.journal import Entry, Journal, batch_entry, call_entry
from devstack.mail import SentEmail, sent_emails
from devstack.markup import Markup, el, join, text, url
from devstack.status import GroupFigures, TopicFigures

HOSTILE = [
    '<img src=x onerror="alert(1)">',
    "</td></tr></table><script>alert(1)</script>",
    "\"' onmouseover=alert(1) x='",
    "&lt;b&gt; already escaped &amp;",
    "a\x00b\x1bc\u2028d\ud800e\ufffe",
]


class Parsed(HTMLParser):
    """Every element and every piece of text, as a browser's tokenizer sees them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.texts)


# --------------------------------------------------------------------------- markup


@pytest.mark.parametrize("value", HOSTILE)
def test_text_in_an_element_is_only_ever_text(value: str) -> None:
    parsed = Parsed(el("td", value))
    assert [tag for tag, _ in parsed.tags] == ["td"]
    assert "<" not in text(value)
    assert ">" not in text(value)


def hidden(char: str) -> bool:
    """Written apart from markup.py's own rule: what no browser shows as itself."""
    import unicodedata

    if char in "\t\n":
        return False
    noncharacter = 0xFDD0 <= ord(char) <= 0xFDEF or ord(char) % 0x10000 in (0xFFFE, 0xFFFF)
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp") or noncharacter


def shown_as_code(char: str) -> str:
    return f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}"


@given(st.text())
def test_any_text_comes_back_as_the_same_text_with_invisible_characters_shown(value: str) -> None:
    parsed = Parsed(el("p", value, title=value))
    assert [tag for tag, _ in parsed.tags] == ["p"]
    assert parsed.text == "".join(shown_as_code(c) if hidden(c) else c for c in value)
    assert parsed.tags[0][1]["title"] == "".join("\ufffd" if hidden(c) else c for c in value)


def test_invisible_characters_are_shown_as_their_codes() -> None:
    assert text("a\x00b\x1b\ud800") == "a\\u0000b\\u001b\\ud800"
    # A direction override would make the rest of a row read backwards; zero-width ones hide.
    assert text("evil\u202egnp.exe \u200b\ufeff\u2028\U000e0041") == (
        "evil\\u202egnp.exe \\u200b\\ufeff\\u2028\\U000e0041"
    )
    # Encodable whatever it holds: a lone surrogate would fail the page's UTF-8.
    el("p", "\ud800", title="\udfff").encode("utf-8")


def test_markup_passes_through_and_everything_else_is_escaped() -> None:
    assert join([el("b", "x"), "<i>"]) == "<b>x</b>&lt;i&gt;"
    assert text(Markup("<b>ok</b>")) == "<b>ok</b>"
    assert el("a", "x", href='/?a="b"', data_key="<k>", hidden=True, title=None) == (
        '<a href="/?a=&quot;b&quot;" data-key="&lt;k&gt;" hidden>x</a>'
    )


@pytest.mark.parametrize("tag", ["script onload=x", "", "1a", "a>"])
def test_a_tag_name_that_is_not_one_is_refused(tag: str) -> None:
    with pytest.raises(ValueError, match="not a tag name"):
        el(tag)


def test_an_attribute_name_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="not an attribute name"):
        el("a", **{"on click": "x"})
    with pytest.raises(ValueError, match="takes no children"):
        el("input", "child")


def test_links_stay_on_this_server_and_encode_their_query() -> None:
    assert (
        url("/", {"key": "a/b&c=d#e", "none": None}, "viewer") == "/?key=a%2Fb%26c%3Dd%23e#viewer"
    )
    for outside in ("//evil.example/x", "https://evil.example/", "javascript:alert(1)"):
        with pytest.raises(ValueError, match="not a path on this server"):
            url(outside)


# --------------------------------------------------------------------------- the page


def figures() -> TopicFigures:
    a, b = TopicPartition("order-placed", 0), TopicPartition("order-placed", 1)
    return TopicFigures(
        ends={a: 5, b: 2},
        groups=[
            GroupFigures("EmailNotifierFunction", "order-email-notifier", {a: 5}, lag=2),
            GroupFigures("S3ArchiverFunction", "order-s3-archiver", {a: 3, b: 2}, lag=2),
        ],
    )


def test_the_topic_shows_what_make_status_shows() -> None:
    parsed = Parsed(view.topic_section(figures()))
    cells = parsed.text
    assert "order-placed-0" in cells
    assert "order-placed-1" in cells
    lags = {a["data-group-lag"]: None for _, a in parsed.tags if "data-group-lag" in a}
    assert set(lags) == {"order-email-notifier", "order-s3-archiver"}
    html = view.topic_section(figures())
    # partition 1 never committed by the notifier: shown as "-" with lag 2
    row1 = html.split('data-partition="1"')[1].split("</tr>")[0]
    assert [c.split(">", 1)[1] for c in row1.split("</td>")[:-1]][1:] == ["2", "-", "2", "2", "0"]


def test_every_section_shows_hostile_values_as_text() -> None:
    modified = datetime(2026, 12, 1, tzinfo=UTC)
    for value in HOSTILE:
        entry = Entry("Fn", value, 0.0, 1.0, "error", value, records=1, spans={value: (1, 2)})
        email = SentEmail(value, value, [value], value, value, value)
        parts = [
            view.invocations_section({value: [entry]}),
            view.emails_section([email]),
            view.archive_section(
                1, [view.ArchiveObject(value, 1, modified, 1, 0, 0, 0)], bucket=value
            ),
            view.dead_letters_section(
                1, [view.DeadLetterObject(value, 1, modified, value, value, value)], bucket=value
            ),
            view.archive_view(value, {value: value}, [value.encode("utf-8", "surrogatepass")]),
            view.dead_letter_view(value, {"reason": value, "value": "PGI+eDwvYj4="}),
            view.email_view(email),
        ]
        for part in parts:
            parsed = Parsed(part)
            assert not {tag for tag, _ in parsed.tags} & {"img", "script", "b"}, part
            assert all(not name.startswith("on") for _, a in parsed.tags for name in a), part


def test_the_whole_page_loads_nothing_from_elsewhere_and_runs_no_inline_script() -> None:
    page = view.page(
        view.Page(
            stack_lines=[("api", "http://127.0.0.1:3000/orders")],
            order_fields={"customer_name": HOSTILE[0]},
            answer=view.OrderAnswer(
                422,
                {"message": HOSTILE[1], "errors": [{"field": HOSTILE[2], "reason": HOSTILE[0]}]},
                {},
            ),
            live={name: Markup("") for name in LIVE},
            consumers=["S3ArchiverFunction"],
            action_fields={"replay_since": "2026-12-01T09:00Z", "replay_until": ""},
        )
    ).decode()
    parsed = Parsed(page)
    scripts = [a for tag, a in parsed.tags if tag == "script"]
    assert scripts == [{"src": "/console.js", "defer": None}]
    for _, attributes in parsed.tags:
        for name in ("src", "href", "action"):
            value = attributes.get(name)
            assert value is None or value.startswith("/"), attributes
    inputs = {a.get("name"): a.get("value") for tag, a in parsed.tags if tag == "input"}
    assert inputs["customer_name"] == HOSTILE[0]  # a value, not markup
    assert HOSTILE[1] in parsed.text


def test_a_dead_letter_shows_its_value_decoded_or_says_it_is_not_text() -> None:
    assert "<b>x</b>" in Parsed(view.dead_letter_view("k", {"value": "PGI+eDwvYj4="})).text
    assert "(2 bytes, not UTF-8)" in Parsed(view.dead_letter_view("k", {"value": "//8="})).text
    assert "(not base64)" in Parsed(view.dead_letter_view("k", {"value": "*"})).text


def test_an_archive_object_beyond_the_shown_lines_says_how_many_there_are() -> None:
    lines = [b"{}"] * (view.SHOWN_LINES + 5)
    parsed = Parsed(view.archive_view("k", {}, lines))
    assert sum(1 for tag, _ in parsed.tags if tag == "li") == view.SHOWN_LINES
    assert f"{len(lines)} JSON lines, ungzipped; the first {view.SHOWN_LINES} shown" in parsed.text


LIVE = ("live-topic", "live-invocations", "live-emails", "live-archive", "live-dead-letters")


# --------------------------------------------------------------------------- the order form


def test_the_form_is_prefilled_from_the_sample_event_with_a_new_order_id() -> None:
    first, second = sample_fields(), sample_fields()
    assert first["order_id"] != second["order_id"]
    assert first["customer_email"] == "ada@example.com"
    body = order_body(first)
    sample = json.loads(json.loads(view_sample())["body"])
    assert body == {**sample, "order_id": first["order_id"]}


def view_sample() -> str:
    from devstack.console import SAMPLE_ORDER

    return SAMPLE_ORDER.read_text()


def test_the_form_sends_whole_quantities_as_numbers_and_anything_else_as_typed() -> None:
    body = order_body(
        {
            "order_id": "x",
            "item0_sku": "A",
            "item0_quantity": " 2 ",
            "item1_sku": "",
            "item1_name": "",
            "item2_sku": "B",
            "item2_quantity": "two",
            "item2_unit_price": "1.50",
        }
    )
    assert body["items"] == [
        {"sku": "A", "quantity": 2},
        {"sku": "B", "quantity": "two", "unit_price": "1.50"},
    ]


# --------------------------------------------------------------------------- the journal


def invocation(
    ok: bool = True, payload: Any = None, error: dict[str, Any] | None = None
) -> Invocation:
    return Invocation("r", ok, payload, error, duration_ms=12.4, init_ms=0)


def test_a_mapping_entry_logs_the_line_the_mapping_always_logged() -> None:
    positions = [("order-placed", 1, 4), ("order-placed", 1, 7), ("order-placed", 0, 2)]
    ok = batch_entry("Fn", "mapping M", positions, invocation(), 0, failed=0)
    assert ok.describe() == "    3 records order-placed-0@2..2 order-placed-1@4..7      12 ms ok"
    partial = batch_entry("Fn", "mapping M", positions, invocation(), 0, failed=2, attempt=1)
    assert partial.outcome == "partial failure"
    assert partial.describe().endswith("12 ms retry 1 2 item failures reported")
    error = batch_entry(
        "Fn",
        "m",
        positions,
        invocation(False, error={"errorType": "Boom", "errorMessage": "x"}),
        0,
        3,
    )
    assert error.outcome == "error"
    assert error.describe().endswith("error Boom: x")


def test_an_api_entry_reads_the_http_status_and_an_invoked_batch_its_failures() -> None:
    api = call_entry(
        "Api",
        "api POST /orders",
        {"httpMethod": "POST"},
        invocation(payload={"statusCode": 202}),
        0,
    )
    assert (api.outcome, api.detail, api.records) == ("ok", "HTTP 202", None)
    failing = call_entry("Api", "api", {}, invocation(payload={"statusCode": 502}), 0)
    assert failing.outcome == "error"
    event = {
        "eventSource": "aws:kafka",
        "records": {
            "t-0": [
                {"topic": "t", "partition": 0, "offset": 3},
                {"topic": "t", "partition": 0, "offset": 4},
            ]
        },
    }
    replayed = call_entry(
        "Fn",
        "invoke",
        event,
        invocation(payload={"batchItemFailures": [{"itemIdentifier": "x"}]}),
        0,
    )
    assert (replayed.records, replayed.spans, replayed.outcome) == (
        2,
        {"t-0": (3, 4)},
        "partial failure",
    )


def test_the_journal_keeps_the_newest_entries_of_each_function() -> None:
    journal = Journal(kept=3)
    for number in range(5):
        journal.add(Entry("A", str(number), number, 1, "ok", ""))
    journal.add(Entry("B", "b", 9, 1, "ok", ""))
    assert [e.source for e in journal.latest("A", 10)] == ["4", "3", "2"]
    assert [e.source for e in journal.latest("A", 1)] == ["4"]
    calls = journal.recording("C", "invoke", lambda event: invocation(payload=event))
    assert calls({"statusCode": 200}).payload == {"statusCode": 200}
    assert journal.latest("C", 1)[0].detail == "HTTP 200"


# --------------------------------------------------------------------------- dead letters and mail


def test_a_dead_letter_and_an_on_failure_record_each_say_why() -> None:
    assert _dead_letter_facts(
        "dead-letters/email-notifier/order-placed/3/00000000000000000007.json",
        {"reason": "not JSON", "topic": "order-placed", "partition": 3, "offset": 7},
    ) == ("dead letter", "not JSON", "order-placed-3@7")
    failure = {
        "requestContext": {"condition": "RetryAttemptsExhausted", "approximateInvokeCount": 11},
        "KafkaBatchInfo": {
            "recordsInfo": {"order-placed-1": {"firstRecordOffset": "4", "lastRecordOffset": "9"}}
        },
    }
    assert _dead_letter_facts("aws/lambda/u/order-placed-1/x", failure) == (
        "on-failure",
        "RetryAttemptsExhausted after 11 invocations",
        "order-placed-1@4..9",
    )
    assert _dead_letter_facts("redriven/dead-letters/x", "text")[:2] == (
        "redriven",
        "(not a JSON document)",
    )


def test_an_email_the_emulator_cannot_render_hides_no_other_email() -> None:
    templates = {"t": {"SubjectPart": "Order {{order_id}}", "HtmlPart": "<p>{{missing}}</p>"}}
    state = {
        "ses": {
            "TemplateMessage": [
                {
                    "id": "1",
                    "source": "s@example.com",
                    "template": "t",
                    "template_data": json.dumps({"order_id": "a"}),
                    "destinations": {"ToAddresses": ["x@example.com"]},
                }
            ],
            "Message": [
                {
                    "id": "2",
                    "source": "s@example.com",
                    "destinations": {"ToAddresses": ["y@example.com"]},
                    "subject": "plain",
                    "body": "hi",
                }
            ],
        }
    }
    emails = sent_emails(state, templates)
    assert [e.subject for e in emails] == ["Order a", "plain"]
    assert "could not render" in emails[0].html


# --------------------------------------------------------------------------- HTTP


@dataclass
class QuietStack:
    """What the console reads of a stack, empty: the guards answer before any of it is read."""

    info: Any = None
    emails: list[SentEmail] = field(default_factory=list)
    journal: Journal = field(default_factory=Journal)
    api_functions: list[str] = field(default_factory=list)


@pytest.fixture
def console() -> Iterator[Console]:
    stack = QuietStack(emails=[SentEmail("m-1", "s", ["t"], "subj", "text", "<p>hi</p>")])
    started = Console(stack, 0).start()  # type: ignore[arg-type]
    try:
        yield started
    finally:
        started.stop()


def ask(
    console: Console,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True)
        sent = {"Host": f"127.0.0.1:{console.port}", **(headers or {})}
        if body or method == "POST":
            sent.setdefault("Content-Length", str(len(body)))
        for name, value in sent.items():
            connection.putheader(name, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_the_console_listens_on_loopback_only(console: Console) -> None:
    assert console._server.server_address[0] == "127.0.0.1"
    assert console.url == f"http://127.0.0.1:{console.port}"


def test_every_answer_carries_the_page_policy(console: Console) -> None:
    status, headers, body = ask(console, "GET", "/console.js")
    assert status == 200
    assert b"/live" in body
    assert headers["Content-Security-Policy"] == PAGE_POLICY
    assert "script-src 'self'" in PAGE_POLICY
    assert "unsafe-inline" not in PAGE_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_an_emails_html_comes_sandboxed(console: Console) -> None:
    status, headers, body = ask(console, "GET", "/email.html?id=m-1")
    assert (status, body) == (200, b"<p>hi</p>")
    assert headers["Content-Security-Policy"] == EMAIL_POLICY
    assert EMAIL_POLICY.startswith("sandbox;")
    assert "script-src" not in EMAIL_POLICY
    assert ask(console, "GET", "/email.html?id=nope")[0] == 404


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1:1", ""])
def test_a_request_for_another_name_is_refused(console: Console, host: str) -> None:
    """DNS rebinding: a page of another site whose name resolves to 127.0.0.1."""
    assert ask(console, "GET", "/", {"Host": host})[0] == 421
    assert ask(console, "POST", "/order", {"Host": host})[0] == 421


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_a_post_from_another_site_is_refused(console: Console, headers: dict[str, str]) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    status, _, body = ask(console, "POST", "/redrive/run", form, b"plan=x")
    assert status == 403, body


def test_only_a_small_form_is_taken(console: Console) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert ask(console, "POST", "/order", {"Content-Type": "application/json"}, b"{}")[0] == 415
    assert ask(console, "POST", "/order", form, b"x" * (70 * 1024))[0] == 413
    assert ask(console, "POST", "/nowhere", form, b"a=b")[0] == 404


def test_a_plan_runs_once_and_only_as_its_own_kind(console: Console) -> None:
    runs: list[str] = []

    def run() -> list[str]:
        runs.append("ran")
        return ["done"]

    plan_id = console._keep(console._plans, _Plan("replay", "replay to X", run))
    refused = console._outcomes[console.run("redrive", {"plan": plan_id})]
    assert refused.title == "nothing run"
    assert runs == []
    done = console._outcomes[console.run("replay", {"plan": plan_id})]
    assert (done.title, list(done.lines), runs) == ("replay to X", ["done"], ["ran"])
    again = console._outcomes[console.run("replay", {"plan": plan_id})]
    assert again.title == "nothing run"
    assert runs == ["ran"]
    status, headers, _ = ask(
        console,
        "POST",
        "/replay/run",
        {"Content-Type": "application/x-www-form-urlencoded", "Origin": console.url},
        b"plan=unknown",
    )
    assert status == 303
    assert headers["Location"].startswith("/?action=")


class CountingS3:
    """moto's S3, counting the reads the console makes of each object."""

    def __init__(self, s3: Any) -> None:
        self.s3, self.heads = s3, 0

    def head_object(self, **kwargs: Any) -> Any:
        self.heads += 1
        return self.s3.head_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)


def test_objects_are_read_once_per_version_and_forgotten_when_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3
    from moto import mock_aws

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="archive")
        info = type("Info", (), {"buckets": {"ArchiveBucket": "archive"}})()
        console = Console(QuietStack(info=info), 0)  # type: ignore[arg-type]
        counting = CountingS3(s3)
        console._place = type("P", (), {"s3": counting})()
        try:
            for key, count in (("a", "3"), ("b", "5")):
                s3.put_object(
                    Bucket="archive", Key=key, Body=b"x", Metadata={"record-count": count}
                )
            total, shown = console.archive_objects()
            assert total == 2
            assert sorted((o.key, o.records) for o in shown) == [("a", 3), ("b", 5)]
            console.archive_objects()
            assert counting.heads == 2  # not read again
            s3.delete_object(Bucket="archive", Key="a")
            s3.put_object(Bucket="archive", Key="b", Body=b"yy", Metadata={"record-count": "6"})
            assert [(o.key, o.records) for o in console.archive_objects()[1]] == [("b", 6)]
            assert counting.heads == 3
            assert [key for key, _ in console._archive_cache] == ["b"]
            # Only the newest shown are read: the count comes from the listing alone.
            monkeypatch.setattr("devstack.console.OBJECTS_SHOWN", 1)
            time.sleep(1.1)  # S3's LastModified counts whole seconds: c is newer than b
            s3.put_object(Bucket="archive", Key="c", Body=b"z", Metadata={"record-count": "1"})
            total, shown = console.archive_objects()
            assert (total, [o.key for o in shown], counting.heads) == (2, ["c"], 4)
        finally:
            console._server.server_close()


# --------------------------------------------------------------------------- review findings


def test_a_refused_post_hangs_up_so_its_body_is_never_read_as_a_request(console: Console) -> None:
    """A cross-site POST whose body is a whole second request (with this server's Host and no
    Origin) must not get that second request served on the same connection."""
    import socket

    hidden = (
        f"POST /order HTTP/1.1\r\nHost: 127.0.0.1:{console.port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 10\r\n\r\norder_id=x"
    ).encode()
    outer = (
        f"POST /redrive/run HTTP/1.1\r\nHost: 127.0.0.1:{console.port}\r\n"
        "Origin: https://evil.example\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(hidden)}\r\n\r\n"
    ).encode() + hidden
    placed: list[dict[str, str]] = []

    def place(form: dict[str, str]) -> str:
        placed.append(form)
        return "x"

    console.place_order = place  # type: ignore[method-assign]
    with socket.create_connection(("127.0.0.1", console.port), timeout=10) as sock:
        sock.sendall(outer)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 403")
    assert received.count(b"HTTP/1.1 ") == 1  # then the server hung up
    assert b"Connection: close" in received
    assert placed == []


def test_a_plan_is_kept_while_another_action_runs_and_an_old_plan_is_not_run(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[str] = []

    def run() -> list[str]:
        runs.append("ran")
        return ["done"]

    plan_id = console._keep(console._plans, _Plan("redrive", "redrive", run))
    with console._action_lock:
        busy = console._outcomes[console.run("redrive", {"plan": plan_id})]
    assert busy.lines == [
        "Another action is running: this plan is kept; run it when that one ends."
    ]
    assert (busy.run_path, busy.plan_id) == ("/redrive/run", plan_id)  # its button, again
    assert console._outcomes[console.run("redrive", {"plan": plan_id})].lines == ["done"]

    stale = _Plan("redrive", "redrive", run)
    stale.made -= PLAN_LIFETIME_S + 1
    stale_id = console._keep(console._plans, stale)
    refused = console._outcomes[console.run("redrive", {"plan": stale_id})]
    assert "older than" in refused.lines[0]
    assert runs == ["ran"]


def test_an_order_the_api_does_not_answer_is_said_beside_the_form(console: Console) -> None:
    from devstack.ports import free_port

    console.stack.info = type("Info", (), {"api_url": f"http://127.0.0.1:{free_port()}"})()
    answer = console._answers[console.place_order({"order_id": "x"})]
    assert answer.status == 0
    assert "the local API did not answer" in answer.body
    assert "did not answer" in Parsed(view._answer(answer)).text


def test_the_journal_says_when_the_mapping_could_not_read_the_answer() -> None:
    from devstack.esm import MappingSpec, failed_records

    @dataclass
    class Record:
        topic: str = "t"
        partition: int = 0
        offset: int = 5

    spec = MappingSpec("Fn", "M", "arn", ["t"], "g", report_batch_item_failures=True)
    records: list[Any] = [Record()]
    failed, unreadable = failed_records(spec, records, invocation(payload={"batchItemFailures": 7}))
    assert (len(failed), unreadable) == (1, True)
    failed, unreadable = failed_records(
        spec,
        records,
        invocation(
            payload={"batchItemFailures": [{"itemIdentifier": {"partition": "t-0", "offset": 5}}]}
        ),
    )
    assert (len(failed), unreadable) == (1, False)
    entry = batch_entry("Fn", "m", [("t", 0, 5)], invocation(), 0, failed=1, unreadable=True)
    assert entry.outcome == "error"
    assert entry.describe().endswith("error: response unreadable, the whole batch fails")


@pytest.mark.parametrize(
    "records",
    [None, [], {"t-0": None}, {"t-0": [{"partition": "x", "offset": None}]}, {"t-0": [7]}],
)
def test_an_invoked_event_the_journal_cannot_read_still_gets_its_answer(records: Any) -> None:
    journal = Journal()
    call = journal.recording("Fn", "invoke", lambda event: invocation(payload={"ok": 1}))
    assert call({"eventSource": "aws:kafka", "records": records}).payload == {"ok": 1}
    assert journal.latest("Fn", 1)[0].records == 0


def test_odd_object_metadata_and_documents_hide_nothing() -> None:
    from devstack.console import _number

    assert [_number(v) for v in ("12", "-3", "²", "--5", "", None, "1e3")] == [
        12,
        -3,
        None,
        None,
        None,
        None,
        None,
    ]
    odd = {"requestContext": "x", "KafkaBatchInfo": {"recordsInfo": [1]}}
    assert _dead_letter_facts("aws/lambda/x", odd)[0] == "on-failure"
    assert Parsed(view.dead_letter_view("k", odd)).tags


def test_the_broker_is_read_once_a_second_and_again_after_this_console_acted(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import devstack.console as module

    reads: list[int] = []

    def read(info: Any) -> TopicFigures:
        reads.append(1)
        return figures()

    monkeypatch.setattr(module, "topic_figures", read)
    console.stack.info = cast(Any, object())
    first = console.topic_figures()
    assert console.topic_figures() is first
    assert len(reads) == 1  # every tab within the second shares one reading
    console._acted = time.monotonic()  # an order was placed, or an action ran
    assert console.topic_figures() is not first
    assert len(reads) == 2


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:{port}"},
        {"Sec-Fetch-Site": "none"},
        {"Host": "localhost:{port}", "Origin": "http://localhost:{port}"},
        {},  # curl: no browser headers at all
    ],
)
def test_a_post_from_the_consoles_own_page_is_taken(
    console: Console, headers: dict[str, str]
) -> None:
    placed: list[dict[str, str]] = []

    def place(form: dict[str, str]) -> str:
        placed.append(form)
        return "answer-id"

    console.place_order = place  # type: ignore[method-assign]
    sent = {name: value.format(port=console.port) for name, value in headers.items()}
    sent["Content-Type"] = "application/x-www-form-urlencoded"
    status, answer, _ = ask(console, "POST", "/order", sent, b"order_id=abc")
    assert (status, answer["Location"]) == (303, "/?answer=answer-id#order")
    assert placed == [{"order_id": "abc"}]


def test_a_post_without_its_length_is_refused(console: Console) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=10)
    try:
        connection.putrequest("POST", "/order")
        connection.putheader("Content-Type", "application/x-www-form-urlencoded")
        connection.endheaders()
        assert connection.getresponse().status == 411
    finally:
        connection.close()


def test_a_stopping_console_answers_open_connections_with_503(console: Console) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=10)
    try:
        connection.request("GET", "/console.css")
        first = connection.getresponse()
        first.read()
        assert first.status == 200
        console._stopping = True  # what stop() sets before the server stops accepting
        connection.request("GET", "/console.css")
        assert connection.getresponse().status == 503
    finally:
        connection.close()
        console._stopping = False


def test_the_viewer_says_what_went_wrong_instead_of_failing_the_page(console: Console) -> None:
    console._viewed = lambda query: (_ for _ in ()).throw(ValueError("damaged"))  # type: ignore[method-assign]
    shown = console.viewer({"view": "archive", "key": "k"})
    assert shown is not None
    assert "ValueError: damaged" in Parsed(shown).text
    del console._viewed
    empty = console.viewer({"view": "archive", "key": ""})
    assert empty is not None
    assert "without a key" in Parsed(empty).text
