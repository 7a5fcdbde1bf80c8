"""caviar's search space in Optuna's terms: the coordinates ``tpe.py`` asks and tells in.

A ``log`` range is an Optuna float on log10 x, a ``log1m`` range a float on log10(1 - x) (Optuna
has no such scale), a ``linear`` range a float on x; integers are Optuna integers (log-spaced
for a ``log`` integer); ``values`` and ``grid`` parameters are categoricals. Converting a caviar
value to its parameter and back is exact for integers and choices and clipped to the range at
the ends for floats (round-off of the transform).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.search.space import (
    ChoiceDomain,
    GridDomain,
    RangeDomain,
    Scalar,
    SearchSpace,
    from_transformed,
    to_transformed,
)


class TpeCoordinates:
    """One search space's values as Optuna parameters, and back."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.distributions = optuna_distributions(space)

    def misfit(self, config: Mapping[str, Any]) -> str | None:
        """Why ``config`` is not a configuration of this space (None when it is)."""
        for domain in self.space.domains:
            if domain.name not in config:
                return f"it has no value for {domain.name!r}"
            value = config[domain.name]
            if isinstance(domain, RangeDomain):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    return f"{domain.name}={value!r} is not a number"
                if not domain.low <= float(value) <= domain.high:
                    return f"{domain.name}={value!r} is outside {domain.describe()}"
                if domain.integer and float(value) != int(value):
                    return f"{domain.name}={value!r} is not a whole number"
            elif _choice_index(domain.values, value) is None:
                return f"{domain.name}={value!r} is not one of {list(domain.values)}"
        for name, value in self.space.fixed.items():
            if name in config and repr(config[name]) != repr(value):
                return f"{name}={config[name]!r}, but the spec fixes it to {value!r}"
        return None

    def params(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A configuration's values as Optuna parameters (those of this space it has)."""
        return {
            d.name: self.param(d.name, config[d.name])
            for d in self.space.domains
            if d.name in config
        }

    def param(self, name: str, value: Any) -> Any:
        """A caviar value as its Optuna parameter (log10 x, an int, a choice)."""
        domain = self.domain(name)
        if isinstance(domain, RangeDomain):
            if domain.integer:
                return int(value)
            low, high = domain.bounds_transformed()
            return min(high, max(low, float(to_transformed(domain.scale, float(value)))))
        index = _choice_index(domain.values, value)
        if index is None:
            raise ValueError(f"{name}={value!r} is not one of {list(domain.values)}")
        return domain.values[index]

    def config(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A whole configuration from Optuna parameters, with the space's fixed values."""
        config: dict[str, Any] = dict(self.space.fixed)
        for domain in self.space.domains:
            config[domain.name] = self.value(domain.name, params[domain.name])
        return config

    def value(self, name: str, param: Any) -> Any:
        """An Optuna parameter back in caviar's terms (x from log10 x, an int, a choice)."""
        domain = self.domain(name)
        if isinstance(domain, RangeDomain) and not domain.integer:
            x = float(from_transformed(domain.scale, float(param)))
            return min(domain.high, max(domain.low, x))  # round-off at the ends
        if isinstance(domain, RangeDomain):
            return int(param)
        return param

    def domain(self, name: str) -> RangeDomain | ChoiceDomain | GridDomain:
        for domain in self.space.domains:
            if domain.name == name:
                return domain
        raise KeyError(f"{name!r} is not a parameter of the search space")


def optuna_distributions(space: SearchSpace) -> dict[str, Any]:
    """Each parameter as an Optuna distribution in caviar's coordinate (this module's docstring)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for domain in space.domains:
        if isinstance(domain, RangeDomain) and domain.integer:
            out[domain.name] = IntDistribution(
                int(domain.low), int(domain.high), log=domain.scale == "log"
            )
        elif isinstance(domain, RangeDomain):
            low, high = domain.bounds_transformed()
            out[domain.name] = FloatDistribution(low, high)
        else:
            out[domain.name] = CategoricalDistribution(list(domain.values))
    return out


def single_valued(domain: RangeDomain | ChoiceDomain) -> bool:
    """A parameter with one possible value (nothing to search)."""
    if isinstance(domain, RangeDomain):
        return domain.low == domain.high
    return len(domain.values) <= 1


def _choice_index(values: Sequence[Scalar], value: Any) -> int | None:
    """The position of ``value`` among ``values``, by its printed form (1 is not True)."""
    for index, candidate in enumerate(values):
        if repr(candidate) == repr(value):
            return index
    return None
