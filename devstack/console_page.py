"""The console's page, rendered on the server from plain data: no value reaches it but as text.

Pure functions: console.py reads the stack and calls these. Every section that changes by
itself is marked data-live; the page's script (console.js) asks /live for them again every
REFRESH_MS.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from devstack.journal import Entry
from devstack.mail import SentEmail
from devstack.markup import Markup, document, el, join, text, url
from devstack.status import TopicFigures

TITLE = "orderstream local console"
REFRESH_MS = 2000
SHOWN_LINES = 1000  # of an archive object; the rest is counted


@dataclass(frozen=True)
class ArchiveObject:
    key: str
    size: int
    modified: datetime
    records: int | None
    first_offset: int | None
    last_offset: int | None
    poison: int | None


@dataclass(frozen=True)
class DeadLetterObject:
    key: str
    size: int
    modified: datetime
    kind: str  # "dead letter", "on-failure", "redriven"
    reason: str
    where: str  # topic-partition@offsets


@dataclass(frozen=True)
class OrderAnswer:
    status: int
    body: Any  # the API's JSON, or its text if it sent none
    fields: Mapping[str, Any]  # what the form sent, to show it again


@dataclass(frozen=True)
class ActionOutcome:
    title: str
    lines: Sequence[str]
    ok: bool
    run_label: str = ""  # a button that runs what the dry run showed
    run_path: str = ""
    plan_id: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)  # the form that made a dry run


@dataclass
class Page:
    """Everything the page shows, read once per request."""

    stack_lines: Sequence[tuple[str, str]]
    order_fields: Mapping[str, Any]
    answer: OrderAnswer | None
    live: Mapping[str, Markup]
    consumers: Sequence[str]
    action_fields: Mapping[str, str]  # replay_<name>, redrive_<name>: the forms' values
    action: ActionOutcome | None = None
    viewer: Markup | None = None
    functions: Sequence[str] = field(default_factory=list)


# --------------------------------------------------------------------------- the page


def page(data: Page) -> bytes:
    head = [
        el("meta", name="viewport", content="width=device-width, initial-scale=1"),
        el("link", rel="stylesheet", href="/console.css"),
        el("script", src="/console.js", defer=True),
    ]

    def live(title: str, name: str, wide: bool = False) -> Markup:
        return el(
            "section",
            el("h2", title),
            el("div", data.live[name], id=name, data_live=True),
            class_="wide" if wide else None,
        )

    stack = [(el("dt", name), el("dd", el("code", value))) for name, value in data.stack_lines]
    body = [
        el("header", el("h1", TITLE), el("dl", stack)),
        el(
            "main",
            el("section", el("h2", "Place an order"), _order(data), id="order"),
            live("Topic", "live-topic"),
            live("Invocations", "live-invocations", wide=True),
            live("Emails", "live-emails"),
            live("Archive", "live-archive"),
            live("Dead letters", "live-dead-letters"),
            el("section", el("h2", "Actions"), _actions(data), id="actions"),
            el(
                "section",
                el("h2", "Viewer"),
                el("div", data.viewer or el("p", _hint()), id="viewer-body"),
                id="viewer",
            ),
        ),
    ]
    return _document(head, body)


def _hint() -> Markup:
    return text("Open an email, an archive object or a dead letter to see it here.")


def _document(head: Sequence[Markup], body: Sequence[Markup]) -> bytes:
    return document(TITLE, head, body, data_refresh_ms=REFRESH_MS)


# --------------------------------------------------------------------------- order


ITEM_ROWS = 3


def _order(data: Page) -> Markup:
    fields = data.order_fields

    def field_(label: str, name: str, **extra: Any) -> Markup:
        return el(
            "label",
            el("span", label),
            el("input", name=name, value=fields.get(name, ""), **extra),
        )

    rows = []
    for index in range(ITEM_ROWS):
        rows.append(
            el(
                "tr",
                [
                    el(
                        "td",
                        el(
                            "input",
                            name=f"item{index}_{part}",
                            value=fields.get(f"item{index}_{part}", ""),
                            aria_label=f"item {index + 1} {part}",
                            size=size,
                        ),
                    )
                    for part, size in (
                        ("sku", 10),
                        ("name", 22),
                        ("quantity", 4),
                        ("unit_price", 7),
                    )
                ],
            )
        )
    form = el(
        "form",
        el(
            "div",
            field_("order id", "order_id", size=38),
            field_("customer id", "customer_id", size=10),
            field_("name", "customer_name", size=24),
            field_("email", "customer_email", size=24),
            field_("currency", "currency", size=4),
            class_="fields",
        ),
        el(
            "table",
            el("thead", el("tr", [el("th", h) for h in ("sku", "name", "quantity", "unit price")])),
            el("tbody", rows),
            class_="items",
        ),
        el("button", "Place order", type="submit"),
        el(
            "p",
            "Prefilled from events/api-post-order.json with a new order id; posted to the local "
            "API as JSON. Empty item rows are left out.",
            class_="note",
        ),
        method="post",
        action="/order",
        id="order-form",
    )
    return join([form, el("div", _answer(data.answer), id="order-answer")])


def _answer(answer: OrderAnswer | None) -> Markup:
    if answer is None:
        return el("p", "The API's answer appears here.", class_="note")
    body = answer.body
    summary: list[Markup] = []
    if answer.status == 202 and isinstance(body, Mapping):
        summary.append(
            el(
                "p",
                el("strong", f"{answer.status} {body.get('status', '')}"),
                " — partition ",
                el("span", body.get("partition"), class_="partition"),
                ", offset ",
                el("span", body.get("offset"), class_="offset"),
                class_="ok",
            )
        )
    else:
        message = body.get("message", "") if isinstance(body, Mapping) else ""
        summary.append(el("p", el("strong", answer.status), " ", message, class_="error"))
        errors = body.get("errors") if isinstance(body, Mapping) else None
        if isinstance(errors, list) and errors:
            summary.append(
                el(
                    "table",
                    el("thead", el("tr", el("th", "field"), el("th", "reason"))),
                    el(
                        "tbody",
                        [
                            el(
                                "tr",
                                el("td", el("code", e.get("field"))),
                                el("td", e.get("reason")),
                            )
                            for e in errors
                            if isinstance(e, Mapping)
                        ],
                    ),
                    class_="field-errors",
                )
            )
    shown = json.dumps(body, indent=2) if not isinstance(body, str) else body
    summary.append(el("pre", shown, class_="answer-body"))
    return join(summary)


# --------------------------------------------------------------------------- live sections


def topic_section(figures: TopicFigures) -> Markup:
    """The same figures as `make status`: each partition's end offset, each group's committed
    offset and lag."""
    head = [el("th", "partition"), el("th", "end offset")]
    for group in figures.groups:
        head.append(el("th", group.group, el("br"), el("small", group.function), colspan=2))
    sub = [el("th", ""), el("th", "")] + [
        cell for _ in figures.groups for cell in (el("th", "committed"), el("th", "lag"))
    ]
    rows = []
    lags = {group.group: figures.lags(group) for group in figures.groups}
    for tp in figures.partitions:
        cells = [el("td", f"{tp.topic}-{tp.partition}"), el("td", figures.ends[tp], class_="num")]
        for group in figures.groups:
            committed = group.committed.get(tp)
            lag = lags[group.group][tp]
            cells.append(el("td", "-" if committed is None else committed, class_="num"))
            cells.append(el("td", lag, class_="num lag" if lag else "num"))
        rows.append(el("tr", cells, data_partition=tp.partition))
    totals = [el("td", "total"), el("td", sum(figures.ends.values()), class_="num")]
    for group in figures.groups:
        totals += [el("td", ""), el("td", group.lag, class_="num", data_group_lag=group.group)]
    return el(
        "table",
        el("thead", el("tr", head), el("tr", sub)),
        el("tbody", rows),
        el("tfoot", el("tr", totals)),
        class_="topic",
    )


INVOCATION_COLUMNS = ("at (UTC)", "by", "records", "offsets", "duration", "outcome", "detail")


def invocations_section(entries: Mapping[str, Sequence[Entry]]) -> Markup:
    parts = []
    for function, latest in entries.items():
        rows = [
            el(
                "tr",
                el("td", _clock(entry.started)),
                el("td", entry.source),
                el("td", "" if entry.records is None else entry.records, class_="num"),
                el("td", entry.where),
                el("td", f"{entry.duration_ms:.0f} ms", class_="num"),
                el("td", entry.outcome + (f" (retry {entry.attempt})" if entry.attempt else "")),
                el("td", entry.detail, class_="detail"),
                class_=entry.outcome.replace(" ", "-"),
            )
            for entry in latest
        ]
        parts.append(
            el(
                "div",
                el("h3", function),
                _table(INVOCATION_COLUMNS, rows),
                class_="function",
                data_function=function,
            )
        )
    return join(parts)


def emails_section(emails: Sequence[SentEmail], shown: int = 20) -> Markup:
    """The newest `shown`, in the order SES accepted them; the count says how many there are."""
    rows = [
        el(
            "tr",
            el("td", len(emails) - index, class_="num"),
            el("td", ", ".join(email.to)),
            el(
                "td",
                el(
                    "a",
                    email.subject or "(no subject)",
                    **_opens({"view": "email", "id": email.message_id}),
                ),
            ),
            data_message_id=email.message_id,
        )
        for index, email in enumerate(list(reversed(emails))[:shown])
    ]
    return join(
        [
            _count(
                f"{len(emails)} sent"
                + (f", the newest {shown} shown" if len(emails) > shown else ""),
                len(emails),
            ),
            _table(("#", "to", "subject"), rows, class_="emails"),
        ]
    )


def archive_section(total: int, objects: Sequence[ArchiveObject], bucket: str) -> Markup:
    rows = [
        el(
            "tr",
            el("td", _key_link("archive", o.key)),
            el("td", "?" if o.records is None else o.records, class_="num"),
            el(
                "td",
                "?" if o.first_offset is None else f"{o.first_offset}..{o.last_offset}",
                class_="num",
            ),
            el("td", "" if not o.poison else o.poison, class_="num"),
            el("td", _size(o.size), class_="num"),
            el("td", _clock(o.modified.timestamp())),
        )
        for o in _newest(objects)
    ]
    columns = ("key", "records", "offsets", "poison", "size", "written")
    return join([_bucket_count(bucket, objects, total), _table(columns, rows, class_="archive")])


def dead_letters_section(total: int, objects: Sequence[DeadLetterObject], bucket: str) -> Markup:
    rows = [
        el(
            "tr",
            el("td", o.kind),
            el("td", o.where),
            el("td", o.reason, class_="detail"),
            el("td", _size(o.size), class_="num"),
            el("td", _key_link("dead-letter", o.key)),
        )
        for o in _newest(objects)
    ]
    columns = ("kind", "record", "reason", "size", "key")
    table = _table(columns, rows, class_="dead-letters")
    return join([_bucket_count(bucket, objects, total), table])


def _table(columns: Sequence[str], rows: Sequence[Markup], class_: str | None = None) -> Markup:
    empty = el("tr", el("td", "none yet", colspan=len(columns)))
    return el(
        "table",
        el("thead", el("tr", [el("th", c) for c in columns])),
        el("tbody", rows or empty),
        class_=class_,
    )


def _count(said: str, count: int) -> Markup:
    return el("p", said, class_="count", data_count=count)


def _bucket_count(bucket: str, shown: Sequence[Any], total: int) -> Markup:
    newest = f", the newest {len(shown)} shown" if len(shown) < total else ""
    return _count(f"s3://{bucket}: {total} objects{newest}", total)


def _newest(objects: Sequence[Any]) -> list[Any]:
    return sorted(objects, key=lambda o: o.modified, reverse=True)


def _key_link(view: str, key: str) -> Markup:
    return el("a", key, **_opens({"view": view, "key": key}), class_="key")


def _opens(query: Mapping[str, str]) -> dict[str, str]:
    """A link that opens something in the viewer: the script fetches the viewer alone, so the
    rest of the page stays as it is; without the script, the whole page comes with it."""
    return {"href": url("/", query, "viewer"), "data_viewer": url("/viewer", query)}


def failed_section(error: BaseException) -> Markup:
    """A section that could not be read this time (the stack is starting or stopping)."""
    return el("p", f"cannot read this now: {type(error).__name__}: {error}", class_="error")


# --------------------------------------------------------------------------- viewers


def archive_view(key: str, metadata: Mapping[str, str], lines: Sequence[bytes]) -> Markup:
    shown = lines[:SHOWN_LINES]
    more = len(lines) - len(shown)
    return join(
        [
            el("h3", "archive object ", el("code", key)),
            _metadata(metadata),
            el(
                "p",
                f"{len(lines)} JSON lines, ungzipped"
                + (f"; the first {len(shown)} shown" if more else ""),
            ),
            el(
                "ol",
                [el("li", el("code", line.decode("utf-8", "replace"))) for line in shown],
                class_="lines",
            ),
        ]
    )


def dead_letter_view(key: str, document: Any) -> Markup:
    parts = [el("h3", "dead-letter object ", el("code", key))]
    if isinstance(document, Mapping):
        reason = document.get("reason")
        context = document.get("requestContext")
        condition = context.get("condition") if isinstance(context, Mapping) else None
        if reason is not None or condition is not None:
            parts.append(el("p", el("strong", "reason: "), reason or condition, class_="reason"))
        value = document.get("value")
        if isinstance(value, str):
            parts.append(el("p", el("strong", "value, decoded: "), _decoded(value)))
    parts.append(el("pre", json.dumps(document, indent=2, ensure_ascii=False), class_="document"))
    return join(parts)


def _decoded(base64_text: str) -> Markup:
    import base64
    import binascii

    try:
        raw = base64.b64decode(base64_text, validate=True)
    except (binascii.Error, ValueError):
        return text("(not base64)")
    try:
        return el("code", raw.decode("utf-8"))
    except UnicodeDecodeError:
        return text(f"({len(raw)} bytes, not UTF-8)")


def email_view(email: SentEmail) -> Markup:
    return join(
        [
            el("h3", "email ", el("code", email.message_id)),
            el(
                "dl",
                el("dt", "from"),
                el("dd", email.source),
                el("dt", "to"),
                el("dd", ", ".join(email.to)),
                el("dt", "subject"),
                el("dd", email.subject),
                class_="metadata",
            ),
            el("h4", "HTML part, as the customer sees it"),
            el(
                "iframe",
                src=url("/email.html", {"id": email.message_id}),
                sandbox="",
                referrerpolicy="no-referrer",
                title="the email's HTML part",
                class_="email",
            )
            if email.html
            else el("p", "(no HTML part)"),
            el("h4", "Text part"),
            el("pre", email.text, class_="email-text"),
        ]
    )


def not_found_view(what: str) -> Markup:
    return el("p", f"{what} is not there (any more).", class_="error")


def _metadata(metadata: Mapping[str, str]) -> Markup:
    if not metadata:
        return text("")
    return el(
        "dl",
        [(el("dt", name), el("dd", value)) for name, value in sorted(metadata.items())],
        class_="metadata",
    )


# --------------------------------------------------------------------------- actions


def _actions(data: Page) -> Markup:
    """Both forms, holding what was last sent from them (a dry run shows its plan beside the
    values that made it)."""
    fields = data.action_fields

    def options(choices: Sequence[tuple[str, str]], chosen: str) -> list[Markup]:
        return [el("option", label, value=v, selected=v == chosen) for v, label in choices]

    def checkbox(name: str, label: str) -> Markup:
        box = el("input", type="checkbox", name=name, checked=bool(fields.get(f"replay_{name}")))
        return el("label", box, f" {label}")

    def text_field(label: str, name: str, size: int, **extra: Any) -> Markup:
        value = fields.get(f"replay_{name}", "")
        return el(
            "label", el("span", label), el("input", name=name, value=value, size=size, **extra)
        )

    consumers = [(c, c) for c in data.consumers]
    replay = el(
        "form",
        el("h3", "Replay a time range to a consumer"),
        el(
            "label",
            el("span", "to"),
            el("select", options(consumers, fields.get("replay_target", "")), name="target"),
        ),
        text_field("since", "since", 20),
        text_field("until", "until", 20, placeholder="now"),
        text_field("partition", "partition", 3, placeholder="all"),
        checkbox("include_poison", "include poison"),
        checkbox("allow_resend", "allow resend"),
        el("button", "Dry run", type="submit"),
        el(
            "p",
            "ISO 8601 times, UTC unless zoned; until is exclusive, and empty means now.",
            class_="note",
        ),
        method="post",
        action="/replay/dry-run",
        id="replay-form",
    )
    sources = [
        ("dead-letters", "dead letters (poison records)"),
        ("failures", "failures (on-failure records)"),
    ]
    targets = [("", "the function it came from"), *consumers]
    redrive = el(
        "form",
        el("h3", "Redrive"),
        el(
            "label",
            el("span", "what"),
            el("select", options(sources, fields.get("redrive_source", "")), name="source"),
        ),
        el(
            "label",
            el("span", "to"),
            el("select", options(targets, fields.get("redrive_target", "")), name="target"),
        ),
        el("button", "Dry run", type="submit"),
        method="post",
        action="/redrive/dry-run",
        id="redrive-form",
    )
    return join([replay, redrive, el("div", _outcome(data.action), id="action-outcome")])


def _outcome(outcome: ActionOutcome | None) -> Markup:
    if outcome is None:
        return el(
            "p", "Each action shows its dry run first; the run is a second button.", class_="note"
        )
    parts = [
        el("h3", outcome.title),
        el("pre", "\n".join(outcome.lines), class_="ok" if outcome.ok else "error"),
    ]
    if outcome.run_path:
        parts.append(
            el(
                "form",
                el("input", type="hidden", name="plan", value=outcome.plan_id),
                el("button", outcome.run_label, type="submit", class_="run"),
                method="post",
                action=outcome.run_path,
                id="run-form",
            )
        )
    return join(parts)


# --------------------------------------------------------------------------- small parts


def _clock(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%H:%M:%S.%f")[:-3]


def _size(size: int) -> str:
    return f"{size} B" if size < 10_000 else f"{size / 1024:.1f} KiB"
