"""The configuration a panda session starts with: one model of the spec's trainable.

Values come from, in rising precedence: the trainable's defaults, the middle of each ``space``
parameter, ``fixed``, ``--set`` and ``--epochs``. The middle of a range is taken on the range's
own scale (the geometric mean on ``log``; on ``log1m`` the beta whose ``1 - beta`` is the
geometric mean), so 1e-4..1 starts at 1e-2, not at 0.5; a list of values starts at its middle
element (the lower of the two middle ones).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from orchestrator.panda.changes import PandaError, check_known, validated
from orchestrator.search.space import from_transformed, to_transformed
from orchestrator.spec import ChoiceParameter, GridParameter, RangeParameter, SweepSpec


def middle(parameter: RangeParameter | ChoiceParameter | GridParameter) -> Any:
    """The middle of a space parameter, on its scale."""
    if isinstance(parameter, RangeParameter):
        a = float(to_transformed(parameter.scale, parameter.low))
        b = float(to_transformed(parameter.scale, parameter.high))
        value = float(from_transformed(parameter.scale, (a + b) / 2))
        value = float(np.clip(value, parameter.low, parameter.high))
        return int(round(value)) if parameter.integer else value
    values = parameter.values if isinstance(parameter, ChoiceParameter) else parameter.grid
    return values[(len(values) - 1) // 2]


def initial_config(
    spec: SweepSpec, sets: Mapping[str, Any], epochs: int | None = None
) -> dict[str, Any]:
    """The validated starting configuration; an unknown name or bad value is a PandaError."""
    from trainables import get_trainable

    definition = get_trainable(spec.trainable)
    check_known(sets, definition.config_model.model_fields, spec.trainable)
    config: dict[str, Any] = {name: middle(p) for name, p in spec.space.items()}
    config.update(spec.fixed)
    config["epochs"] = spec.max_epochs
    config.update(sets)
    if epochs is not None:
        if epochs < 1:
            raise PandaError(f"--epochs must be >= 1, got {epochs}")
        config["epochs"] = epochs
    validated(definition.config_model, config, {})
    return config
