"""A finished (or running) sweep as read back from MLflow: plain data, no MLflow types.

``caviar report`` works from this alone, so it can describe any past sweep, including one
that ran on a cluster, from nothing but the tracking store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrialHistory:
    run_id: str
    trial_id: str
    index: int
    round: int
    outcome: str
    config: dict[str, Any]
    curve: list[tuple[int, float]]  # (epoch, objective) in epoch order
    diverged: bool = False

    @property
    def last_epoch(self) -> int:
        return self.curve[-1][0] if self.curve else 0

    @property
    def last_value(self) -> float | None:
        return self.curve[-1][1] if self.curve else None


@dataclass
class SweepHistory:
    name: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    metric: str
    mode: str
    milestones: list[int]
    regions: list[dict[str, Any]]  # per round: parameter -> {scale, low, high, integer} | ...
    trials: list[TrialHistory] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
