"""Coarse-to-fine region math: pure functions, every rule and degenerate case."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.search.space import (
    ChoiceDomain,
    GridDomain,
    RangeDomain,
    SearchSpace,
    sample_configs,
    to_transformed,
)
from orchestrator.search.zoom import MIN_RELATIVE_WIDTH, keep_count, next_region, region_as_dict

LR = RangeDomain("learning_rate", "log", 1e-4, 1.0)
MOM = RangeDomain("momentum", "log1m", 0.5, 0.999)
UNITS = RangeDomain("hidden_units", "log", 8, 256, integer=True)
LAYERS = ChoiceDomain("layers", (1, 2, 3))
BN = GridDomain("batch_norm", (True, False))
SPACE = SearchSpace((LR, MOM, UNITS, LAYERS, BN), {"optimizer": "sgd"})


def _domain(space: SearchSpace, name: str):  # noqa: ANN202
    return next(d for d in space.domains if d.name == name)


def _t(domain: RangeDomain) -> tuple[float, float]:
    a, b = to_transformed(domain.scale, domain.low), to_transformed(domain.scale, domain.high)
    return tuple(sorted((float(a), float(b))))  # type: ignore[return-value]


KEPT = [
    {"learning_rate": 0.01, "momentum": 0.9, "hidden_units": 32, "layers": 2, "batch_norm": True},
    {"learning_rate": 0.05, "momentum": 0.95, "hidden_units": 64, "layers": 2, "batch_norm": False},
    {"learning_rate": 0.02, "momentum": 0.99, "hidden_units": 48, "layers": 3, "batch_norm": True},
]


def test_region_shrinks_stays_inside_and_contains_the_kept_trials() -> None:
    step = next_region(SPACE, SPACE, KEPT, margin=0.1)
    for name in ("learning_rate", "momentum", "hidden_units"):
        old, new = _domain(SPACE, name), _domain(step.space, name)
        (a0, b0), (a1, b1) = _t(old), _t(new)
        assert a0 <= a1 < b1 <= b0, name
        assert b1 - a1 < b0 - a0, name
        for config in KEPT:
            assert new.low <= config[name] <= new.high, name


def test_box_is_widened_by_the_margin_in_transformed_coordinates() -> None:
    step = next_region(SPACE, SPACE, KEPT, margin=0.1)
    lr = _domain(step.space, "learning_rate")
    # kept: log10 0.01 = -2 .. log10 0.05; previous width 4 decades -> pad 0.4 decade
    assert math.log10(lr.low) == pytest.approx(-2.4)
    assert math.log10(lr.high) == pytest.approx(math.log10(0.05) + 0.4)
    mom = _domain(step.space, "momentum")
    width = abs(math.log10(0.001) - math.log10(0.5))
    assert math.log10(1 - mom.high) == pytest.approx(math.log10(0.01) - 0.1 * width)
    assert math.log10(1 - mom.low) == pytest.approx(math.log10(0.1) + 0.1 * width)


def test_clipped_to_the_previous_region() -> None:
    edge = [{**KEPT[0], "learning_rate": 0.9}, {**KEPT[1], "learning_rate": 1.0}]
    lr = _domain(next_region(SPACE, SPACE, edge, margin=0.5).space, "learning_rate")
    assert lr.high == pytest.approx(1.0)
    assert lr.low >= 1e-4


def test_integers_stay_integers_rounded_outwards() -> None:
    units = _domain(next_region(SPACE, SPACE, KEPT, margin=0.1).space, "hidden_units")
    assert isinstance(units.low, int) and isinstance(units.high, int)
    assert units.low <= 32 and units.high >= 64
    samples = units.sample(np.random.default_rng(0), 200)
    assert all(isinstance(s, int) and units.low <= s <= units.high for s in samples)


def test_categorical_keeps_values_seen_among_the_best_and_grid_stays() -> None:
    step = next_region(SPACE, SPACE, KEPT, margin=0.1)
    assert _domain(step.space, "layers").values == (2, 3)
    assert _domain(step.space, "batch_norm").values == (True, False)
    assert step.space.fixed == {"optimizer": "sgd"}


def test_one_best_trial_gives_a_box_of_margin_size_around_it() -> None:
    step = next_region(SPACE, SPACE, KEPT[:1], margin=0.1)
    lr = _domain(step.space, "learning_rate")
    assert math.log10(lr.low) == pytest.approx(-2.4)
    assert math.log10(lr.high) == pytest.approx(-1.6)


def test_no_rankable_trial_keeps_the_region_and_says_so() -> None:
    step = next_region(SPACE, SPACE, [], margin=0.1)
    assert step.space == SPACE
    assert "same region" in step.notes[0]


def test_a_region_at_its_resolution_is_not_narrowed() -> None:
    narrow = RangeDomain("learning_rate", "log", 0.0100, 0.0100 * 10 ** (2 * MIN_RELATIVE_WIDTH))
    current = SearchSpace((narrow,))
    original = SearchSpace((LR,))
    step = next_region(current, original, [{"learning_rate": 0.01}], margin=0.0)
    assert step.space.domains[0] == narrow
    assert "resolution" in step.notes[0]
    one_wide = RangeDomain("hidden_units", "linear", 10, 11, integer=True)
    step = next_region(
        SearchSpace((one_wide,)), SearchSpace((UNITS,)), [{"hidden_units": 10}], margin=0.0
    )
    assert step.space.domains[0] == one_wide


def test_repeated_zooming_on_a_known_optimum_converges_towards_it() -> None:
    """Three rounds around lr = 0.03 by ranking on distance: the region tightens around it."""
    space = SearchSpace((LR,))
    current = space
    for round_number in range(3):
        configs = sample_configs(current, 32, seed=round_number)
        configs.sort(key=lambda c: abs(math.log10(c["learning_rate"]) - math.log10(0.03)))
        current = next_region(current, space, configs[:8], margin=0.1).space
        lr = current.domains[0]
        assert lr.low <= 0.03 <= lr.high
    a, b = _t(current.domains[0])
    assert b - a < 1.0  # from 4 decades to under 1


@pytest.mark.parametrize(
    ("keep", "eligible", "expected"),
    [(0.25, 32, 8), (0.25, 3, 1), (5, 3, 3), (5, 20, 5), (0.5, 0, 0)],
)
def test_keep_count(keep: float, eligible: int, expected: int) -> None:
    assert keep_count(keep, eligible) == expected


def test_region_as_dict_is_json_friendly() -> None:
    import json

    described = region_as_dict(SPACE)
    assert json.loads(json.dumps(described))["learning_rate"]["scale"] == "log"
    assert described["layers"] == {"values": [1, 2, 3]}
    assert described["batch_norm"] == {"grid": [True, False]}
