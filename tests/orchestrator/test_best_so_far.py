"""The search's best so far against epochs spent (pure: search/best_so_far.py)."""

from __future__ import annotations

import math

from orchestrator.search.best_so_far import BestSoFar


def test_a_loss_improves_downwards_and_only_full_finite_trials_count() -> None:
    best = BestSoFar("min", budget=3)
    best.trained(3)
    assert best.ended(3, 0.9) == 0.9
    best.trained(1)
    assert best.ended(1, 0.1) is None  # stopped early: never the best
    best.trained(3)
    assert best.ended(3, 0.05, diverged=True) is None  # diverged: never the best
    best.trained(3)
    assert best.ended(3, math.nan) is None and best.ended(3, None) is None
    assert best.ended(3, 0.95) is None  # worse
    best.trained(3)
    assert best.ended(3, 0.5) == 0.5
    assert best.points == [(3, 0.9), (13, 0.5)] and best.spent == 13
