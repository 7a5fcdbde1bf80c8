"""Which hyperparameters mattered: the seeds' "tree of importance", measured.

Permutation importance over a random forest fitted to (parameters -> objective), with each
parameter in its transformed coordinate (log10 for a learning rate, log10(1 - beta) for a
momentum) and categoricals as the index of their value. The statistics are scikit-learn's.

The objective compared is each trial's value at the first ASHA rung: every trial that did not
crash earlier reached it, so all trials are measured after the same number of epochs (a
trial's last value would mix 2-epoch and 30-epoch measurements). A trial that diverged counts
below the worst value seen: "this region blows up" is information, not missing data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from orchestrator.search.space import Domain, RangeDomain, to_transformed

MIN_TRIALS = 6
N_REPEATS = 10


@dataclass(frozen=True)
class ScoredTrial:
    """One trial for importance: its configuration and objective (None: diverged/failed)."""

    config: Mapping[str, Any]
    value: float | None


def parameter_importance(
    trials: Sequence[ScoredTrial],
    domains: Sequence[Domain],
    mode: Literal["max", "min"],
    seed: int = 0,
) -> dict[str, float]:
    """Each varied parameter's share of the explained variation (sums to 1; {} if unknowable)."""
    values = [t.value for t in trials if t.value is not None]
    if len(trials) < MIN_TRIALS or not values:
        return {}
    spread = float(np.ptp(values))
    penalty = spread if spread > 0 else 0.1 * max(abs(values[0]), 1.0)
    worst = min(values) - penalty if mode == "max" else max(values) + penalty
    y = np.array([t.value if t.value is not None else worst for t in trials], dtype=float)
    if float(np.ptp(y)) == 0.0:
        return {}
    columns = {d.name: _encode(d, [t.config.get(d.name) for t in trials]) for d in domains}
    varied = {name: col for name, col in columns.items() if np.ptp(col) > 0}
    if not varied:
        return {}
    from sklearn.ensemble import RandomForestRegressor

    x = np.column_stack(list(varied.values()))
    forest = RandomForestRegressor(n_estimators=200, min_samples_leaf=2, random_state=seed)
    forest.fit(x, y)
    raw = np.clip(permutation_importance_means(forest, x, y, N_REPEATS, seed), 0.0, None)
    total = float(raw.sum())
    shares = raw / total if total > 0 else np.zeros_like(raw)
    importance = {name: float(s) for name, s in zip(varied, shares, strict=True)}
    importance.update({name: 0.0 for name in columns if name not in varied})
    return dict(sorted(importance.items(), key=lambda kv: -kv[1]))


def _encode(domain: Domain, values: Sequence[Any]) -> np.ndarray:
    if isinstance(domain, RangeDomain):
        return np.array([float(to_transformed(domain.scale, float(v))) for v in values])
    index = {repr(v): i for i, v in enumerate(domain.values)}
    return np.array([float(index.get(repr(v), -1)) for v in values])


def value_at_first_rung(
    history: Sequence[Mapping[str, Any]], metric: str, first_rung: int
) -> float | None:
    """The objective after ``first_rung`` epochs (or the last one before, if it ended sooner)."""
    value = None
    for entry in history:
        if entry.get("diverged"):
            return None
        if int(entry.get("epoch", 0)) > first_rung:
            break
        raw = entry.get(metric)
        if raw is not None and np.isfinite(float(raw)):
            value = float(raw)
    return value


def permutation_importance_means(
    forest: Any, x: np.ndarray, y: np.ndarray, n_repeats: int, seed: int
) -> np.ndarray:
    """scikit-learn's ``permutation_importance(forest, x, y, n_repeats=, random_state=seed)
    .importances_mean``, bit for bit, with one ``predict`` over every permuted copy of ``x``.

    scikit-learn predicts once per feature and repeat (50 calls for 5 parameters); each call
    walks all 200 trees in Python, which made the importance a visible part of every sweep's report
    while the rows themselves are a few dozen trials. A forest predicts each row on its own,
    so stacking the copies changes no prediction; the permutations are drawn exactly as
    scikit-learn draws them (one seed for all columns, each column's permutations applied
    cumulatively) and each copy is scored with the same ``r2_score`` (tests compare the two).
    """
    from sklearn.metrics import r2_score

    rows = x.shape[0]
    column_seed = np.random.RandomState(seed).randint(np.iinfo(np.int32).max + 1)
    copies = []
    for column in range(x.shape[1]):
        rng = np.random.RandomState(column_seed)
        permuted = x.copy()
        order = np.arange(rows)
        for _ in range(n_repeats):
            rng.shuffle(order)
            permuted[:, column] = permuted[order, column]
            copies.append(permuted.copy())
    baseline = r2_score(y, forest.predict(x))
    predicted = forest.predict(np.vstack(copies)).reshape(len(copies), rows)
    scores = np.array([r2_score(y, p) for p in predicted]).reshape(x.shape[1], n_repeats)
    return np.mean(baseline - scores, axis=1)
