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
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright

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
HOSTILE_VALUE = b'{"order": "<script>window.__xss=2</script>", "bytes": "\xff"}'
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
    email = page.locator("#live-emails tr[data-message-id]").first
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
    expect(archived.locator("td").nth(2)).to_contain_text(f"..{offset}")
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


def test_a_poison_record_is_shown_as_text_and_redriven_and_replayed_after_a_dry_run(
    page: Page, console_stack: StackInfo
) -> None:
    producer = KafkaProducer(bootstrap_servers=console_stack.bootstrap_servers)
    try:
        producer.send("order-placed", key=b"<b>key</b>", value=HOSTILE_VALUE, partition=3)
        producer.flush(timeout=10)
    finally:
        producer.close()

    # The notifier dead-letters it: listed with its reason, and shown byte for byte as text.
    letter = page.locator("#live-dead-letters tbody tr").filter(has_text="order-placed-3@")
    expect(letter).to_have_count(1, timeout=WAIT_MS)
    expect(letter).to_contain_text("dead letter")
    letter.locator("a").click()
    viewer = page.locator("#viewer")
    expect(viewer.locator(".reason")).not_to_be_empty()
    expect(viewer.locator(".document")).to_contain_text(base64.b64encode(HOSTILE_VALUE).decode())
    expect(viewer).to_contain_text("not UTF-8")

    # Redrive: the dry run first, then its button runs exactly that plan, once.
    redrive = page.locator("#redrive-form")
    redrive.locator("select[name=source]").select_option("dead-letters")
    redrive.get_by_role("button", name="Dry run").click()
    outcome = page.locator("#action-outcome")
    expect(outcome).to_contain_text("redrive: dry run")
    expect(outcome).to_contain_text("objects      1")
    plan_id = outcome.locator("input[name=plan]").get_attribute("value")
    outcome.get_by_role("button", name=re.compile(r"^Redrive 1 objects")).click()
    expect(outcome).to_contain_text("redrove dead-letters")
    expect(outcome).to_contain_text("records      1")
    # Poison stays poison: the notifier dead-letters it again, so it is not moved away.
    expect(outcome).to_contain_text("failed       1")

    # The same plan cannot run twice.
    again = page.request.post(
        f"{console_stack.console_url}/redrive/run",
        form={"plan": plan_id or ""},
        headers={"Origin": console_stack.console_url},
    )
    assert again.ok
    expect_text = again.text()
    assert "That plan was run already" in expect_text

    # Replay the last hour to the archiver: its dry run counts the records, then the run
    # finds them all archived already.
    replay = page.locator("#replay-form")
    replay.locator("select[name=target]").select_option("S3ArchiverFunction")
    replay.locator("input[name=include_poison]").check()
    replay.get_by_role("button", name="Dry run").click()
    expect(outcome).to_contain_text("replay: dry run")
    records = int(re.search(r"records\s+(\d+)", outcome.inner_text()).group(1))  # type: ignore[union-attr]
    assert records >= 1
    outcome.get_by_role("button", name=f"Replay {records} records to S3ArchiverFunction").click()
    expect(outcome).to_contain_text("replayed to S3ArchiverFunction")
    expect(outcome).to_contain_text(f"succeeded    {records}")
    expect(outcome).to_contain_text(f"duplicates   {records}")


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


def test_make_run_prints_the_console_before_ready_on_console_port(tmp_path: Path) -> None:
    """`python -m devstack run`, which `make run` starts, with every port of its own."""
    ports = {name: str(free_port()) for name in DEFAULT_PORTS}
    env = {**os.environ, **ports}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    run = subprocess.Popen(
        [sys.executable, "-m", "devstack", "run"],
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
            run.wait(60)
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == 0


def test_make_run_refuses_a_console_port_in_use_before_starting_anything() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, CONSOLE_PORT_VAR: str(port)}
        env.update({name: str(free_port()) for name in DEFAULT_PORTS if name != CONSOLE_PORT_VAR})
        done = subprocess.run(
            [sys.executable, "-m", "devstack", "run"],
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
