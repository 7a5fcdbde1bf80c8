"""The MLflow layout is spelled in one module, and docs/design.md lists all of it."""

from __future__ import annotations

from pathlib import Path

from orchestrator.store import layout

DESIGN = Path(__file__).parents[2] / "docs" / "design.md"


def _tag_names() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(layout).items()
        if name.isupper() and isinstance(value, str) and value.startswith(("caviar.", "mlflow."))
    }


def test_every_tag_of_the_layout_is_listed_in_the_design_doc() -> None:
    text = DESIGN.read_text(encoding="utf-8")
    missing = [value for value in _tag_names().values() if f"`{value}`" not in text]
    assert missing == []


def test_no_two_names_share_a_tag() -> None:
    values = list(_tag_names().values())
    assert len(values) == len(set(values))


def test_children_are_found_by_mlflows_parent_tag() -> None:
    assert layout.children_filter("ab12") == "tags.mlflow.parentRunId = 'ab12'"
    assert layout.SWEEPS_FILTER == "tags.`caviar.kind` = 'sweep'"


def test_no_module_but_the_layout_spells_a_caviar_tag() -> None:
    """Every tag of the layout is written and read through its name, never spelled again."""
    root = Path(layout.__file__).parents[1]
    found = []
    for path in root.rglob("*.py"):
        if path.name == "layout.py":
            continue
        text = path.read_text(encoding="utf-8")
        for value in _tag_names().values():
            if f'"{value}"' in text:
                found.append(f"{path.relative_to(root)}: {value}")
    assert found == []
