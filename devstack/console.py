"""The local console: one page on 127.0.0.1 that shows an order's whole path through the stack.

It reads what `make status` reads (the broker, moto), what the stack keeps (the invocation
journal, the sent emails), and acts through `operate` (replay, redrive) exactly as the
`orderstream --local` command does, each action a dry run first. Rendering: console_page.py.
Why it works as it does: docs/design.md, "The local console".

A page on 127.0.0.1 can still be reached by other sites in the same browser: requests must name
this server in Host (no DNS rebinding), and a POST must come from the console's own page (no
cross-site request can place an order or start a redrive).
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from devstack import console_page as view
from devstack.markup import Markup
from devstack.ports import LOOPBACK, LoopbackServer
from devstack.status import TopicFigures, topic_figures
from devstack.template import ROOT
from orderstream import dead_letter as dead_letters
from orderstream.archive import read_lines

if TYPE_CHECKING:
    from devstack.stack import LocalStack
    from operate.where import Place

SAMPLE_ORDER = ROOT / "events" / "api-post-order.json"
HERE = Path(__file__).parent
STATIC = {
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}
ARCHIVE, DEAD_LETTERS = "ArchiveBucket", "DeadLetterBucket"
INVOCATIONS_SHOWN = 10
OBJECTS_SHOWN = 50  # of each bucket, newest first; the count says how many there are
KEPT_RESULTS = 50
# A plan older than this is not run: what it surveyed may have changed; dry-run it again.
PLAN_LIFETIME_S = 600
TOPIC_FIGURES_MAX_AGE_S = 1.0  # one reading of the broker serves every tab asking within it
TOPIC_FIGURES_RETRY_S = 5.0  # a broker that did not answer is asked again after this
MAX_FORM_BYTES = 64 * 1024
# Served with every page: nothing runs or loads that this server did not send.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
# An email's HTML part: no script, no requests, no navigation; shown in the console's frame only.
EMAIL_POLICY = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
)
T = TypeVar("T")
_ITEM_FIELD = re.compile(r"item(\d)_(sku|name|quantity|unit_price)")
_WHOLE_NUMBER = re.compile(r"-?\d{1,18}")


@dataclass
class _Plan:
    """A dry run's plan, kept for the one run that may follow it."""

    kind: str  # "replay" or "redrive"
    title: str
    run: Callable[[], list[str]]
    made: float = field(default_factory=time.monotonic)


class Console(LoopbackServer):
    thread_name = "console"

    def __init__(self, stack: LocalStack, port: int = 0) -> None:
        super().__init__(port, _handler(self))
        self.stack = stack
        self._lock = threading.Lock()
        self._action_lock = threading.Lock()
        self._answers: OrderedDict[str, view.OrderAnswer] = OrderedDict()
        self._outcomes: OrderedDict[str, view.ActionOutcome] = OrderedDict()
        self._plans: OrderedDict[str, _Plan] = OrderedDict()
        self._archive_cache: dict[tuple[str, str], view.ArchiveObject] = {}
        self._dead_letter_cache: dict[tuple[str, str], view.DeadLetterObject] = {}
        self._place: Place | None = None
        self._stopping = False
        self._figures_lock = threading.Lock()
        self._figures: tuple[float, TopicFigures | None] = (0.0, None)  # (read started, figures)
        self._figures_failure: tuple[float, Exception | None] = (0.0, None)
        self._acted = 0.0  # when this console last placed an order or ran an action

    def start(self) -> Console:
        self._stopping = False
        if self.stack.info is not None:
            self.place  # made before any request, not by the first few at once  # noqa: B018
        super().start()
        return self

    def stop(self) -> None:
        """Refuse what still arrives on open connections (a polling tab keeps one), then stop."""
        self._stopping = True
        super().stop()

    # ----------------------------------------------------------------- what it reads

    @property
    def place(self) -> Place:
        """The local stack, as `orderstream --local` reaches it."""
        with self._lock:
            if self._place is None:
                from operate.where import of_local_stack

                assert self.stack.info is not None
                self._place = of_local_stack(self.stack.info)
            return self._place

    def topic_figures(self) -> TopicFigures:
        """The broker's figures, read at most once a second whoever asks, and read again after
        an order or an action of this console (its page then shows what it just did). One
        request reads at a time; the others take the last reading meanwhile, and a failed
        reading is said again for a few seconds rather than tried by every request."""
        # Wait for the reading in progress only when the last one will not do: none yet, or
        # one made before this console acted.
        must_wait = self._figures[1] is None or self._figures[0] < self._acted
        if not self._figures_lock.acquire(blocking=must_wait):
            return self._last_figures()
        try:
            started, figures = self._figures
            now = time.monotonic()
            fresh = figures is not None and started >= self._acted
            if fresh and now - started <= TOPIC_FIGURES_MAX_AGE_S:
                return self._last_figures()
            failed_at, failure = self._figures_failure
            if failure is not None and now - failed_at <= TOPIC_FIGURES_RETRY_S:
                raise failure
            try:
                self._figures = (now, topic_figures(self._info()))
                self._figures_failure = (0.0, None)
            except Exception as exc:
                self._figures_failure = (now, exc)
                raise
            return self._last_figures()
        finally:
            self._figures_lock.release()

    def _last_figures(self) -> TopicFigures:
        figures = self._figures[1]
        if figures is None:
            failure = self._figures_failure[1]
            raise failure if failure is not None else RuntimeError("reading the broker")
        return figures

    def live(self) -> dict[str, Markup]:
        sections: dict[str, Callable[[], Markup]] = {
            "live-topic": lambda: view.topic_section(self.topic_figures()),
            "live-invocations": self._invocations,
            "live-emails": lambda: view.emails_section(self.stack.emails),
            "live-archive": lambda: view.archive_section(
                *self.archive_objects(), self._bucket(ARCHIVE)
            ),
            "live-dead-letters": lambda: view.dead_letters_section(
                *self.dead_letter_objects(), self._bucket(DEAD_LETTERS)
            ),
        }
        rendered = {}
        for name, render in sections.items():
            try:
                rendered[name] = render()
            except Exception as exc:  # the broker or moto is busy or going away: say so
                rendered[name] = view.failed_section(exc)
        return rendered

    def _info(self) -> Any:
        assert self.stack.info is not None
        return self.stack.info

    def _bucket(self, logical_id: str) -> str:
        return str(self._info().buckets[logical_id])

    def _invocations(self) -> Markup:
        """The functions the API and the mappings invoke, and any other that was invoked (the
        custom resources run in CloudFormation only)."""
        info = self._info()
        latest = {f: self.stack.journal.latest(f, INVOCATIONS_SHOWN) for f in info.functions}
        first = [*self.stack.api_functions, *sorted(info.groups)]  # the order's path
        others = sorted(f for f in latest if f not in first and latest[f])
        return view.invocations_section({f: latest[f] for f in [*first, *others] if f in latest})

    def _listed(self, logical_id: str) -> Iterator[dict[str, Any]]:
        paginator = self.place.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket(logical_id)):
            yield from page.get("Contents", [])

    def archive_objects(self) -> tuple[int, list[view.ArchiveObject]]:
        """Each object's counts come from its metadata."""

        def describe(listed: dict[str, Any]) -> view.ArchiveObject:
            head = self.place.s3.head_object(Bucket=self._bucket(ARCHIVE), Key=listed["Key"])
            metadata = head.get("Metadata", {})
            return view.ArchiveObject(
                key=listed["Key"],
                size=int(listed["Size"]),
                modified=listed["LastModified"],
                records=_number(metadata.get("record-count")),
                first_offset=_number(metadata.get("first-offset")),
                last_offset=_number(metadata.get("last-offset")),
                poison=_number(metadata.get("poison-count")),
            )

        return self._described(ARCHIVE, self._archive_cache, describe)

    def dead_letter_objects(self) -> tuple[int, list[view.DeadLetterObject]]:
        def describe(listed: dict[str, Any]) -> view.DeadLetterObject:
            document = self._document(DEAD_LETTERS, listed["Key"])
            kind, reason, where = _dead_letter_facts(listed["Key"], document)
            return view.DeadLetterObject(
                key=listed["Key"],
                size=int(listed["Size"]),
                modified=listed["LastModified"],
                kind=kind,
                reason=reason,
                where=where,
            )

        return self._described(DEAD_LETTERS, self._dead_letter_cache, describe)

    def _described(
        self,
        logical_id: str,
        cache: dict[tuple[str, str], T],
        describe: Callable[[dict[str, Any]], T],
    ) -> tuple[int, list[T]]:
        """How many objects the bucket holds, and the newest OBJECTS_SHOWN of them described,
        each read once per version (an object that went between the listing and the reading
        is left out until the next round). The cache keeps only what was last shown."""
        from botocore.exceptions import ClientError

        listing = sorted(self._listed(logical_id), key=lambda o: o["LastModified"], reverse=True)
        found: dict[tuple[str, str], T] = {}
        for listed in listing[:OBJECTS_SHOWN]:
            cache_key = (listed["Key"], listed["ETag"])
            described = cache.get(cache_key)  # another request may be replacing the cache
            if described is None:
                try:
                    described = cache[cache_key] = describe(listed)
                except ClientError:
                    continue
            found[cache_key] = described
        with self._lock:
            cache.clear()
            cache.update(found)
        return len(listing), list(found.values())

    def _body(self, logical_id: str, key: str) -> tuple[bytes, dict[str, str]] | None:
        from botocore.exceptions import ClientError

        try:
            got = self.place.s3.get_object(Bucket=self._bucket(logical_id), Key=key)
        except ClientError:
            return None
        return got["Body"].read(), dict(got.get("Metadata", {}))

    def _document(self, logical_id: str, key: str) -> Any:
        got = self._body(logical_id, key)
        if got is None:
            return None
        try:
            return json.loads(got[0])
        except ValueError:
            return got[0].decode("utf-8", "replace")

    def viewer(self, query: dict[str, str]) -> Markup | None:
        """What the viewer shows; whatever went wrong reading it is said in its place."""
        try:
            return self._viewed(query)
        except Exception as exc:  # a damaged object, a key S3 refuses, moto going away
            return view.failed_section(exc)

    def _viewed(self, query: dict[str, str]) -> Markup | None:
        what, key = query.get("view"), query.get("key", "")
        if what in ("archive", "dead-letter") and not key:
            return view.not_found_view("an object without a key")
        if what == "archive":
            got = self._body(ARCHIVE, key)
            if got is None:
                return view.not_found_view(f"archive object {key!r}")
            body, metadata = got
            try:
                lines = list(read_lines(body))
            except (OSError, EOFError, zlib.error) as exc:  # not gzip: say so, show no bytes
                return view.not_found_view(f"a readable archive object at {key!r} ({exc})")
            return view.archive_view(key, metadata, lines)
        if what == "dead-letter":
            document = self._document(DEAD_LETTERS, key)
            if document is None:
                return view.not_found_view(f"dead-letter object {key!r}")
            return view.dead_letter_view(key, document)
        if what == "email":
            email = self.email(query.get("id", ""))
            return view.not_found_view("that email") if email is None else view.email_view(email)
        return None

    def email(self, message_id: str) -> Any:
        return next((e for e in self.stack.emails if e.message_id == message_id), None)

    def render(self, query: dict[str, str]) -> bytes:
        answer = self._answers.get(query.get("answer", ""))
        fields = sample_fields()
        if answer is not None:
            fields = dict(answer.fields)
            if answer.status == 202:  # placed: the next order is a new one
                fields["order_id"] = str(uuid.uuid4())
        info = self._info()
        action = self._outcomes.get(query.get("action", ""))
        return view.page(
            view.Page(
                stack_lines=[
                    ("api", f"{info.api_url}/orders"),
                    ("broker", info.bootstrap_servers),
                    ("aws", info.aws_endpoint),
                    ("lambda", info.lambda_endpoint),
                ],
                order_fields=fields,
                answer=answer,
                live=self.live(),
                consumers=sorted(info.groups),
                action_fields={**_replay_defaults(), **(action.fields if action else {})},
                action=action,
                viewer=self.viewer(query),
            )
        )

    # ----------------------------------------------------------------- what it does

    def place_order(self, form: dict[str, str]) -> str:
        """Post the form's order to the local API; the answer's id for the page to show."""
        request = urllib.request.Request(  # noqa: S310 -- the stack's own http:// API
            f"{self._info().api_url}/orders",
            data=json.dumps(order_body(form)).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 -- our API
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        except OSError as exc:  # the API is down or did not answer in time: say so beside the form
            reason = f"the local API did not answer: {type(exc).__name__}: {exc}"
            return self._keep(self._answers, view.OrderAnswer(0, reason, form))
        finally:
            self._acted = time.monotonic()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        return self._keep(self._answers, view.OrderAnswer(status, body, form))

    def dry_run(self, kind: str, form: dict[str, str]) -> str:
        """Plan the action, show the plan, and keep it for one run."""
        try:
            outcome = self._plan_replay(form) if kind == "replay" else self._plan_redrive(form)
        except Exception as exc:  # a refusal or a bad field: shown, like the command prints it
            outcome = view.ActionOutcome(
                f"{kind}: refused", [f"{type(exc).__name__}: {exc}"], False
            )
        sent = {f"{kind}_{name}": value for name, value in form.items()}
        return self._keep(self._outcomes, dataclasses.replace(outcome, fields=sent))

    def run(self, kind: str, form: dict[str, str]) -> str:
        """Run what a dry run showed, once: a plan is gone after its run, and one older than
        PLAN_LIFETIME_S is not run. One action at a time: a plan that finds another running is
        kept, and offered again."""
        if not self._action_lock.acquire(blocking=False):
            outcome = view.ActionOutcome(
                "not run yet",
                ["Another action is running: this plan is kept; run it when that one ends."],
                False,
                run_label="Run this plan",
                run_path=f"/{kind}/run",
                plan_id=form.get("plan", ""),
            )
            return self._keep(self._outcomes, outcome)
        try:
            plan = self._take_plan(kind, form.get("plan", ""))
            if isinstance(plan, str):
                return self._keep(self._outcomes, view.ActionOutcome("nothing run", [plan], False))
            try:
                lines = plan.run()
                ok = not any(line.startswith("  error:") for line in lines)
            except Exception as exc:
                lines, ok = [f"{type(exc).__name__}: {exc}"], False
            return self._keep(self._outcomes, view.ActionOutcome(plan.title, lines, ok))
        finally:
            self._acted = time.monotonic()
            self._action_lock.release()

    def _take_plan(self, kind: str, plan_id: str) -> _Plan | str:
        """The plan, taken out so that it cannot run twice; or why there is none to run."""
        with self._lock:
            plan = self._plans.get(plan_id)
            if plan is None or plan.kind != kind:
                return "That plan was run already, or never made: start with its dry run."
            del self._plans[plan_id]
        if time.monotonic() - plan.made > PLAN_LIFETIME_S:
            return f"That plan is older than {PLAN_LIFETIME_S} s: dry-run it again."
        return plan

    def _plan_replay(self, form: dict[str, str]) -> view.ActionOutcome:
        from operate import replay
        from orderstream import settings

        target = form.get("target", "")
        partition = form.get("partition", "").strip()
        planned = replay.prepare(
            self.place,
            target,
            settings.DEFAULT_ORDER_TOPIC,
            replay.parse_time(form.get("since", "").strip()),
            # Empty: now, when the dry run is made (a page left open does not move its default).
            replay.parse_time(form.get("until", "").strip() or replay.now().isoformat()),
            int(partition) if partition else None,
            include_poison=bool(form.get("include_poison")),
            allow_resend=bool(form.get("allow_resend")),
        )
        lines = [f"dry run: replay to {target}", *planned.describe()]
        if not planned.records:
            return view.ActionOutcome("replay: nothing to replay", lines, True)

        def go() -> list[str]:
            if not form.get("allow_resend"):  # the notifier may have forgotten since the dry run
                replay.check_memory(self.place, target, planned, replay.now())
            tally = replay.run(self.place, target, planned)
            return _summary(f"replayed to {target}", tally)

        label = f"Replay {planned.records} records to {target}"
        return self._offer("replay", f"replay to {target}", lines, label, go)

    def _plan_redrive(self, form: dict[str, str]) -> view.ActionOutcome:
        from operate import redrive

        source = form.get("source", "")
        if source not in ("failures", "dead-letters"):
            raise ValueError(f"nothing to redrive from {source!r}")
        target = form.get("target") or None
        planned = redrive.plan(self.place, source, target)  # type: ignore[arg-type]
        lines = [f"dry run: redrive {source}", *planned.describe()]
        if not planned.items:
            return view.ActionOutcome("redrive: nothing to redrive", lines, True)

        def go() -> list[str]:
            return _summary(f"redrove {source}", redrive.run(self.place, planned))

        label = f"Redrive {len(planned.items)} objects ({len(planned.records)} records)"
        return self._offer("redrive", f"redrive {source}", lines, label, go)

    def _offer(
        self, kind: str, title: str, lines: list[str], label: str, go: Callable[[], list[str]]
    ) -> view.ActionOutcome:
        """The dry run's outcome, with a button that runs its plan."""
        plan_id = self._keep(self._plans, _Plan(kind, title, go))
        return view.ActionOutcome(
            f"{kind}: dry run", lines, True, label, run_path=f"/{kind}/run", plan_id=plan_id
        )

    def _keep(self, kept: OrderedDict[str, Any], value: Any) -> str:
        key = secrets.token_urlsafe(12)
        with self._lock:
            kept[key] = value
            while len(kept) > KEPT_RESULTS:
                kept.popitem(last=False)
        return key


# --------------------------------------------------------------------------- the order form


def sample_fields() -> dict[str, str]:
    """The form's fields from events/api-post-order.json, with a new order id."""
    body = json.loads(json.loads(SAMPLE_ORDER.read_text())["body"])
    customer = body.get("customer", {})
    fields = {
        "order_id": str(uuid.uuid4()),
        "customer_id": str(customer.get("id", "")),
        "customer_name": str(customer.get("name", "")),
        "customer_email": str(customer.get("email", "")),
        "currency": str(body.get("currency", "")),
    }
    for index, item in enumerate(body.get("items", [])[: view.ITEM_ROWS]):
        for part in ("sku", "name", "quantity", "unit_price"):
            fields[f"item{index}_{part}"] = str(item.get(part, ""))
    return fields


def order_body(form: dict[str, str]) -> dict[str, Any]:
    """The API's JSON from the form. A quantity that is a whole number goes as a number; any
    other text goes as it is, so the API names the field it refuses."""
    items: dict[int, dict[str, Any]] = {}
    for name, value in form.items():
        matched = _ITEM_FIELD.fullmatch(name)
        if matched and value.strip():
            index, part = int(matched.group(1)), matched.group(2)
            items.setdefault(index, {})[part] = (
                int(value)
                if part == "quantity" and _WHOLE_NUMBER.fullmatch(value.strip())
                else value
            )
    return {
        "order_id": form.get("order_id", ""),
        "customer": {
            "id": form.get("customer_id", ""),
            "email": form.get("customer_email", ""),
            "name": form.get("customer_name", ""),
        },
        "items": [items[i] for i in sorted(items)],
        "currency": form.get("currency", ""),
    }


# --------------------------------------------------------------------------- small parts


def _number(raw: str | None) -> int | None:
    return int(raw) if raw is not None and _WHOLE_NUMBER.fullmatch(raw) else None


def _dead_letter_facts(key: str, document: Any) -> tuple[str, str, str]:
    """(kind, reason, record) of an object in the dead-letter bucket."""
    from operate.redrive import FAILURES_PREFIX, REDRIVEN_PREFIX

    kind = (
        "redriven"
        if key.startswith(REDRIVEN_PREFIX)
        else "on-failure"
        if key.startswith(FAILURES_PREFIX)
        else "dead letter"
        if key.startswith(f"{dead_letters.PREFIX}/")
        else "other"
    )
    if not isinstance(document, dict):
        return kind, "(not a JSON document)", ""
    if "KafkaBatchInfo" in document:
        context = _mapping(document.get("requestContext"))
        spans = _mapping(_mapping(document.get("KafkaBatchInfo")).get("recordsInfo"))
        where = " ".join(
            f"{name}@{span.get('firstRecordOffset')}..{span.get('lastRecordOffset')}"
            for name, span in sorted(spans.items())
            if isinstance(span, dict)
        )
        reason = (
            f"{context.get('condition')} after {context.get('approximateInvokeCount')} invocations"
        )
        return kind, reason, where
    where = f"{document.get('topic')}-{document.get('partition')}@{document.get('offset')}"
    return kind, str(document.get("reason", "")), where


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _summary(title: str, tally: Any) -> list[str]:
    return [
        title,
        *(f"  {line}" for line in tally.lines()),
        *(f"  error: {e}" for e in tally.errors[:10]),
    ]


def _replay_defaults() -> dict[str, str]:
    """The archiver (a replay to it rewrites nothing and mails no one), from an hour ago to
    the minute, until now (an empty `until`)."""
    from operate.replay import ARCHIVER

    since = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    return {
        "replay_target": ARCHIVER,
        "replay_since": since.strftime("%Y-%m-%dT%H:%MZ"),
        "replay_until": "",
    }


# --------------------------------------------------------------------------- HTTP


def _handler(console: Console) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "orderstream-console"
        protocol_version = "HTTP/1.1"
        timeout = 30  # an idle or half-sent request holds its thread no longer

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the stack's log is for the pipeline

        def _hosts(self) -> tuple[str, ...]:
            """The names this server answers to."""
            return tuple(f"{name}:{console.port}" for name in (LOOPBACK, "localhost"))

        def _ours(self) -> bool:
            """A Host naming this server: a page from another name (DNS rebinding) is refused."""
            return self.headers.get("Host", "") in self._hosts()

        def _same_origin(self) -> bool:
            """A POST from the console's own page, or from no page at all (curl)."""
            site = self.headers.get("Sec-Fetch-Site")
            if site is not None and site not in ("same-origin", "none"):
                return False
            origin = self.headers.get("Origin")
            return origin is None or origin in (f"http://{host}" for host in self._hosts())

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str,
            policy: str = PAGE_POLICY,
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", policy)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "same-origin")  # "no-referrer" makes Origin null
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _refuse(self, status: HTTPStatus, why: str) -> None:
            """Answer and hang up: a body left unread must never be read as the next request
            on this connection (it could carry a Host and no Origin, and pass both checks)."""
            self.close_connection = True
            self._send(
                status, why.encode(), "text/plain; charset=utf-8", headers={"Connection": "close"}
            )

        def _see(self, location: str) -> None:
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", headers={"Location": location})

        def _unwelcome(self) -> bool:
            """Refused (and answered) before anything is read: stopping, or not our name."""
            if console._stopping:
                self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "the stack is stopping")
            elif not self._ours():
                self._refuse(HTTPStatus.MISDIRECTED_REQUEST, "not this server's name")
            else:
                return False
            return True

        def do_GET(self) -> None:
            if self._unwelcome():
                return None
            split = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            try:
                if split.path == "/":
                    return self._send(200, console.render(query), "text/html; charset=utf-8")
                if split.path == "/viewer":
                    shown = console.viewer(query) or view.not_found_view("that")
                    return self._send(200, shown.encode(), "text/html; charset=utf-8")
                if split.path == "/live":
                    body = json.dumps(console.live()).encode()
                    return self._send(200, body, "application/json")
                if split.path in STATIC:
                    name, content_type = STATIC[split.path]
                    return self._send(200, (HERE / name).read_bytes(), content_type)
                if split.path == "/email.html":
                    email = console.email(query.get("id", ""))
                    if email is None or not email.html:
                        return self._refuse(HTTPStatus.NOT_FOUND, "no such email")
                    return self._send(
                        200, email.html.encode(), "text/html; charset=utf-8", EMAIL_POLICY
                    )
            except Exception as exc:
                return self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, f"{type(exc).__name__}: {exc}")
            return self._refuse(HTTPStatus.NOT_FOUND, "no such page")

        do_HEAD = do_GET

        def do_POST(self) -> None:
            if self._unwelcome():
                return None
            if not self._same_origin():
                return self._refuse(HTTPStatus.FORBIDDEN, "only the console's own page may post")
            length = self.headers.get("Content-Length", "")
            if not (length.isascii() and length.isdigit()):
                return self._refuse(HTTPStatus.LENGTH_REQUIRED, "a form with its length")
            if int(length) > MAX_FORM_BYTES:
                return self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "form too large")
            if self.headers.get_content_type() != "application/x-www-form-urlencoded":
                return self._refuse(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "a form post only")
            raw = self.rfile.read(int(length)).decode("utf-8", "replace")
            form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
            path = urlsplit(self.path).path
            try:
                if path == "/order":
                    return self._see(f"/?answer={console.place_order(form)}#order")
                if path in ("/replay/dry-run", "/redrive/dry-run"):
                    kind = path.split("/")[1]
                    return self._see(f"/?action={console.dry_run(kind, form)}#actions")
                if path in ("/replay/run", "/redrive/run"):
                    kind = path.split("/")[1]
                    return self._see(f"/?action={console.run(kind, form)}#actions")
            except Exception as exc:
                return self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, f"{type(exc).__name__}: {exc}")
            return self._refuse(HTTPStatus.NOT_FOUND, "no such action")

    return Handler
