"""What the driver knows about each trial: its config, history and how it ended.

The records are built from Ray's callbacks on the driver, independent of Ray's own result
objects, so the summary, the MLflow layout and the ranking share one vocabulary of outcomes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["running", "completed", "stopped_early", "diverged", "failed"]
FINAL_OUTCOMES: tuple[Outcome, ...] = ("completed", "stopped_early", "diverged", "failed")
# The key of a trial's step result that holds every epoch the step trained, oldest first. A
# step may train several epochs between reports; its top-level metrics are the last epoch's,
# which is what Tune and the scheduler look at.
EPOCH_RESULTS = "epoch_results"


@dataclass
class TrialRecord:
    """One trial as the driver saw it; ``history`` holds every per-epoch result, in order."""

    trial_id: str
    index: int
    config: dict[str, Any]
    outcome: Outcome = "running"
    history: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    node_id: str | None = None
    round: int = 1
    checkpoint: Any = None  # the latest ray.tune.Checkpoint, for testing the best trial

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    @property
    def epochs(self) -> int:
        return int(self.last.get("epoch", 0))

    def metric(self, name: str) -> float | None:
        value = self.last.get(name)
        if value is None:
            return None
        value = float(value)
        return value if math.isfinite(value) else None


def with_epoch(history: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """``history`` with ``entry`` as its newest epoch. A trial restarted from a checkpoint
    reports the epochs after it again (same values: the session resumes exactly), so an entry
    replaces the one for its epoch and any after it: one entry per epoch, in order."""
    epoch = int(entry.get("epoch", 0))
    return [e for e in history if int(e.get("epoch", 0)) < epoch] + [entry]


def classify_finished(record: TrialRecord, budget: int) -> Outcome:
    """How a trial that ended without an error ended: diverged, completed or stopped early."""
    if record.last.get("diverged"):
        return "diverged"
    if record.epochs >= budget:
        return "completed"
    return "stopped_early"
