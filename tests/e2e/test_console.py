"""The local console in a real headless browser: Debian's Chromium driven by Playwright.

One stack of its own (its actions redrive and replay everything in its buckets), with the
console on a free port. The screenshot of the page after an order went all the way through
is kept in test-artifacts/ (ORDERSTREAM_ARTIFACTS moves it).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer
from playwright.sync_api import Browser, Dialog, Locator, Page, expect, sync_playwright

from devstack import aws
from devstack.ports import free_port
from devstack.stack import (
    CONSOLE_PORT_VAR,
    DEFAULT_PORTS,
    LOCAL_PARAMETERS,
    LocalStack,
    StackInfo,
)
from devstack.template import ROOT

pytestmark = pytest.mark.slow

HOSTILE_NAME = '<img src=x onerror="window.__xss=1">'
HOSTILE_TEXT = "<script>window.__xss=2</script><b>bold</b> \u202e"  # UTF-8, and no order
HOSTILE_BYTES = b'{"order": "<script>window.__xss=2</script>", "bytes": "\xff"}'
# Chromium as root in a container, and with nothing reaching for Google's hosts (no network).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 90_000  # the longest any one thing may take to appear (archive: its batching window)


def settle(page: Page, condition: Callable[[], bool], what: str) -> None:
    """Until `condition` holds on the page as it updates itself (bounded by WAIT_MS)."""
    for _ in range(WAIT_MS // 250):
        if condition():
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"never happened: {what}")


def offsets_of(row: Locator) -> tuple[int, int]:
    """An archive row's offset range, from its third cell ("first..last")."""
    first, last = row.locator("td").nth(2).inner_text().split("..")
    return int(first), int(last)


def chromium() -> str:
    """The system's Chromium, as `make test` finds or installs it (scripts/find-chromium)."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    found = subprocess.run(
        [str(ROOT / "scripts" / "find-chromium")], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        pytest.fail(f"no Chromium for the browser test: {found.stderr.strip()}")
    return found.stdout.strip()


def artifacts() -> Path:
    folder = Path(os.environ.get("ORDERSTREAM_ARTIFACTS", ROOT / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    stack = LocalStack(
        state_dir=tmp_path_factory.mktemp("console"),
        outbox=None,
        log=lambda _: None,
        max_batching_window_s=2.0,
        console_port=0,
    )
    info = stack.start()
    try:
        yield info
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(
    browser: Browser, console_stack: StackInfo, request: pytest.FixtureRequest
) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    dialogs: list[str] = []

    def dialog(shown: Dialog) -> None:
        dialogs.append(shown.message)
        shown.dismiss()

    opened.on("dialog", dialog)
    opened.goto(console_stack.console_url)
    yield opened
    # Every test leaves the page as it ended, passed or failed, beside the main screenshot.
    opened.screenshot(path=str(artifacts() / f"{request.node.name}.png"), full_page=True)
    assert opened.evaluate("window.__xss") is None, "a value ran as script"
    assert dialogs == [], dialogs
    context.close()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's socket table")
def test_the_console_listens_on_127_0_0_1_only(console_stack: StackInfo) -> None:
    """The kernel's own table of listening sockets: the console's port, on 127.0.0.1 alone."""
    port = int(console_stack.console_url.rsplit(":", 1)[1])
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                listening.add(address)
    assert listening == {"0100007F"}  # 127.0.0.1, little-endian; no 0.0.0.0 nor ::


def test_an_order_placed_in_the_form_shows_its_offset_email_and_archive_object(
    page: Page, console_stack: StackInfo
) -> None:
    order_id = str(uuid.uuid4())
    form = page.locator("#order-form")
    # Prefilled from events/api-post-order.json.
    expect(form.locator("input[name=customer_email]")).to_have_value("ada@example.com")
    expect(form.locator("input[name=item0_sku]")).to_have_value("BOOK-001")
    form.locator("input[name=order_id]").fill(order_id)
    form.locator("input[name=customer_name]").fill(HOSTILE_NAME)
    form.get_by_role("button", name="Place order").click()

    answer = page.locator("#order-answer")
    expect(answer.locator(".offset")).to_have_text(re.compile(r"^\d+$"))
    expect(answer).to_contain_text(order_id)
    partition = int(answer.locator(".partition").inner_text())
    offset = int(answer.locator(".offset").inner_text())
    # The form again, with the name as typed: a value, never markup.
    expect(form.locator("input[name=customer_name]")).to_have_value(HOSTILE_NAME)

    # The topic: the partition's end offset is past the order, and both groups catch up (the
    # page updates itself: no reload from here on).
    row = page.locator(f"#live-topic tr[data-partition='{partition}']")
    expect(row).to_be_visible()
    end = int(row.locator("td").nth(1).inner_text())
    assert end > offset
    for group in ("order-email-notifier", "order-s3-archiver"):
        expect(page.locator(f"#live-topic [data-group-lag='{group}']")).to_have_text(
            "0", timeout=WAIT_MS
        )

    # The invocations: the API's, and each consumer's batch with the order's offset.
    api = page.locator("#live-invocations [data-function=OrderApiFunction] tbody tr").first
    expect(api).to_contain_text("api POST /orders")
    expect(api).to_contain_text("HTTP 202")
    for consumer in ("EmailNotifierFunction", "S3ArchiverFunction"):
        rows = page.locator(f"#live-invocations [data-function={consumer}] tbody tr")
        expect(
            rows.filter(has_text=re.compile(rf"order-placed-{partition}@\d+\.\.\d+"))
        ).not_to_have_count(0)

    # The email: listed, and opened as the customer would see it, in a sandboxed frame.
    email = page.locator("#live-emails tr[data-message-id]").filter(has_text=order_id)
    expect(email).to_contain_text("ada@example.com", timeout=WAIT_MS)
    email.locator("a").click()
    viewer = page.locator("#viewer")
    expect(viewer.locator(".email-text")).to_contain_text(order_id)
    frame = viewer.locator("iframe.email")
    assert frame.get_attribute("sandbox") == ""
    expect(page.frame_locator("#viewer iframe.email").locator("body")).to_contain_text(order_id)

    # The archive object, after its batching window: its offsets and its lines, ungzipped.
    archived = page.locator("#live-archive tbody tr").filter(
        has_text=re.compile(rf"\+{partition}\+")
    )
    expect(archived).to_have_count(1, timeout=WAIT_MS)

    def covered() -> bool:
        first, last = offsets_of(archived)
        return first <= offset <= last

    settle(page, covered, f"an archive object of partition {partition} holding offset {offset}")
    archived.locator("a").click()
    lines = page.locator("#viewer ol.lines li")
    expect(lines.filter(has_text=order_id)).to_have_count(1)
    expect(answer.locator(".offset")).to_have_text(str(offset))  # the viewer opened in place
    # The customer's name is text on the page, never an element.
    expect(lines.filter(has_text=order_id)).to_contain_text(HOSTILE_NAME.replace('"', '\\"'))
    assert page.locator("img").count() == 0
    expect(page.locator("body[data-refreshed]")).to_have_count(1)  # the page updates itself
    page.screenshot(path=str(artifacts() / "console.png"), full_page=True)


def test_an_invalid_order_shows_each_field_error_beside_the_form(page: Page) -> None:
    form = page.locator("#order-form")
    form.locator("input[name=item0_quantity]").fill("two")
    form.locator("input[name=customer_email]").fill("not an address")
    form.get_by_role("button", name="Place order").click()
    answer = page.locator("#order-answer")
    expect(answer).to_contain_text("422")
    errors = answer.locator("table.field-errors tbody tr")
    expect(errors.filter(has_text="items.0.quantity")).to_have_count(1)
    expect(errors.filter(has_text="customer.email")).to_have_count(1)
    # What was typed stays in the form, to be mended.
    expect(page.locator("#order-form input[name=item0_quantity]")).to_have_value("two")


def test_poison_records_are_shown_as_text_and_redriven_and_replayed_after_a_dry_run(
    page: Page, console_stack: StackInfo
) -> None:
    """Two records no consumer can use, straight onto partition 3: markup as UTF-8 text, and
    bytes that are not UTF-8. The notifier dead-letters both; the archiver keeps both as
    poison."""
    producer = KafkaProducer(bootstrap_servers=console_stack.bootstrap_servers)
    try:
        for value in (HOSTILE_TEXT.encode(), HOSTILE_BYTES):
            producer.send("order-placed", key=b"<b>key</b>", value=value, partition=3)
        producer.flush(timeout=10)
    finally:
        producer.close()

    letters = page.locator("#live-dead-letters tbody tr").filter(has_text="order-placed-3@")
    expect(letters).to_have_count(2, timeout=WAIT_MS)
    expect(letters.first).to_contain_text("dead letter")

    # Each opens with its reason, its value decoded as text, and its document.
    viewer = page.locator("#viewer")
    seen = set()
    for letter in letters.all():
        key = letter.locator("a").inner_text()
        letter.locator("a").click()
        expect(viewer.locator("h3")).to_contain_text(key)  # this letter's, not the last one's
        expect(viewer.locator(".reason")).not_to_be_empty()
        if "bytes, not UTF-8)" in viewer.inner_text():
            encoded = base64.b64encode(HOSTILE_BYTES).decode()
            expect(viewer.locator(".document")).to_contain_text(encoded)
            seen.add("bytes")
        else:
            # Markup in a record is text: no element made of it, and the override shown.
            expect(viewer).to_contain_text("<script>window.__xss=2</script><b>bold</b> \\u202e")
            assert viewer.locator("b, script").count() == 0
            seen.add("text")
    assert seen == {"bytes", "text"}

    # The archiver kept both, as poison: a replay leaves them out unless told.
    poison_row = page.locator("#live-archive tbody tr").filter(has_text=re.compile(r"\+3\+"))
    settle(
        page,
        lambda: poison_row.count() == 1 and poison_row.locator("td").nth(3).inner_text() == "2",
        "the archive object of partition 3 with 2 poison records",
    )

    outcome = page.locator("#action-outcome")

    def said() -> str:
        return outcome.locator("pre").inner_text()

    # Redrive: the dry run first, then its button runs that plan, once.
    redrive = page.locator("#redrive-form")
    redrive.locator("select[name=source]").select_option("dead-letters")
    redrive.get_by_role("button", name="Dry run").click()
    expect(outcome.locator("h3")).to_have_text("redrive: dry run")
    assert re.search(r"^objects\s+2$", said(), re.M), said()
    expect(page.locator("#redrive-form select[name=source]")).to_have_value("dead-letters")
    plan_id = outcome.locator("input[name=plan]").get_attribute("value")
    outcome.get_by_role("button", name="Redrive 2 objects (2 records)").click()
    expect(outcome.locator("h3")).to_have_text("redrive dead-letters")
    assert re.search(r"^\s+records\s+2$", said(), re.M), said()
    # Poison stays poison: the notifier dead-letters each again, so neither is moved away.
    assert re.search(r"^\s+failed\s+2$", said(), re.M), said()
    expect(letters).to_have_count(2)

    # The same plan does not run twice.
    again = page.request.post(
        f"{console_stack.console_url}/redrive/run",
        form={"plan": plan_id or ""},
        headers={"Origin": console_stack.console_url},
    )
    assert again.ok
    assert "That plan was run already" in again.text()

    # Replay the last hour. To the notifier, which would dead-letter the poison again, the
    # dry run leaves it out (unless told); to the archiver (the form's default target), which
    # keeps poison itself, the same range holds two records more. Only the latter runs.
    replay = page.locator("#replay-form")
    expect(replay.locator("select[name=target]")).to_have_value("S3ArchiverFunction")
    replay.locator("select[name=target]").select_option("EmailNotifierFunction")
    replay.get_by_role("button", name="Dry run").click()
    expect(outcome.locator("pre")).to_contain_text("dry run: replay to EmailNotifierFunction")
    assert re.search(r"^poison\s+2 left out", said(), re.M), said()
    without = int(re.search(r"^records\s+(\d+)$", said(), re.M).group(1))  # type: ignore[union-attr]

    replay = page.locator("#replay-form")
    expect(replay.locator("select[name=target]")).to_have_value("EmailNotifierFunction")
    replay.locator("select[name=target]").select_option("S3ArchiverFunction")
    replay.get_by_role("button", name="Dry run").click()
    expect(outcome.locator("pre")).to_contain_text("dry run: replay to S3ArchiverFunction")
    records = int(re.search(r"^records\s+(\d+)$", said(), re.M).group(1))  # type: ignore[union-attr]
    assert records == without + 2
    outcome.get_by_role("button", name=f"Replay {records} records to S3ArchiverFunction").click()
    expect(outcome.locator("h3")).to_have_text("replay to S3ArchiverFunction")
    assert re.search(rf"^\s+succeeded\s+{records}$", said(), re.M), said()
    assert re.search(rf"^\s+duplicates\s+{records}\b", said(), re.M), said()


def test_an_email_opens_in_a_frame_where_its_html_cannot_run_script(
    page: Page, console_stack: StackInfo
) -> None:
    """Our confirmations carry inert text, but the viewer does not rely on it: an HTML part
    with script in it, sent straight to SES, shows and runs nothing."""
    ses = aws.client("ses", console_stack.aws_endpoint)
    template = ses.list_templates()["TemplatesMetadata"][0]["Name"]
    script = "<script>document.body.dataset.ran = '1'; parent.__xss = 3;</script>"
    ses.send_templated_email(
        Source=LOCAL_PARAMETERS["SenderEmail"],
        Destination={"ToAddresses": ["eve@example.com"]},
        Template=template,
        TemplateData=json.dumps(
            {
                "customer_name": script,
                "order_id": "sandboxed",
                "currency": "EUR",
                "total": "1.00",
                "items": [
                    {
                        "name": "Pen",
                        "sku": "PEN-1",
                        "quantity": "1",
                        "unit_price": "1.00",
                        "line_total": "1.00",
                        "currency": "EUR",
                    }
                ],
            }
        ),
    )
    row = page.locator("#live-emails tr[data-message-id]").filter(has_text="eve@example.com")
    expect(row).to_have_count(1, timeout=WAIT_MS)
    row.locator("a").click()
    body = page.frame_locator("#viewer iframe.email").locator("body")
    expect(body).to_contain_text("thank you for your order")
    assert page.frame_locator("#viewer iframe.email").locator("script").count() == 1
    expect(page.frame_locator("#viewer iframe.email").locator("body[data-ran]")).to_have_count(0)

    # Opened alone, outside the frame, its answer's own policy (sandbox) still runs nothing.
    message_id = row.get_attribute("data-message-id")
    page.goto(f"{console_stack.console_url}/email.html?id={message_id}")
    expect(page.locator("body")).to_contain_text("thank you for your order")
    expect(page.locator("body[data-ran]")).to_have_count(0)


def test_make_run_prints_the_console_before_ready_on_console_port(tmp_path: Path) -> None:
    """`python -m devstack run`, which `make run` starts, with every port of its own."""
    ports = {name: str(free_port()) for name in DEFAULT_PORTS}
    env = {**os.environ, **ports}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    # Its own state and outbox: a `make run` up on this machine keeps its stack.json.
    place = ["--state-dir", str(tmp_path / "state"), "--outbox", str(tmp_path / "outbox")]
    run = subprocess.Popen(
        [sys.executable, "-m", "devstack", "run", *place],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    printed: list[str] = []
    try:
        assert run.stdout is not None
        for line in run.stdout:
            printed.append(line.rstrip())
            if line.strip() in ("ready", "stopped") or line.startswith("error"):
                break
        assert printed[-1] == "ready", printed
        console = f"http://127.0.0.1:{ports[CONSOLE_PORT_VAR]}"
        assert f"console   {console}" in printed, printed
        with urllib.request.urlopen(console + "/", timeout=30) as response:
            assert response.status == 200
            assert b"Place an order" in response.read()
    finally:
        run.send_signal(signal.SIGINT)
        try:
            # Read what it still prints while it stops: a full pipe would block it (and its
            # shutdown logs can fill one), and `wait` alone would then wait for ever.
            rest, _ = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
    assert run.returncode == 0, rest


def test_make_run_refuses_a_console_port_in_use_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, CONSOLE_PORT_VAR: str(port)}
        env.update({name: str(free_port()) for name in DEFAULT_PORTS if name != CONSOLE_PORT_VAR})
        done = subprocess.run(
            [sys.executable, "-m", "devstack", "run", "--state-dir", str(tmp_path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use (set CONSOLE_PORT)" in done.stderr
    assert "broker" not in done.stdout
