"""The checks that span a spec's sections, and those against the trainable the spec names.

Each problem carries the dotted path to fix. They run inside ``SweepSpec``'s validation, so
``caviar validate`` reports them with pydantic's own problems, in one list.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from orchestrator.errors import Problem
from orchestrator.spec.parameters import RangeParameter
from orchestrator.spec.problems import pydantic_message
from orchestrator.spec.scheduler import AshaScheduler

if TYPE_CHECKING:
    from orchestrator.spec.sweep import SweepSpec


def cross_section_problems(spec: SweepSpec, spec_dir: Path | None = None) -> Iterable[Problem]:
    """Checks that need more than one section; each problem carries the path to fix.

    A trainable named by import path is imported here, the spec's folder first."""
    from trainables import UnknownTrainableError, get_trainable

    try:
        definition = get_trainable(spec.trainable, [spec_dir] if spec_dir else [])
    except UnknownTrainableError as error:
        yield Problem("trainable", str(error.args[0]) if error.args else str(error))
        return

    known = set(definition.parameter_names())
    for section, names in (("space", spec.space), ("fixed", spec.fixed)):
        for name in names:
            if name not in known:
                yield Problem(
                    f"{section}.{name}",
                    f"{spec.trainable} has no parameter {name!r}; "
                    f"its parameters are {', '.join(sorted(known))}",
                )
    for name in spec.space:
        if name in spec.fixed:
            yield Problem(
                f"fixed.{name}", "is also in space; a parameter is sampled or fixed, not both"
            )

    if "epochs" in spec.space:
        yield Problem(
            "space.epochs",
            "the epoch budget is the scheduler's to spend; set scheduler.max_epochs instead",
        )
    fixed_epochs = spec.fixed.get("epochs")
    if (
        spec.scheduler.max_epochs is not None
        and fixed_epochs is not None
        and fixed_epochs != spec.scheduler.max_epochs
    ):
        yield Problem(
            "scheduler.max_epochs",
            f"is {spec.scheduler.max_epochs} but fixed.epochs is {fixed_epochs}; set only one",
        )
    if isinstance(spec.scheduler, AshaScheduler) and spec.scheduler.grace_period > spec.max_epochs:
        yield Problem(
            "scheduler.grace_period",
            f"must be <= max_epochs ({spec.max_epochs}), got {spec.scheduler.grace_period}",
        )

    if spec.objective.metric not in definition.metrics:
        yield Problem(
            "objective.metric",
            f"{spec.trainable} does not report {spec.objective.metric!r}; "
            f"choose one of {', '.join(definition.metrics)}",
        )

    pack_size = spec.resources.pack_size
    if isinstance(pack_size, int) and pack_size > 1 and definition.packing is None:
        yield Problem(
            "resources.pack_size",
            f"{spec.trainable} cannot be packed (it defines no fused training); "
            "use pack_size: 1 or auto",
        )

    if spec.search.strategy == "grid":
        for name, parameter in spec.space.items():
            if isinstance(parameter, RangeParameter):
                yield Problem(
                    f"space.{name}",
                    "a range cannot be enumerated by strategy: grid; "
                    "use grid: [...] or values: [...], or strategy: random",
                )

    yield from _trainable_config_problems(spec, definition.config_model, known)


def _trainable_config_problems(
    spec: SweepSpec, config_model: type[BaseModel], known: set[str]
) -> Iterable[Problem]:
    """Validate fixed values and every range end / listed value against the trainable's config."""
    fixed = {k: v for k, v in spec.fixed.items() if k in known}
    base = {**fixed, "epochs": spec.max_epochs}
    base_errors = _config_errors(config_model, base)
    for loc, message in base_errors:
        yield Problem(f"fixed.{loc}" if loc else "fixed", message)
    if base_errors:
        return
    for name, parameter in spec.space.items():
        if name not in known or name in spec.fixed:
            continue
        field = config_model.model_fields.get(name)
        if isinstance(parameter, RangeParameter) and field is not None:
            if field.annotation is int and not parameter.integer:
                yield Problem(f"space.{name}", f"{name} is a whole number; add integer: true")
                continue
        for where, value in parameter.corner_values():
            for _, message in _config_errors(config_model, {**base, name: value}):
                yield Problem(f"space.{name}.{where}", message)


def _config_errors(config_model: type[BaseModel], config: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        config_model.model_validate(config)
    except ValidationError as error:
        return [(".".join(str(p) for p in e["loc"]), pydantic_message(e)) for e in error.errors()]
    return []
