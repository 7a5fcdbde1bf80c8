"""ASHA-aware ranking: which trial is best when most trials were stopped early.

A trial stopped at epoch 2 has an objective measured after 2 epochs; comparing it with one that
earned the full budget compares different things. So trials are ranked first by the deepest
rung they reached, then by the objective there. Diverged and failed trials never rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

from orchestrator.trials import Trial


def asha_rung_epochs(
    grace_period: int, reduction_factor: float, max_epochs: int
) -> tuple[int, ...]:
    """The epochs at which Ray's ``ASHAScheduler`` records a trial, whatever its bracket.

    Ray's bracket ``s`` has rungs ``grace * rf ** (k + s)``, a subset of bracket 0's, and
    records a result at the first epoch that reaches a rung (13 for a rung at 12.5). A trial
    that reports at these epochs, and sends the epochs between them in batches, is judged
    exactly as one that reports every epoch.
    """
    if grace_period < 1 or reduction_factor <= 1 or max_epochs < grace_period:
        return ()
    count = int(math.log(max_epochs / grace_period) / math.log(reduction_factor) + 1)
    return tuple(sorted({math.ceil(grace_period * reduction_factor**k) for k in range(count)}))


def rung_milestones(grace_period: int, reduction_factor: float, max_epochs: int) -> list[int]:
    """The epochs at which ASHA compares trials, ending with the full budget."""
    rungs = [
        e for e in asha_rung_epochs(grace_period, reduction_factor, max_epochs) if e < max_epochs
    ]
    return [*rungs, max_epochs]


def rung_reached(epochs: int, milestones: list[int]) -> int:
    """How many milestones a trial passed (0: stopped before the first)."""
    return sum(1 for m in milestones if epochs >= m)


def rank_key(
    record: Trial, metric: str, mode: Literal["max", "min"], milestones: list[int]
) -> tuple[int, float] | None:
    """Sort key, larger is better; ``None`` for trials that cannot be best."""
    if not record.state.ranked:
        return None
    value = record.metric(metric)
    if value is None:
        return None
    return (rung_reached(record.epochs, milestones), value if mode == "max" else -value)


def ranked(
    records: Iterable[Trial],
    metric: str,
    mode: Literal["max", "min"],
    milestones: list[int],
) -> list[Trial]:
    """Eligible trials, best first; ties keep the plan's order (lower index first)."""
    keyed = [(rank_key(r, metric, mode, milestones), r) for r in records]
    eligible = [(k, r) for k, r in keyed if k is not None]
    eligible.sort(key=lambda kr: (kr[0][0], kr[0][1], -kr[1].index), reverse=True)
    return [r for _, r in eligible]
