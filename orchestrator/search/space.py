"""Parameter scales and sampling: the seeds' "sampling at random != sampling uniformly".

A range is sampled uniformly in a *transformed* coordinate chosen so that equal lengths mean
equal importance:

- ``linear``: t = x (layers, units over a narrow range);
- ``log``:    t = log10 x (a learning rate in 1e-4..1 gets equal mass per decade);
- ``log1m``:  t = log10(1 - x) (an averaging beta: 1/(1 - beta) is the number of steps
  averaged, so 0.9..0.999 gives equal mass to ~10-, ~100- and ~1000-step averages).

The same coordinates are what coarse-to-fine zooming narrows, so a region shrinks the same way
on every scale. Everything here is pure numpy: no Ray, no pydantic, testable on its own.

Why not Ray Tune's domains: Ray has no ``log1m``, its samplers draw from one global random
state (a sweep is reproducible only if nothing else touches it), and a zooming search must
change the region between rounds. caviar's searcher draws from these domains with its own
seeded generator and hands Ray finished configurations.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Scale = Literal["linear", "log", "log1m"]
SCALES: tuple[Scale, ...] = ("linear", "log", "log1m")
Scalar = bool | int | float | str


def to_transformed(scale: Scale, x: float | np.ndarray) -> Any:
    """Map a value to the coordinate in which the scale is uniform."""
    if scale == "linear":
        return x
    if scale == "log":
        return np.log10(x)
    if scale == "log1m":
        return np.log10(1.0 - np.asarray(x))
    raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")


def from_transformed(scale: Scale, t: float | np.ndarray) -> Any:
    """Inverse of :func:`to_transformed`."""
    if scale == "linear":
        return t
    if scale == "log":
        return np.power(10.0, t)
    if scale == "log1m":
        return 1.0 - np.power(10.0, t)
    raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")


@dataclass(frozen=True)
class RangeDomain:
    """A continuous (or integer) interval sampled uniformly in its scale's coordinate."""

    name: str
    scale: Scale
    low: float
    high: float
    integer: bool = False

    def bounds_transformed(self) -> tuple[float, float]:
        """The interval in transformed coordinates, ordered low < high.

        For integers the interval is widened by half a unit on each side before the transform,
        so that rounding gives each integer the mass of its own bin: without it the two end
        values would get half the mass of the others.
        """
        low, high = (self.low - 0.5, self.high + 0.5) if self.integer else (self.low, self.high)
        a = float(to_transformed(self.scale, low))
        b = float(to_transformed(self.scale, high))
        return (a, b) if a <= b else (b, a)

    def sample(self, rng: np.random.Generator, size: int) -> list[float] | list[int]:
        a, b = self.bounds_transformed()
        values = from_transformed(self.scale, rng.uniform(a, b, size=size))
        if self.integer:
            rounded = np.clip(np.rint(values), self.low, self.high).astype(int)
            return [int(v) for v in rounded]
        clipped = np.clip(values, self.low, self.high)  # float round-off at the ends
        return [float(v) for v in clipped]

    def describe(self) -> str:
        kind = "int" if self.integer else ""
        return f"{self.scale}{kind}[{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class ChoiceDomain:
    """A categorical parameter: each trial draws one value uniformly at random."""

    name: str
    values: tuple[Scalar, ...]

    def sample(self, rng: np.random.Generator, size: int) -> list[Scalar]:
        indices = rng.integers(0, len(self.values), size=size)
        return [self.values[int(i)] for i in indices]

    def describe(self) -> str:
        return "choice" + _format_values(self.values)


@dataclass(frozen=True)
class GridDomain:
    """An exhaustive parameter: every value is tried, crossed with the other grid parameters."""

    name: str
    values: tuple[Scalar, ...]

    def describe(self) -> str:
        return "grid" + _format_values(self.values)


Domain = RangeDomain | ChoiceDomain | GridDomain


def _format_values(values: Sequence[Scalar]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


@dataclass(frozen=True)
class SearchSpace:
    """The parameters a sweep varies, plus the constants every trial receives."""

    domains: tuple[Domain, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sampled(self) -> tuple[RangeDomain | ChoiceDomain, ...]:
        return tuple(d for d in self.domains if not isinstance(d, GridDomain))

    @property
    def grids(self) -> tuple[GridDomain, ...]:
        return tuple(d for d in self.domains if isinstance(d, GridDomain))

    def grid_size(self) -> int:
        return math.prod(len(g.values) for g in self.grids)

    def grid_points(self) -> list[dict[str, Scalar]]:
        """Every combination of the grid parameters, in a stable order (first varies slowest)."""
        names = [g.name for g in self.grids]
        combos = itertools.product(*(g.values for g in self.grids))
        return [dict(zip(names, combo, strict=True)) for combo in combos]


def sample_configs(space: SearchSpace, num_samples: int, seed: int) -> list[dict[str, Any]]:
    """The trial configurations of a random search: ``num_samples`` draws per grid point.

    Deterministic in ``seed``: the list depends on nothing else, so a sweep can be repeated and
    a resumed sweep hands out the same configurations. Each domain draws from its own child
    generator, so adding a parameter to a spec does not reshuffle the values of the others.
    """
    points = space.grid_points()
    total = len(points) * num_samples
    columns: dict[str, list[Any]] = {}
    for domain in space.sampled:
        child = np.random.default_rng(_child_seed(seed, domain.name))
        columns[domain.name] = list(domain.sample(child, total))
    configs: list[dict[str, Any]] = []
    for index in range(total):
        config: dict[str, Any] = dict(space.fixed)
        config.update(points[index // num_samples] if points else {})
        for name, column in columns.items():
            config[name] = column[index]
        configs.append(config)
    return configs


def _child_seed(seed: int, name: str) -> np.random.SeedSequence:
    """A seed derived from the sweep seed and the parameter's name: stable across runs."""
    name_entropy = [int(b) for b in name.encode("utf-8")]
    return np.random.SeedSequence([seed, *name_entropy])
