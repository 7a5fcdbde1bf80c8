"""The Python version pyproject.toml claims is one caviar runs on.

``requires-python`` is what pip checks before installing; a floor below what the code needs
installs fine and then fails at import (``enum.StrEnum`` is 3.11+). The code's imports of
standard-library names newer than the floor are found by reading the sources (no interpreter
of that version needed), and ruff lints for the same floor.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Standard-library names that appeared after 3.9, with the version that added them.
NEWER: dict[str, tuple[int, int]] = {
    "enum.StrEnum": (3, 11),
    "enum.verify": (3, 11),
    "tomllib": (3, 11),
    "typing.Self": (3, 11),
    "typing.LiteralString": (3, 11),
    "typing.Never": (3, 11),
    "typing.assert_never": (3, 11),
    "typing.reveal_type": (3, 11),
    "typing.NotRequired": (3, 11),
    "typing.Required": (3, 11),
    "asyncio.TaskGroup": (3, 11),
    "asyncio.timeout": (3, 11),
    "datetime.UTC": (3, 11),
    "typing.override": (3, 12),
    "itertools.batched": (3, 12),
}


def _floor() -> tuple[int, int]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    found = re.fullmatch(r">=\s*(\d+)\.(\d+)", project["project"]["requires-python"].strip())
    assert found, project["project"]["requires-python"]
    return int(found[1]), int(found[2])


def _imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_requires_python_covers_what_the_code_imports() -> None:
    floor = _floor()
    too_new = {
        f"{path.relative_to(ROOT)}: {name} needs {'.'.join(map(str, NEWER[name]))}"
        for package in ("orchestrator", "trainables")
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in _imported_names(path)
        if NEWER.get(name, (0, 0)) > floor
    }
    assert not too_new, f"requires-python >={floor[0]}.{floor[1]} but {sorted(too_new)}"


def test_ruff_lints_for_the_same_floor() -> None:
    major, minor = _floor()
    ruff = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["ruff"]
    assert ruff["target-version"] == f"py{major}{minor}"
