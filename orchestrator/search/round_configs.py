"""A round's configurations (pure, no Ray): random in its region, or by TPE in zoom's box.

Round 1 uses the sweep seed itself (a one-round sweep is plain seeded random search). A later
zoom round draws ``explore`` of its trials from the whole region at random and the rest from
the zoomed box: at random, or with ``sampler: tpe`` proposed by TPE (:func:`tpe_box_configs`).

At a round's start every earlier trial has ended (zoom's rounds are barriers), so TPE is told
each of them that lies in the round's box, ranked at the full budget from its last epoch
(``ranking: asha``: the records keep a trial's newest epoch only), and proposes the share one
configuration after another, the pending ones shown to it as running (the constant liar).
The proposals are a function of the trials' records and the seed: a resumed sweep, rebuilt
from its journal, draws the same round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from orchestrator.search.plan import RoundPlan
from orchestrator.search.space import SearchSpace, sample_configs
from orchestrator.search.tpe import TpeProposer, TpeSettings
from orchestrator.trials import Trial


def round_configs(
    plan: RoundPlan,
    round_number: int,
    space: SearchSpace,
    original: SearchSpace,
    trials: Mapping[int, Trial],
    first_index: int,
) -> list[dict[str, Any]]:
    """Round ``round_number``'s configurations in ``space`` (the round's region), the explored
    share drawn in ``original`` (the same share at each grid point); ``first_index`` is the
    index the round's first trial gets."""
    seed = plan.seed + (round_number - 1) * 7919
    count = plan.samples_per_point
    explored = 0 if round_number == 1 else round(plan.explore * count)
    if plan.round_sampler is not None and round_number > 1:
        objective = (plan.metric, plan.mode)
        configs = tpe_box_configs(
            space, plan.round_sampler, seed, objective, plan.milestones, trials,
            first_index, count - explored,
        )  # fmt: skip
    else:
        configs = sample_configs(space, count - explored, seed)
    if not explored:
        return configs
    wide = sample_configs(original, explored, seed + 104729)
    per_point, wide_per_point = count - explored, explored
    merged: list[dict[str, Any]] = []
    for point in range(max(1, original.grid_size())):
        merged += configs[point * per_point : (point + 1) * per_point]
        merged += wide[point * wide_per_point : (point + 1) * wide_per_point]
    return merged


def tpe_box_configs(
    space: SearchSpace,
    settings: TpeSettings,
    seed: int,
    objective: tuple[str, Literal["max", "min"]],
    milestones: Sequence[int],
    trials: Mapping[int, Trial],
    first_index: int,
    count: int,
) -> list[dict[str, Any]]:
    """``count`` configurations per grid point of ``space``, proposed from the ended
    ``trials`` inside it; ``first_index`` is the index the first of them will get."""
    metric, mode = objective
    proposer = TpeProposer(space, settings, seed, metric, mode, milestones)
    for index, trial in sorted(trials.items()):
        if trial.state.ended and proposer.misfit(trial.config) is None:
            proposer.adopt(index, trial.config)
            proposer.observe(index, trial.history)
            proposer.end(index, trial.state)
    configs: list[dict[str, Any]] = []
    for point in space.grid_points() or [{}]:
        for _ in range(count):
            configs.append(proposer.propose(first_index + len(configs), point))
    return configs
