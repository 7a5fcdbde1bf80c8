"""The one sweep result: what a finished (or interrupted) sweep produced.

``engine/run.py`` fills it in; the terminal summary (``report/summary.py``) and the service's
driver read it. It lives below both, beside ``trials.py``, so neither layer imports the other
for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.trials import FINAL_STATES, Trial


@dataclass
class SweepResult:
    """What a finished sweep produced; everything the summary prints comes from here."""

    name: str
    sweep_id: str
    experiment: str
    tracking_uri: str
    parent_run_id: str
    storage_dir: Path
    experiment_id: str
    metric: str
    mode: str
    records: list[Trial]
    wall_seconds: float
    best: Trial | None = None
    best_run_id: str | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    model_uri: str | None = None
    undelivered: list[str] = field(default_factory=list)
    importance: dict[str, float] = field(default_factory=dict)
    best_by_round: dict[int, tuple[int, float | None]] = field(default_factory=dict)
    median_by_round: dict[int, float] = field(default_factory=dict)
    # MLflow run ids of the best-ranked trials, best first (the UI's compare view).
    ranked_run_ids: list[str] = field(default_factory=list)
    # Lines the summary prints after the best config (PBT: the copies, the best's schedule).
    notes: list[str] = field(default_factory=list)
    status: str = "FAILED"  # the parent run's end: FINISHED, KILLED (interrupted) or FAILED
    # run_sweep(draw_later=True): draws the report's plots and page onto the parent run
    # (its optional argument: where a failure is told, instead of the sweep's stream).
    draw_report: Callable[..., None] | None = None

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(r.state for r in self.records)
        return {outcome: counted.get(outcome, 0) for outcome in FINAL_STATES}

    @property
    def epochs_trained(self) -> int:
        return sum(r.epochs for r in self.records)
