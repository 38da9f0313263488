"""Smoke: one test order through the deployed (or local) pipeline, each stage timed.

The first command to run after `sam deploy`: it checks that both consumers' mappings are
Enabled, places an order through the API (with the stage's API key), then waits for each stage
in turn and reports how long it took:

  mappings   both event-source mappings are Enabled (not still Creating after a deploy)
  accepted   the API answered 202
  on-topic   with the partition and offset the broker acknowledged
  confirmed  the email notifier recorded the confirmation as sent (its idempotency ledger)
  archived   the archiver wrote the record into its archive object

The confirmation goes to the notifier's EmailRedirectTo if it has one, else to the sender
address itself (a verified identity: mail that works in the SES sandbox too).
"""

from __future__ import annotations

import copy
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from operate.where import Place, PlaceError
from orderstream import settings
from orderstream.archive import Years, object_key, read_lines

NOTIFIER = "EmailNotifierFunction"
ARCHIVER = "S3ArchiverFunction"
SAMPLE = Path(__file__).resolve().parent.parent / "events" / "api-post-order.json"
# The archiver's mapping waits up to its batching window (60 s) before it invokes.
LIMITS_S = {"accepted": 30.0, "confirmed": 120.0, "archived": 240.0}
CONSUMERS = (NOTIFIER, ARCHIVER)


@dataclass
class Stage:
    name: str
    ok: bool
    seconds: float
    detail: str


def order_body(recipient: str) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(json.loads(json.loads(SAMPLE.read_text())["body"]))
    body["order_id"] = str(uuid.uuid4())
    body["customer"]["email"] = recipient
    body["customer"]["name"] = "orderstream smoke test"
    return body


def run(
    place: Place,
    limits: dict[str, float] | None = None,
    report: Callable[[Stage], None] = lambda stage: None,
) -> list[Stage]:
    """The stages reached, in order; the first that did not happen ends the list."""
    limit = {**LIMITS_S, **(limits or {})}
    environment = place.environment(NOTIFIER)
    recipient = environment.get(settings.EMAIL_REDIRECT_TO) or environment.get(
        settings.SENDER_EMAIL
    )
    if not recipient:
        raise PlaceError(f"{NOTIFIER} has neither {settings.EMAIL_REDIRECT_TO} nor a sender")
    url = place.outputs.get("ApiUrl")
    if not url:
        raise PlaceError(f"{place.description} has no ApiUrl output")
    stages: list[Stage] = []
    started = time.monotonic()

    def done(stage: Stage) -> bool:
        stages.append(stage)
        report(stage)
        return stage.ok

    # Right after a deploy the mappings may still be Creating or Enabling: say so, rather
    # than let the order wait for a consumer that is not reading yet.
    states = {c: [str(m.get("State")) for m in place.mappings(c)] for c in CONSUMERS}
    idle = {c: found for c, found in states.items() if found != ["Enabled"]}
    detail = (
        "both consumers' event-source mappings are Enabled"
        if not idle
        else "; ".join(f"{c}: {', '.join(found) or 'no mapping'}" for c, found in idle.items())
    )
    if not done(Stage("mappings", not idle, time.monotonic() - started, detail)):
        return stages

    body = order_body(recipient)
    status, answer = _post(url, body, place.api_key(), limit["accepted"])
    accepted = status == 202 and isinstance(answer, dict)
    detail = (
        f"order {body['order_id']} (HTTP 202)"
        if accepted
        else f"HTTP {status}: {json.dumps(answer)[:300]}"
    )
    if not done(Stage("accepted", accepted, time.monotonic() - started, detail)):
        return stages
    # The API answers only once the broker acknowledged the record: its coordinates say so.
    on_topic = isinstance(answer.get("topic"), str) and all(
        isinstance(answer.get(k), int) for k in ("partition", "offset")
    )
    detail = (
        f"{answer.get('topic')} partition {answer['partition']} offset {answer['offset']}"
        if on_topic
        else f"the answer names no partition and offset: {json.dumps(answer)[:300]}"
    )
    if not done(Stage("on-topic", on_topic, time.monotonic() - started, detail)):
        return stages

    ledger = _ledger(place, environment)
    ok = _wait(lambda: ledger.sent(body["order_id"]), limit["confirmed"])
    detail = f"confirmation to {recipient} recorded as sent" if ok else "no sent record yet"
    if not done(Stage("confirmed", ok, time.monotonic() - started, detail)):
        return stages

    found: list[str] = []

    def archived() -> bool:
        key = _archived_in(place, answer["topic"], answer["partition"], answer["offset"])
        if key:
            found.append(key)
        return bool(key)

    ok = _wait(archived, limit["archived"])
    detail = f"in {found[0]}" if ok else "not in the archive yet"
    done(Stage("archived", ok, time.monotonic() - started, detail))
    return stages


def _post(url: str, body: dict[str, Any], api_key: str | None, timeout_s: float) -> tuple[int, Any]:
    headers = {"content-type": "application/json"}
    if api_key:
        headers["x-api-key"] = api_key
    request = urllib.request.Request(  # noqa: S310 -- the stack's own API URL
        url, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        text = error.read()
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, text.decode(errors="replace")
    except OSError as exc:
        return 0, f"{type(exc).__name__}: {exc}"


def _ledger(place: Place, environment: dict[str, str]) -> Any:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    from functions.email_notifier import app as notifier

    table = environment.get(settings.IDEMPOTENCY_TABLE)
    if not table:
        raise PlaceError(f"{NOTIFIER} has no {settings.IDEMPOTENCY_TABLE} in its environment")
    persistence = DynamoDBPersistenceLayer(table_name=table, boto3_client=place.dynamodb)
    return notifier.IdempotencyLedger(persistence, notifier.ledger_config(environment), 0)


def _archived_in(place: Place, topic: str, partition: int, offset: int) -> str | None:
    """The archive object holding the record, looked for in the hours around now."""
    years = Years.parse(place.environment(ARCHIVER).get(settings.ARCHIVE_YEARS) or "")
    bucket = place.bucket("ArchiveBucket")
    now = datetime.now(UTC)
    for hours in (0, -1, 1):
        key = object_key(topic, partition, offset, years.hour_of(_ms(now + timedelta(hours=hours))))
        try:
            body = place.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                continue
            raise
        if any(json.loads(line)["offset"] == offset for line in read_lines(body)):
            return key
    return None


def _wait(condition: Callable[[], bool], limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
