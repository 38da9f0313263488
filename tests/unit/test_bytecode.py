"""scripts/bytecode.py: the bytecode make build ships is checked against the source's hash."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script() -> Any:
    """scripts/ is not a package: the script is loaded from its file, as make runs it."""
    spec = importlib.util.spec_from_file_location("bytecode", ROOT / "scripts" / "bytecode.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bytecode = load_script()


def build_tree(root: Path, runtime: str) -> Path:
    (root / "Fn").mkdir(parents=True)
    (root / "Fn" / "app.py").write_text("VALUE = 42\n")
    (root / "Layer" / "python" / "pkg").mkdir(parents=True)
    (root / "Layer" / "python" / "pkg" / "__init__.py").write_text("")
    (root / "Layer" / "python" / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    (root / "template.yaml").write_text(f"Globals:\n  Function:\n    Runtime: {runtime}\n")
    return root


def this_runtime() -> str:
    return f"python{sys.version_info[0]}.{sys.version_info[1]}"


def test_every_module_gets_checked_hash_bytecode_of_its_source(tmp_path: Path) -> None:
    build = build_tree(tmp_path, this_runtime())
    assert bytecode.main([str(build)]) == 0
    sources = sorted(build.rglob("*.py"))
    assert len(sources) == 3
    for source in sources:
        cached = Path(importlib.util.cache_from_source(str(source)))
        data = cached.read_bytes()
        assert data[:4] == importlib.util.MAGIC_NUMBER
        flags = int.from_bytes(data[4:8], "little")
        assert flags == 0b11  # hash-based (bit 0), checked against the source (bit 1)
        assert data[8:16] == importlib.util.source_hash(source.read_bytes())


def test_bytecode_for_another_runtime_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build = build_tree(tmp_path, "python3.9")
    assert bytecode.main([str(build)]) == 1
    assert "needs that interpreter" in capsys.readouterr().err
    assert not list(build.rglob("*.pyc"))


def test_the_template_names_the_runtime_the_venv_runs() -> None:
    assert bytecode.runtime_version(ROOT / "template.yaml") == sys.version_info[:2]


def test_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    assert bytecode.main([str(tmp_path / "nowhere")]) == 2


def test_a_library_file_that_does_not_compile_is_left_as_pip_leaves_it(tmp_path: Path) -> None:
    build = build_tree(tmp_path, this_runtime())
    broken = build / "Layer" / "python" / "pkg" / "py2_example.py"
    broken.write_text("print 'hello'\n")
    (build / "Layer").rename(build / "SharedLayer")  # as sam build names the layer's folder
    layer = build / "SharedLayer" / "python"
    assert bytecode.main([str(build)]) == 0
    assert Path(importlib.util.cache_from_source(str(layer / "pkg" / "mod.py"))).exists()
    assert not Path(
        importlib.util.cache_from_source(str(layer / "pkg" / "py2_example.py"))
    ).exists()


def test_our_own_code_that_does_not_compile_fails_the_build(tmp_path: Path) -> None:
    build = build_tree(tmp_path, this_runtime())
    (build / "Fn" / "app.py").write_text("def broken(:\n")
    assert bytecode.main([str(build)]) == 1


def test_two_runtimes_in_one_template_are_refused(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text("A:\n    Runtime: python3.13\nB:\n    Runtime: python3.12\n")
    with pytest.raises(ValueError, match="not one python Runtime"):
        bytecode.runtime_version(template)
