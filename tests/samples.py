"""Access to the events/ samples from tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EVENTS = Path(__file__).resolve().parent.parent / "events"


def load_event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def template_archive_years() -> str:
    """ARCHIVE_YEARS as template.yaml gives it to the archiver (and its range to the table)."""
    from devstack.template import load_template

    years: str = load_template()["Mappings"]["Archive"]["Projection"]["Years"]
    return years
