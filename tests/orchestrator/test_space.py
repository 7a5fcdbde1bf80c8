"""Sampling scales, checked statistically with fixed seeds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from orchestrator.search.space import (
    ChoiceDomain,
    GridDomain,
    RangeDomain,
    SearchSpace,
    from_transformed,
    sample_configs,
    to_transformed,
)

N = 4000


@pytest.mark.parametrize(
    ("scale", "low", "high"),
    [("linear", -3.0, 5.0), ("log", 1e-4, 1.0), ("log1m", 0.9, 0.999)],
)
def test_transformed_samples_are_uniform(scale: str, low: float, high: float) -> None:
    domain = RangeDomain("x", scale, low, high)  # type: ignore[arg-type]
    samples = np.array(domain.sample(np.random.default_rng(1), N))
    assert samples.min() >= low and samples.max() <= high
    a, b = sorted((float(to_transformed(scale, low)), float(to_transformed(scale, high))))  # type: ignore[arg-type]
    t = (to_transformed(scale, samples) - a) / (b - a)  # type: ignore[arg-type]
    assert stats.kstest(t, "uniform").pvalue > 0.01


def test_linear_sampling_of_a_log_range_would_fail_the_same_test() -> None:
    """The KS check has power: uniform-in-x samples are not uniform in log10 x."""
    x = np.random.default_rng(1).uniform(1e-4, 1.0, N)
    t = (np.log10(x) + 4) / 4
    assert stats.kstest(t, "uniform").pvalue < 1e-6


def test_log1m_gives_equal_mass_per_decade_of_one_minus_beta() -> None:
    domain = RangeDomain("momentum", "log1m", 0.9, 0.999)
    beta = np.array(domain.sample(np.random.default_rng(7), N))
    low_decade = np.sum((beta >= 0.9) & (beta < 0.99))
    high_decade = np.sum((beta >= 0.99) & (beta <= 0.999))
    assert low_decade + high_decade == N
    assert stats.binomtest(int(low_decade), N, 0.5).pvalue > 0.01


def test_transforms_round_trip() -> None:
    for scale, x in (("linear", 3.5), ("log", 0.003), ("log1m", 0.995)):
        assert from_transformed(scale, to_transformed(scale, x)) == pytest.approx(x)  # type: ignore[arg-type]


@pytest.mark.parametrize("scale", ["linear", "log"])
def test_integers_cover_the_range_with_each_value_its_own_bin(scale: str) -> None:
    domain = RangeDomain("units", scale, 1, 8, integer=True)  # type: ignore[arg-type]
    values = domain.sample(np.random.default_rng(3), N)
    assert all(isinstance(v, int) for v in values)
    assert set(values) == set(range(1, 9))
    counts = np.bincount(values, minlength=9)[1:]
    edges = np.arange(0.5, 9.5)
    t = to_transformed(scale, edges)  # type: ignore[arg-type]
    expected = np.diff(t) / (t[-1] - t[0]) * N
    assert stats.chisquare(counts, expected).pvalue > 0.01


def test_choice_is_uniform_over_values() -> None:
    values = ChoiceDomain("b", (32, 64, 128)).sample(np.random.default_rng(0), 3000)
    counts = [values.count(v) for v in (32, 64, 128)]
    assert stats.chisquare(counts).pvalue > 0.01


def _space() -> SearchSpace:
    return SearchSpace(
        (
            RangeDomain("learning_rate", "log", 1e-4, 1.0),
            ChoiceDomain("batch_size", (32, 64)),
            GridDomain("layers", (1, 2, 3)),
        ),
        {"optimizer": "sgd"},
    )


def test_same_seed_same_configs_other_seed_other_configs() -> None:
    assert sample_configs(_space(), 5, seed=11) == sample_configs(_space(), 5, seed=11)
    assert sample_configs(_space(), 5, seed=11) != sample_configs(_space(), 5, seed=12)


def test_grid_points_cross_with_samples_and_fixed_values() -> None:
    configs = sample_configs(_space(), 4, seed=0)
    assert len(configs) == 12
    assert [c["layers"] for c in configs] == [1] * 4 + [2] * 4 + [3] * 4
    assert all(c["optimizer"] == "sgd" for c in configs)
    assert len({c["learning_rate"] for c in configs}) == 12


def test_adding_a_parameter_keeps_the_others_draws() -> None:
    base = SearchSpace((RangeDomain("learning_rate", "log", 1e-4, 1.0),))
    more = SearchSpace((RangeDomain("learning_rate", "log", 1e-4, 1.0), ChoiceDomain("b", (1, 2))))
    lr_base = [c["learning_rate"] for c in sample_configs(base, 6, seed=3)]
    lr_more = [c["learning_rate"] for c in sample_configs(more, 6, seed=3)]
    assert lr_base == lr_more
