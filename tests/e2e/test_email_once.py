"""One email per order on the local stack, through the failures that used to duplicate or lose
one (issue 12): each test ends counting emails per order, and finding every order that was not
emailed dead-lettered with its reason."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest

from devstack import aws
from devstack.faults import dynamodb_failures, ses_refuses_calls_to
from tests.e2e.conftest import Stack, an_order, message, publish, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOTIFIER_KEYS = "email-notifier#order-confirmation#"


def dead_letters(stack: Stack) -> list[dict[str, Any]]:
    return [json.loads(body) for body in stack.objects("DeadLetterBucket").values()]


def ledger_statuses(stack: Stack) -> dict[str, str]:
    """The notifier's idempotency records: hashed key -> status."""
    table = stack.stack.functions["EmailNotifierFunction"].environment["IDEMPOTENCY_TABLE"]
    items = aws.client("dynamodb", stack.info.aws_endpoint).scan(TableName=table)["Items"]
    return {i["id"]["S"]: i["status"]["S"] for i in items if i["id"]["S"].startswith(NOTIFIER_KEYS)}


def test_a_ledger_write_failing_after_ses_accepted_is_retried_not_resent(
    local_stack: Stack,
) -> None:
    """SES accepts, recording it fails (DynamoDB 500s): the settle is retried in the same
    invocation, so the order is recorded as sent, and a redelivery sends nothing. One order,
    four failures: both of the client's attempts, twice, so the protocol's own retry runs."""
    assert local_stack.stack.aws_faults is not None
    fault = local_stack.stack.aws_faults.add(dynamodb_failures("UpdateItem", NOTIFIER_KEYS, 4))
    events = [an_order("settle@example.com")]
    lines_before = len(local_stack.lines)
    try:
        publish(local_stack, [message(e) for e in events])
        ids = {e.order_id for e in events}
        # The email goes out before the settle: keep the fault until it has failed 4 times.
        wait_until(lambda: fault.injected == 4, timeout_s=120)
        wait_until(lambda: ids <= set(local_stack.emailed_orders()), timeout_s=120)
    finally:
        local_stack.stack.aws_faults.clear()
    assert not [
        line for line in local_stack.lines[lines_before:] if " error " in line
    ]  # settled within the invocation
    wait_until(lambda: "INPROGRESS" not in ledger_statuses(local_stack).values(), timeout_s=30)
    # Every order is recorded as sent: no claim is left to expire into a second email.
    emailed = local_stack.emailed_orders()
    assert [emailed[i] for i in ids] == [1] * len(ids)

    publish(local_stack, [message(e) for e in events])  # the same orders again
    local_stack.wait_caught_up("EmailNotifierFunction")  # handled, not merely waited for
    emailed = local_stack.emailed_orders()
    assert [emailed[i] for i in ids] == [1] * len(ids)


def test_an_address_ses_refuses_costs_only_its_own_order(local_stack: Stack) -> None:
    """SES refuses a whole bulk call for one recipient (as its sandbox does for an unverified
    one): the call is split, that order alone is dead-lettered, the others are sent once. An
    address SES can never take (non-ASCII local part, from before the API refused them) is
    dead-lettered as it is read."""
    assert local_stack.stack.aws_faults is not None
    refused = "unverified@example.com"
    fault = local_stack.stack.aws_faults.add(ses_refuses_calls_to(refused))
    good = [an_order(f"fine{i}@example.com") for i in range(9)]
    bad = an_order(refused)
    legacy = an_order("legacy@example.com")
    key, value = message(legacy)
    unsendable = value.replace(b"legacy@example.com", "l\u00e9gacy@example.com".encode())
    try:
        publish(
            local_stack, [message(e) for e in [*good[:4], bad, *good[4:]]] + [(key, unsendable)]
        )
        ids = {e.order_id for e in good}
        wait_until(lambda: ids <= set(local_stack.emailed_orders()), timeout_s=120)
        wait_until(
            lambda: (
                {bad.order_id, legacy.order_id} <= {_order_of(d) for d in dead_letters(local_stack)}
            ),
            timeout_s=60,
        )
    finally:
        local_stack.stack.aws_faults.clear()
    assert fault.injected >= 1
    emailed = local_stack.emailed_orders()
    assert [emailed[i] for i in ids] == [1] * len(ids)
    assert emailed[bad.order_id] == 0
    assert emailed[legacy.order_id] == 0
    reasons = {_order_of(d): d["reason"] for d in dead_letters(local_stack)}
    assert "MessageRejected" in reasons[bad.order_id]
    assert "before the @-sign" in reasons[legacy.order_id]


def _order_of(letter: dict[str, Any]) -> str | None:
    key = letter.get("key")
    return base64.b64decode(key).decode() if key else None


def test_a_reused_order_id_is_dead_lettered_never_dropped(local_stack: Stack) -> None:
    """The same order_id with another order, after the API's window: not a duplicate to skip
    silently but a dead letter with the reason."""
    first = an_order("first@example.com")
    publish(local_stack, [message(first)])
    wait_until(lambda: local_stack.emailed_orders()[first.order_id] == 1, timeout_s=60)
    other = an_order("other@example.com", name="Grace Hopper", order_id=uuid.UUID(first.order_id))
    publish(local_stack, [message(other)])
    wait_until(
        lambda: any(
            "different order" in d["reason"] and _order_of(d) == first.order_id
            for d in dead_letters(local_stack)
        ),
        timeout_s=60,
    )
    assert local_stack.emailed_orders()[first.order_id] == 1


def test_an_order_held_by_another_invocation_is_sent_once_its_hold_ends(
    local_stack: Stack,
) -> None:
    """Another invocation claimed the order and died before sending (the claim is held for
    the stack's 60 s here): the mapping keeps retrying, each retry waiting for the claim, and
    the order is sent once the hold ends, once, never dead-lettered."""
    from aws_lambda_powertools.utilities.idempotency import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
    )

    from functions.email_notifier import app as notifier
    from orderstream.confirmation import Claim, order_fingerprint

    held = an_order("held@example.com")
    environment = local_stack.stack.functions["EmailNotifierFunction"].environment
    persistence = DynamoDBPersistenceLayer(
        table_name=environment["IDEMPOTENCY_TABLE"],
        boto3_client=aws.client("dynamodb", local_stack.info.aws_endpoint),
    )
    config = IdempotencyConfig(event_key_jmespath="order_id", hash_function="sha256")
    ledger = notifier.IdempotencyLedger(persistence, config, hold_ms=20_000)
    assert ledger.claim(held.order_id, order_fingerprint(held)) is Claim.CLAIMED
    claimed_at = time.monotonic()

    publish(local_stack, [message(held)])
    wait_until(lambda: local_stack.emailed_orders()[held.order_id] >= 1, timeout_s=120)
    assert time.monotonic() - claimed_at >= 19  # not before the hold ended
    local_stack.wait_caught_up("EmailNotifierFunction")
    assert local_stack.emailed_orders()[held.order_id] == 1
    assert held.order_id not in {_order_of(d) for d in dead_letters(local_stack)}


def test_a_claim_whose_lookup_fails_retries_that_order_alone(local_stack: Stack) -> None:
    """The claim finds the order claimed (a conditional failure without the old record) and
    the lookup that follows fails: a ledger error for that order, reported for retry, never an
    exception that fails the invocation while the chunk's other claims stay held."""
    assert local_stack.stack.aws_faults is not None
    faults = local_stack.stack.aws_faults
    events = [an_order(f"lookup{i}@example.com") for i in range(4)]
    conflict = faults.add(
        dynamodb_failures("PutItem", NOTIFIER_KEYS, 1, "ConditionalCheckFailedException", 400)
    )
    lookup = faults.add(dynamodb_failures("GetItem", NOTIFIER_KEYS, 2))
    lines_before = len(local_stack.lines)
    try:
        publish(local_stack, [message(e) for e in events])
        ids = {e.order_id for e in events}
        wait_until(lambda: ids <= set(local_stack.emailed_orders()), timeout_s=120)
    finally:
        faults.clear()
    assert conflict.injected == 1
    assert lookup.injected == 2  # both attempts of the one lookup
    emailed = local_stack.emailed_orders()
    assert [emailed[i] for i in ids] == [1] * len(ids)
    notifier_lines = [
        line for line in local_stack.lines[lines_before:] if line.startswith("EmailNotifier")
    ]
    assert any("item failures reported" in line for line in notifier_lines), notifier_lines
    assert not [line for line in notifier_lines if " error " in line], notifier_lines
