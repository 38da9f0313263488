"""Checked-in schemas, generated from the code that defines them.

`python -m devstack schemas` rewrites them; the tests fail when a file and its source drift.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orderstream import events

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS: dict[Path, Callable[[], dict[str, Any]]] = {
    ROOT / "schemas" / f"{events.EVENT_TYPE}.v{events.SCHEMA_VERSION}.json": events.json_schema,
}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def stale() -> list[Path]:
    """Files whose content differs from what their source generates now."""
    return [
        path
        for path, make in SCHEMAS.items()
        if not path.exists() or path.read_text() != render(make())
    ]


def write() -> list[Path]:
    changed = stale()
    for path in changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(SCHEMAS[path]()))
    return changed
