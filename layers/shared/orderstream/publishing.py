"""Accepting an order: publish its `order-placed` event once per order_id and say where it went.

Knows nothing of HTTP or Lambda: the order API adapts requests to `OrderIntake`. Why the
idempotency record comes before the publish, and the one gap left: docs/design.md,
"How an order is accepted".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyInconsistentStateError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.serialization.base import (
    BaseIdempotencySerializer,
)
from kafka.errors import KafkaError
from pydantic import BaseModel, ConfigDict, Field

from orderstream import kafka_client, settings
from orderstream.events import OrderPlaced, to_message
from orderstream.models import OrderRequest

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer
    from aws_lambda_powertools.utilities.typing import LambdaContext

#: Long enough for any client's retry schedule; a replay after this publishes the order again.
DEFAULT_IDEMPOTENCY_EXPIRES_SECONDS: Final = 24 * 60 * 60

# Fixed rather than derived from the function's name, which changes with the stack: a renamed
# function must still recognise the orders it accepted yesterday.
IDEMPOTENCY_KEY_PREFIX: Final = "order-api#order"


class Accepted(BaseModel):
    """The 202 answer: the order's event is on the topic at this partition and offset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: uuid.UUID
    status: Literal["accepted"]
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


@dataclass(frozen=True, slots=True)
class IntakeResult:
    accepted: Accepted
    #: True when answered from the idempotency record: nothing was published this time.
    replayed: bool = False
    #: Time until the broker acknowledged, connecting included; None for a replay.
    publish_ms: float | None = None


class IntakeError(Exception):
    """An order that was not accepted; the message is safe to show a client."""


class BrokerUnavailableError(IntakeError):
    """The broker could not be reached or did not acknowledge in time. Retrying is safe."""


class IdempotencyStoreUnavailableError(IntakeError):
    """The idempotency table could not be read or written. Retrying is safe."""


class OrderIdConflictError(IntakeError):
    """This order_id was already used for a different order."""


class OrderInProgressError(IntakeError):
    """Another request with this order_id is being published right now."""


def idempotency_expiry(environ: Mapping[str, str] | None = None) -> int:
    """The API's replay window; a minute at least, a day by default."""
    return settings.idempotency_expiry(DEFAULT_IDEMPOTENCY_EXPIRES_SECONDS, 60, environ)


def publish(event: OrderPlaced, *, topic: str, send_timeout_ms: int) -> IntakeResult:
    """Send the event with acks=all and wait for the acknowledgement, never past the timeout.

    Any failure discards the container's producer: after a delivery timeout an idempotent
    producer's sequence numbers may be out of step with the broker, and a fresh producer also
    re-resolves the cluster's addresses.
    """
    message = to_message(event)
    started = time.monotonic()
    deadline = started + send_timeout_ms / 1000
    try:
        producer = kafka_client.get_producer()
        pending = producer.send(
            topic, key=message.key, value=message.value, headers=message.headers
        )
        sent = time.monotonic()
        report = pending.get(timeout=max(0.0, deadline - sent))
    except KafkaError as exc:
        kafka_client.discard_producer()
        raise BrokerUnavailableError(
            "The order could not be published: the message broker did not acknowledge it in time."
        ) from exc
    accepted = Accepted(
        order_id=event.order.order_id,
        status="accepted",
        topic=report.topic,
        partition=report.partition,
        offset=report.offset,
    )
    return IntakeResult(accepted, publish_ms=(time.monotonic() - started) * 1000)


class _StoredAnswer(BaseIdempotencySerializer):
    """Keep only the 202 body in the idempotency record: no customer data at rest there."""

    def to_dict(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, IntakeResult):
            raise TypeError(f"expected an IntakeResult, not {type(data).__name__}")
        return data.accepted.model_dump(mode="json")

    def from_dict(self, data: dict[str, Any]) -> IntakeResult:
        return IntakeResult(Accepted.model_validate(data), replayed=True)


class OrderIntake:
    """Accepts each order_id once: the first request publishes, the same order again replays.

    The idempotency key is the order_id; the record also holds a hash of the whole validated
    order, so the same order_id with different content is refused instead of replayed.
    """

    def __init__(
        self,
        persistence: BasePersistenceLayer,
        *,
        topic: str,
        send_timeout_ms: int,
        expires_after_seconds: int = DEFAULT_IDEMPOTENCY_EXPIRES_SECONDS,
    ) -> None:
        self.topic = topic
        self.send_timeout_ms = send_timeout_ms
        self._config = IdempotencyConfig(
            event_key_jmespath="order_id",
            payload_validation_jmespath="@",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=expires_after_seconds,
            hash_function="sha256",
        )
        # Configured here, not lazily on the first call: two first calls racing each other could
        # otherwise see a half-configured store (Powertools marks it configured before filling it).
        persistence.configure(self._config, key_prefix=IDEMPOTENCY_KEY_PREFIX)
        self._publish_once = idempotent_function(
            self._publish,
            data_keyword_argument="order",
            persistence_store=persistence,
            config=self._config,
            output_serializer=_StoredAnswer(),
            key_prefix=IDEMPOTENCY_KEY_PREFIX,
        )

    def accept(
        self,
        order: OrderRequest,
        *,
        correlation_id: str,
        lambda_context: LambdaContext | None = None,
    ) -> IntakeResult:
        """Publish the order unless this order_id was accepted already.

        Without an order_id the order gets a fresh one and nothing can recognise a retry, so
        no idempotency record is written for it: clients that retry must send an order_id.
        """
        if order.order_id is None:
            return self._publish(order=order, correlation_id=correlation_id, published=[])
        if lambda_context is not None:
            # An in-progress record outlives a timed-out invocation only until its deadline.
            self._config.register_lambda_context(lambda_context)
        published: list[IntakeResult] = []
        try:
            outcome: IntakeResult = self._publish_once(
                order=order, correlation_id=correlation_id, published=published
            )
        except IdempotencyValidationError:
            raise OrderIdConflictError(
                "This order_id was already used for a different order. Send a new order_id, "
                "or resend the original order unchanged to get its answer again."
            ) from None
        except IdempotencyAlreadyInProgressError:
            raise OrderInProgressError(
                "An order with this order_id is being processed right now; retry shortly."
            ) from None
        except (IdempotencyPersistenceLayerError, IdempotencyInconsistentStateError) as exc:
            if published:
                # On the topic, but the success could not be recorded: the order is accepted.
                # A replay may publish it again once the in-progress record expires, and
                # consumers drop that duplicate by order_id.
                return published[0]
            raise IdempotencyStoreUnavailableError(
                "The order could not be checked for duplicates right now; retry shortly."
            ) from exc
        return outcome

    def _publish(
        self, *, order: OrderRequest, correlation_id: str, published: list[IntakeResult]
    ) -> IntakeResult:
        event = OrderPlaced.new(order.to_order(), correlation_id)
        outcome = publish(event, topic=self.topic, send_timeout_ms=self.send_timeout_ms)
        published.append(outcome)
        return outcome
