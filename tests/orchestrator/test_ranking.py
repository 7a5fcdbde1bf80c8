"""ASHA-aware ranking: deeper rungs first, then the objective; diverged and failed never win."""

from __future__ import annotations

import math

import pytest
from ray.tune.schedulers import ASHAScheduler

from orchestrator.search.ranking import asha_rung_epochs, ranked, rung_milestones, rung_reached
from orchestrator.trials import Trial, TrialState, classify_finished


def _record(index: int, epochs: int, acc: float, outcome: str = "completed") -> Trial:
    history = [{"epoch": e, "val_accuracy": acc} for e in range(1, epochs + 1)]
    return Trial(index, {}, trial_id=f"t{index}", state=TrialState(outcome), history=history)


def test_milestones_follow_the_reduction_factor_and_end_at_the_budget() -> None:
    assert rung_milestones(2, 3, 30) == [2, 6, 18, 30]
    assert rung_milestones(1, 2, 8) == [1, 2, 4, 8]
    assert rung_milestones(5, 3, 5) == [5]


def test_milestones_are_where_asha_records_a_result_with_a_fractional_factor() -> None:
    # Rungs at 2, 5 and 12.5: ASHA records the first epoch at or past a rung, 13.
    assert rung_milestones(2, 2.5, 30) == [2, 5, 13, 30]


@pytest.mark.parametrize(
    ("grace", "factor", "max_t", "brackets"),
    [(2, 3, 30, 1), (1, 2, 8, 1), (1, 2, 6, 1), (2, 2.5, 30, 3), (1, 3, 100, 4), (5, 3, 5, 1)],
)
def test_report_epochs_are_exactly_the_epochs_ray_asha_records_at(
    grace: int, factor: float, max_t: int, brackets: int
) -> None:
    """A trial reports at once only at these epochs (batching the others), so they must be
    every epoch at which Ray's own ASHA, in any of its brackets, records a result."""
    asha = ASHAScheduler(
        time_attr="epoch",
        metric="val_accuracy",
        mode="max",
        max_t=max_t,
        grace_period=grace,
        reduction_factor=factor,
        brackets=brackets,
    )
    ray_epochs = {
        math.ceil(milestone) for bracket in asha._brackets for milestone, _ in bracket._rungs
    }
    assert set(asha_rung_epochs(grace, factor, max_t)) == ray_epochs


def test_rung_reached_counts_passed_milestones() -> None:
    milestones = [2, 6, 18, 30]
    assert [rung_reached(e, milestones) for e in (1, 2, 5, 6, 29, 30)] == [0, 1, 1, 2, 3, 4]


def test_an_early_stopped_trial_never_outranks_one_that_went_deeper() -> None:
    milestones = rung_milestones(2, 3, 30)
    early_star = _record(0, 2, 0.99, "stopped_early")
    full_budget = _record(1, 30, 0.90)
    middle = _record(2, 6, 0.95, "stopped_early")
    assert [
        r.index
        for r in ranked([early_star, full_budget, middle], "val_accuracy", "max", milestones)
    ] == [1, 2, 0]


def test_diverged_and_failed_trials_are_never_best() -> None:
    milestones = [30]
    records = [
        _record(0, 30, 0.99, "diverged"),
        _record(1, 30, 0.99, "failed"),
        _record(2, 30, 0.5),
    ]
    assert [r.index for r in ranked(records, "val_accuracy", "max", milestones)] == [2]


def test_min_mode_prefers_lower_values() -> None:
    records = [_record(0, 5, 0.3), _record(1, 5, 0.1)]
    for r, loss in zip(records, (0.3, 0.1), strict=False):
        r.history[-1]["val_loss"] = loss
    assert ranked(records, "val_loss", "min", [5])[0].index == 1


def test_classify_finished() -> None:
    assert classify_finished(_record(0, 30, 0.9), 30) == "completed"
    assert classify_finished(_record(0, 6, 0.9), 30) == "stopped_early"
    diverged = _record(0, 3, 0.1)
    diverged.history[-1]["diverged"] = True
    assert classify_finished(diverged, 30) == "diverged"
