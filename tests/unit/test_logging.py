"""Every function logs through the masking serializer, so no address reaches a log line.

Beyond the privacy rule itself: Powertools Loggers that share a service name share a formatter
(the first one made wins), so one function logging without it would un-mask the others that
run in the same process, as the tests do."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from devstack.template import ROOT

HANDLERS = sorted((ROOT / "functions").glob("*/app.py"))


@pytest.mark.parametrize("handler", HANDLERS, ids=lambda p: p.parent.name)
def test_every_function_logs_through_the_masking_serializer(handler: Path) -> None:
    loggers = [
        node
        for node in ast.walk(ast.parse(handler.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Logger"
    ]
    assert loggers, f"{handler} makes no Powertools Logger"
    for logger in loggers:
        serializers = [k.value for k in logger.keywords if k.arg == "json_serializer"]
        assert [getattr(s, "id", None) for s in serializers] == ["masked_log_line"], handler


def test_there_is_a_handler_per_function() -> None:
    assert {p.parent.name for p in HANDLERS} == {
        "bootstrap_brokers",
        "email_notifier",
        "order_api",
        "s3_archiver",
        "topic_provisioner",
    }
