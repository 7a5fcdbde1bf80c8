"""The one parse boundary: a spec file, YAML text or a mapping becomes a ``SweepSpec``, or a
:class:`SpecError` listing every problem by its dotted path (``caviar`` exits 2 with it).

Pydantic's ``ValidationError`` never leaves this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.errors import Problem, SpecError
from orchestrator.spec.problems import problems_from
from orchestrator.spec.sweep import SweepSpec
from orchestrator.spec.yaml_text import YamlShapeError, load_yaml


def load_spec(path: str | os.PathLike[str]) -> SweepSpec:
    """Read a YAML (or JSON) spec file; any problem becomes a :class:`SpecError`."""
    source = str(path)
    file = Path(path)
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise SpecError([Problem("", f"{source} {what}; pass the path of a YAML spec file")])
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError([Problem("", "is not a text file; a spec is YAML text")], source) from None
    except OSError as error:
        raise SpecError([Problem("", f"cannot be read: {error.strerror}")], source) from None
    return parse_spec_text(text, source, spec_dir=file.resolve().parent)


def parse_spec_text(
    text: str, source: str | None = None, spec_dir: Path | None = None
) -> SweepSpec:
    try:
        # Safe: a spec never constructs Python objects; and bounded: load_yaml refuses a spec
        # nested too deep or whose aliases expand past MAX_EXPANDED_VALUES values, before
        # anything (pydantic, JSON for MLflow) walks every expansion.
        data = load_yaml(text)
    except YamlShapeError as error:
        raise SpecError([Problem("", error.problem)], source) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError([Problem("", f"invalid YAML: {where}{problem}")], source) from None
    if data is None:
        raise SpecError([Problem("", "is empty; a spec needs at least name and space")], source)
    if not isinstance(data, dict):
        raise SpecError(
            [Problem("", f"must be a mapping of sections, got a {type(data).__name__}")], source
        )
    return parse_spec(data, source, spec_dir)


def parse_spec(
    data: Mapping[str, Any], source: str | None = None, spec_dir: Path | None = None
) -> SweepSpec:
    """The validated spec; ``spec_dir`` is where a trainable's import path is looked up first."""
    try:
        return SweepSpec.model_validate(data, context={"spec_dir": spec_dir})
    except ValidationError as error:
        raise SpecError(problems_from(error, SweepSpec), source) from None
    except SpecError as error:
        raise SpecError(error.problems, source) from None
