"""Importance finds the parameter that drives the objective, on its transformed scale."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.search.importance import ScoredTrial, parameter_importance, value_at_first_rung
from orchestrator.search.space import ChoiceDomain, RangeDomain, SearchSpace, sample_configs

SPACE = SearchSpace(
    (
        RangeDomain("learning_rate", "log", 1e-4, 1.0),
        RangeDomain("momentum", "log1m", 0.5, 0.999),
        ChoiceDomain("batch_size", (32, 64, 128)),
    )
)


def _objective(config: dict) -> float:
    # Peaks at lr = 0.03 in log space; momentum and batch size only add noise.
    return 1.0 - (math.log10(config["learning_rate"]) - math.log10(0.03)) ** 2 / 16


def test_the_driving_parameter_ranks_first_and_shares_sum_to_one() -> None:
    rng = np.random.default_rng(0)
    configs = sample_configs(SPACE, 60, seed=1)
    trials = [ScoredTrial(c, _objective(c) + rng.normal(0, 0.01)) for c in configs]
    importance = parameter_importance(trials, SPACE.domains, "max", seed=0)
    assert list(importance)[0] == "learning_rate"
    assert importance["learning_rate"] > 0.8
    assert sum(importance.values()) == np.float64(1.0) or abs(sum(importance.values()) - 1) < 1e-9


def test_a_categorical_can_be_the_important_one() -> None:
    configs = sample_configs(SPACE, 60, seed=2)
    trials = [ScoredTrial(c, {32: 0.9, 64: 0.5, 128: 0.1}[c["batch_size"]]) for c in configs]
    assert list(parameter_importance(trials, SPACE.domains, "max"))[0] == "batch_size"


def test_diverged_trials_count_at_the_worst_value() -> None:
    configs = sample_configs(SPACE, 40, seed=3)
    trials = [ScoredTrial(c, None if c["learning_rate"] > 0.1 else 0.9) for c in configs]
    assert list(parameter_importance(trials, SPACE.domains, "max"))[0] == "learning_rate"


def test_too_few_or_constant_trials_give_no_ranking() -> None:
    configs = sample_configs(SPACE, 3, seed=0)
    assert parameter_importance([ScoredTrial(c, 0.5) for c in configs], SPACE.domains, "max") == {}
    configs = sample_configs(SPACE, 20, seed=0)
    assert parameter_importance([ScoredTrial(c, 0.5) for c in configs], SPACE.domains, "max") == {}


def test_value_at_first_rung() -> None:
    history = [{"epoch": e, "val_accuracy": 0.1 * e} for e in range(1, 6)]
    assert value_at_first_rung(history, "val_accuracy", 2) == 0.2
    assert value_at_first_rung(history[:1], "val_accuracy", 2) == 0.1
    assert value_at_first_rung([{"epoch": 1, "diverged": True}], "val_accuracy", 2) is None


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("rows,columns", [(12, 1), (64, 5), (97, 3)])
def test_batched_permutation_importance_is_scikit_learns_bit_for_bit(
    seed: int, rows: int, columns: int
) -> None:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    from orchestrator.search.importance import permutation_importance_means

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, columns))
    x[:, 0] = np.round(x[:, 0])  # ties, as a categorical's indices give
    y = 2 * x[:, 0] + np.sin(x[:, -1]) + rng.normal(scale=0.1, size=rows)
    forest = RandomForestRegressor(n_estimators=50, min_samples_leaf=2, random_state=seed)
    forest.fit(x, y)
    theirs = permutation_importance(forest, x, y, n_repeats=10, random_state=seed)
    ours = permutation_importance_means(forest, x, y, 10, seed)
    assert np.array_equal(ours, theirs.importances_mean)
