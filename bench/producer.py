"""The producer's warm cost: POST /orders through the handler vs the same I/O done bare.

The bare side replays the calls the handler was seen to make for its previous order (each AWS
call with its parameters, each Kafka send) under a fresh idempotency key, so it does the
handler's I/O without the handler's code and without a copy of Powertools' internals.

    .venv/bin/python bench/run.py --parts producer
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from unittest import mock

from bench._common import ROOT, PartResult, percentile_rows, progress
from devstack.context import LambdaContext

ORDERS: Final = 2_000
WARMUP: Final = 50


@dataclass(frozen=True)
class AwsCall:
    service: str
    operation: str
    params: dict[str, Any]
    config: Any  # the handler client's botocore Config, so the replay's client matches it


@dataclass(frozen=True)
class KafkaSend:
    topic: str
    kwargs: dict[str, Any]  # key, value, headers as the handler passed them


@dataclass
class Recorder:
    """Watches both sides' I/O: records the handler's, counts everyone's while measuring."""

    side: str = "setup"  # "handler", "bare" or "setup"
    measured: bool = False
    seen: list[AwsCall | KafkaSend] = field(default_factory=list)  # the current handler order
    last: list[AwsCall | KafkaSend] = field(default_factory=list)  # the previous one, replayed
    calls: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    @contextmanager
    def turn(self, side: str, measured: bool) -> Iterator[None]:
        self.side, self.measured, self.seen = side, measured, []
        try:
            yield
        finally:
            if side == "handler":
                self.last = self.seen
            self.side = "setup"

    def aws(self, client: Any, operation: str, params: dict[str, Any]) -> None:
        if self.measured:
            self.calls[self.side][operation] += 1
        if self.side == "handler":
            meta = client.meta
            self.seen.append(
                AwsCall(
                    meta.service_model.service_name, operation, copy.deepcopy(params), meta.config
                )
            )

    def kafka(self, topic: str, kwargs: dict[str, Any]) -> None:
        if self.measured:
            self.calls[self.side]["Kafka send"] += 1
        if self.side == "handler":
            self.seen.append(KafkaSend(topic, dict(kwargs)))


class Replayer:
    """The bare side: the recorded calls again, each one timed, under a key of its own."""

    def __init__(self, producer: Any, key_attributes: dict[str, str]) -> None:
        self.producer = producer
        self.key_attributes = key_attributes  # table -> its hash key attribute
        self.clients: dict[str, Any] = {}
        self.steps: defaultdict[str, list[float]] = defaultdict(list)

    def replay(self, recorded: list[AwsCall | KafkaSend], measured: bool) -> None:
        fresh = f"bench-bare#{uuid.uuid4()}"
        keys = {key for call in recorded for key in self._keys(call)}
        for call in recorded:
            started = time.perf_counter()
            if isinstance(call, KafkaSend):
                self.producer.send(call.topic, **call.kwargs).get(timeout=10)
                step = "Kafka send().get()"
            else:
                client = self._client(call)
                params = _replace_strings(call.params, keys, fresh)
                client._make_api_call(call.operation, params)
                step = call.operation
            if measured:
                self.steps[step].append(time.perf_counter() - started)

    def _client(self, call: AwsCall) -> Any:
        from boto3.session import Session

        if call.service not in self.clients:
            session: Any = Session()  # the service is only known at run time
            self.clients[call.service] = session.client(call.service, config=call.config)
        return self.clients[call.service]

    def _keys(self, call: AwsCall | KafkaSend) -> Iterator[str]:
        """The idempotency record's key, wherever an item or key of the table names it."""
        if isinstance(call, KafkaSend):
            return
        attribute = self.key_attributes.get(call.params.get("TableName", ""))
        for section in ("Item", "Key"):
            value = call.params.get(section, {}).get(attribute, {}).get("S")
            if value:
                yield value


def _replace_strings(value: Any, old: set[str], new: str) -> Any:
    if isinstance(value, str):
        return new if value in old else value
    if isinstance(value, dict):
        return {k: _replace_strings(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_strings(v, old, new) for v in value]
    return value


def part(result: PartResult, quick: bool) -> None:
    """The handler in-process (REST proxy events, fresh order_ids) against a real broker and a
    moto_server table, interleaved order by order with the replay of its I/O."""
    from devstack.functions import load_functions, process_environment
    from devstack.stack import LocalStack

    orders = ORDERS // 10 if quick else ORDERS
    with tempfile.TemporaryDirectory(prefix="orderstream-bench-") as state:
        stack = LocalStack(state_dir=Path(state), outbox=None, log=lambda line: None)
        try:
            _, endpoint, resolver = stack.start_backing()
            spec = load_functions(resolver)["OrderApiFunction"]
            # The function's environment as the local stack gives it (broker, table, endpoint,
            # plaintext Kafka, the template's Powertools settings), in this process.
            env = process_environment(spec, endpoint)
            os.environ.update({k: v for k, v in env.items() if k != "PATH"})
            measure(result, orders, WARMUP)
        finally:
            from orderstream import kafka_client

            kafka_client.discard_producer()
            stack.stop()


def measure(result: PartResult, orders: int, warmup: int) -> None:
    import boto3
    from botocore.client import BaseClient
    from kafka import KafkaProducer

    from functions.order_api import app
    from orderstream import kafka_client, settings

    sample: dict[str, Any] = json.loads((ROOT / "events" / "api-post-order.json").read_text())
    sample_body = json.loads(sample["body"])

    def handler_event() -> dict[str, Any]:
        event = copy.deepcopy(sample)
        event["body"] = json.dumps({**sample_body, "order_id": str(uuid.uuid4())})
        event["requestContext"]["requestId"] = str(uuid.uuid4())
        return event

    total = 1 + warmup + orders  # the first order only gives the bare side a recording
    events = [handler_event() for _ in range(total)]
    table = settings.required(settings.IDEMPOTENCY_TABLE)
    schema = boto3.client("dynamodb").describe_table(TableName=table)["Table"]["KeySchema"]
    hash_key = next(k["AttributeName"] for k in schema if k["KeyType"] == "HASH")
    # The handler's producer configuration: only the code around the send differs.
    bare_producer = KafkaProducer(
        **kafka_client.producer_config(settings.KafkaSettings.from_env())
        | {"client_id": "orderstream-bench-bare"}
    )
    recorder = Recorder()
    replayer = Replayer(bare_producer, {table: hash_key})
    make_api_call = BaseClient._make_api_call  # type: ignore[attr-defined]
    send = KafkaProducer.send

    def watched_api_call(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        recorder.aws(client, operation, params)
        return make_api_call(client, operation, params)

    def watched_send(producer: KafkaProducer, topic: str, **kwargs: Any) -> Any:
        recorder.kafka(topic, kwargs)
        return send(producer, topic, **kwargs)

    handler_s: list[float] = []
    bare_s: list[float] = []
    progress(f"producer: {warmup} warm-up + {orders:,} orders, handler and bare interleaved")
    try:
        with (
            mock.patch.object(BaseClient, "_make_api_call", watched_api_call),
            mock.patch.object(KafkaProducer, "send", watched_send),
        ):
            with recorder.turn("handler", measured=False):
                _invoke(app, events[0])
            for n in range(1, total):
                measured = n > warmup
                # Alternate which side goes first, so neither always finds the other's warm caches.
                for side in ("handler", "bare") if n % 2 else ("bare", "handler"):
                    with recorder.turn(side, measured):
                        started = time.perf_counter()
                        if side == "handler":
                            _invoke(app, events[n])
                        else:
                            replayer.replay(recorder.last, measured)
                        took = time.perf_counter() - started
                    if measured:
                        (handler_s if side == "handler" else bare_s).append(took)
    finally:
        bare_producer.close(timeout=1)
        kafka_client.discard_producer()

    result.rows += percentile_rows(
        "producer: POST /orders p{q}, handler vs bare I/O", handler_s, bare_s
    )

    def per_order(side: str) -> str:
        counted = recorder.calls[side]
        return ", ".join(f"{op} {count / orders:g}" for op, count in sorted(counted.items()))

    overhead = (statistics.median(handler_s) - statistics.median(bare_s)) * 1000
    result.notes.append(
        f"producer: {orders:,} orders (after {warmup} warm-up), in-process handler with REST "
        "proxy events vs a replay of the AWS calls and Kafka sends the handler made for its "
        "previous order, under a fresh idempotency key, to the same broker and table "
        f"(moto_server). Calls per order: handler {per_order('handler')}; bare "
        f"{per_order('bare')}. Median overhead {overhead:.1f} ms; the bare side's medians: "
        + ", ".join(
            f"{step} {statistics.median(s) * 1000:.1f} ms" for step, s in replayer.steps.items()
        )
        + "."
    )


def _invoke(app: Any, event: dict[str, Any]) -> None:
    response = app.lambda_handler(event, LambdaContext())
    if response["statusCode"] != 202:
        raise RuntimeError(f"the handler answered {response}")
