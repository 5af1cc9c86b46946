"""The test suite's own layout rules: shared helpers live in helper modules, never in a test
module or conftest.py (importing those runs their fixtures and tests twice), and every test
module says with a marker which outside parts it needs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_test_module_imports_a_test_module_or_conftest():
    offenders = {
        f"{path.relative_to(TESTS)} imports {name}"
        for path in TESTS.rglob("*.py")
        for name in imported_modules(path)
        if name.rsplit(".", 1)[-1].startswith("test_") or name.rsplit(".", 1)[-1] == "conftest"
    }
    assert not offenders, sorted(offenders)


def test_every_unit_test_module_is_marked_unit():
    unmarked = [
        p.name
        for p in (TESTS / "unit").glob("test_*.py")
        if "pytest.mark.unit" not in p.read_text()
    ]
    assert not unmarked
