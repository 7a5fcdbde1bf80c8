"""The spec's ``space:`` entries: a range, a list of values, or a grid, told apart by their keys.

Each parameter turns into a domain of ``orchestrator.search.space``, which samples it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from orchestrator.search.space import ChoiceDomain, GridDomain, RangeDomain, Scalar
from orchestrator.spec.base import StrictModel


class RangeParameter(StrictModel):
    """An interval sampled uniformly on its scale: ``{scale: log, low: 1e-4, high: 1}``."""

    scale: Annotated[
        Literal["linear", "log", "log1m"],
        Field(
            description=(
                "linear: uniform in x. log: uniform in log10(x) (learning rates). "
                "log1m: uniform in log10(1 - x), for averaging betas such as momentum "
                "(0.9..0.999 gives equal mass to ~10-, ~100- and ~1000-step averages)."
            )
        ),
    ] = "linear"
    integer: Annotated[
        bool, Field(description="Round samples to integers (units, layers, batch size).")
    ] = False
    low: Annotated[float, Field(description="Lower bound, included.")]
    high: Annotated[float, Field(description="Upper bound, included; must be > low.")]

    @field_validator("low", "high")
    @classmethod
    def _bound_fits_scale(cls, value: float, info: ValidationInfo) -> float:
        scale = info.data.get("scale", "linear")
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        if scale == "log" and value <= 0:
            raise ValueError(f"must be > 0 on a log scale, got {value:g}")
        if scale == "log1m" and not 0 < value < 1:
            raise ValueError(
                f"must be in (0, 1) on a log1m scale (it samples log10(1 - x)), got {value:g}"
            )
        if info.data.get("integer") and value != int(value):
            raise ValueError(f"must be a whole number when integer: true, got {value:g}")
        if info.field_name == "high" and "low" in info.data and value <= info.data["low"]:
            raise ValueError(f"must be > low, got low={info.data['low']:g}, high={value:g}")
        return value

    @model_validator(mode="after")
    def _integer_needs_a_numeric_scale(self) -> RangeParameter:
        if self.integer and self.scale == "log1m":
            raise ValueError("integer: true cannot be combined with scale: log1m")
        return self

    def to_domain(self, name: str) -> RangeDomain:
        return RangeDomain(name, self.scale, self.low, self.high, self.integer)

    def corner_values(self) -> list[tuple[str, Scalar]]:
        cast = int if self.integer else float
        return [("low", cast(self.low)), ("high", cast(self.high))]


class ChoiceParameter(StrictModel):
    """A categorical parameter, drawn uniformly at random: ``{values: [32, 64, 128]}``."""

    values: Annotated[
        list[Scalar],
        Field(min_length=1, description="The values to choose from, each equally likely."),
    ]

    @field_validator("values")
    @classmethod
    def _distinct(cls, values: list[Scalar]) -> list[Scalar]:
        return _require_distinct(values)

    def to_domain(self, name: str) -> ChoiceDomain:
        return ChoiceDomain(name, tuple(self.values))

    def corner_values(self) -> list[tuple[str, Scalar]]:
        return [(f"values[{i}]", v) for i, v in enumerate(self.values)]


class GridParameter(StrictModel):
    """An exhaustive parameter: every value is tried, crossed with the other grids."""

    grid: Annotated[
        list[Scalar], Field(min_length=1, description="Every value is tried in every sweep.")
    ]

    @field_validator("grid")
    @classmethod
    def _distinct(cls, values: list[Scalar]) -> list[Scalar]:
        return _require_distinct(values)

    def to_domain(self, name: str) -> GridDomain:
        return GridDomain(name, tuple(self.grid))

    def corner_values(self) -> list[tuple[str, Scalar]]:
        return [(f"grid[{i}]", v) for i, v in enumerate(self.grid)]


def _require_distinct(values: list[Scalar]) -> list[Scalar]:
    seen: list[Scalar] = []
    for value in values:
        if any(value == s and type(value) is type(s) for s in seen):
            raise ValueError(f"lists {value!r} twice; each value once")
        seen.append(value)
    return values


def _parameter_kind(value: Any) -> str:
    """Pick the parameter model by the keys present, so errors name the right fields."""
    if isinstance(value, Mapping):
        if "values" in value:
            return "__choice__"
        if "grid" in value:
            return "__grid__"
        return "__range__"
    if isinstance(value, ChoiceParameter):
        return "__choice__"
    if isinstance(value, GridParameter):
        return "__grid__"
    return "__range__"


Parameter = Annotated[
    Annotated[RangeParameter, Tag("__range__")]
    | Annotated[ChoiceParameter, Tag("__choice__")]
    | Annotated[GridParameter, Tag("__grid__")],
    Discriminator(_parameter_kind),
]
