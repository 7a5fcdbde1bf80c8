"""A finished (or running) sweep as read back from MLflow: plain data, no MLflow types.

``caviar report`` works from this alone, so it can describe any past sweep, including one
that ran on a cluster, from nothing but the tracking store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.trials import Trial


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
    trials: list[Trial] = field(default_factory=list)  # by index; run_id set, one metric
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # The parent's best_so_far, (epochs spent, value), and the epochs spent when each round
    # began, (epochs, round): empty for a sweep logged before caviar recorded them.
    best_so_far: list[tuple[int, float]] = field(default_factory=list)
    round_starts: list[tuple[int, int]] = field(default_factory=list)
    # A PBT sweep's copies, as its parent's pbt/lineage.json holds them (empty otherwise).
    pbt_lineage: list[dict[str, Any]] = field(default_factory=list)
