"""The README's map of the tree stays true: every file it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYER = "layers/shared/"
NAMED = re.compile(r"`((?:orderstream|functions|devstack|operate|bench|docs|tests)/[\w/.<>-]+)`")


def named_paths(text: str) -> set[str]:
    return {
        (LAYER + path if path.startswith("orderstream/") else path)
        for path in NAMED.findall(text)
        # Placeholders and runtime state (devstack/.state/, made by `make run`) are not files.
        if "<" not in path and "/." not in path
    }


def test_every_path_the_readme_names_exists() -> None:
    named = named_paths((ROOT / "README.md").read_text())
    assert len(named) > 15  # the layout and the order's path, not an empty match
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert missing == []


def test_every_docstring_pointer_to_the_design_notes_names_a_section() -> None:
    sections = set(re.findall(r"^## (.+)$", (ROOT / "docs" / "design.md").read_text(), re.M))
    pointers = {
        (path, section)
        for folder in ("layers", "functions", "devstack", "operate", "bench")
        for path in (ROOT / folder).rglob("*.py")
        for section in re.findall(r'docs/design\.md,\s+"([^"]+)"', path.read_text())
    }
    assert len(pointers) >= 8
    assert sorted((str(p), s) for p, s in pointers if s not in sections) == []


def test_no_two_test_files_share_a_name() -> None:
    """The test folders are not packages: pytest imports each file by its bare name, so a second
    test_x.py in another folder stops the whole run at collection."""
    names = [path.name for path in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
