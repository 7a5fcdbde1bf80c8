"""The Ray Tune callback that turns trial events into records, MLflow writes and progress.

It runs on the driver, in Tune's event loop, so everything it does must be cheap: it updates
in-memory records, queues MLflow writes for the tracker's background thread, and redraws the
progress line at most a few times a second.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator.progress import ProgressLine
from orchestrator.records import TrialRecord, classify_finished
from orchestrator.search import PlannedSearcher
from orchestrator.tracking import SweepTracker

# What a trial reports that is a per-epoch metric (everything numeric we own, nothing of Ray's).
EPOCH_METRICS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "epoch_seconds",
    "learning_rate",
)
RECORDED_KEYS = (*EPOCH_METRICS, "epoch", "diverged", "node_id")


class SweepObserver(Callback):
    """Keeps a :class:`TrialRecord` per trial and forwards events to tracking and progress."""

    def __init__(
        self,
        searcher: PlannedSearcher,
        tracker: SweepTracker,
        progress: ProgressLine,
        budget: int,
        fixed_names: set[str],
    ) -> None:
        self.searcher = searcher
        self.tracker = tracker
        self.progress = progress
        self.budget = budget
        self.fixed_names = fixed_names
        self.records: dict[str, TrialRecord] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment; the live tracker and terminal stay."""
        state = dict(self.__dict__)
        state["tracker"] = None
        state["progress"] = None
        return state

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.records:
            return  # restarted after a failure: same record, same MLflow run
        index = self.searcher.index_of.get(trial.trial_id, len(self.records))
        config = dict(trial.config)
        record = TrialRecord(trial.trial_id, index, config)
        self.records[trial.trial_id] = record
        self.tracker.trial_started(
            trial.trial_id,
            run_name=f"trial-{index:03d}",
            params=config,
            tags={
                "caviar.trial_id": trial.trial_id,
                "caviar.trial_index": str(index),
                "caviar.sampled": ",".join(sorted(k for k in config if k not in self.fixed_names)),
            },
        )
        self.progress.update(self.records.values())

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        record = self.records.get(trial.trial_id)
        if record is None:
            return
        entry = {k: result[k] for k in RECORDED_KEYS if k in result}
        record.history.append(entry)
        record.node_id = entry.get("node_id", record.node_id)
        metrics = {
            k: float(v)
            for k, v in entry.items()
            if k in EPOCH_METRICS and isinstance(v, (int, float)) and math.isfinite(float(v))
        }
        self.tracker.trial_metrics(trial.trial_id, metrics, step=int(entry.get("epoch", 0)))
        self.progress.update(self.records.values())

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self.records.get(trial.trial_id)
        if record is None:
            return
        record.outcome = classify_finished(record, self.budget)
        self._end(record, status="FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self.records.get(trial.trial_id)
        if record is None:
            return
        record.outcome = "failed"
        record.error = _error_summary(trial)
        self._end(record, status="FAILED")

    def on_checkpoint(
        self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        record = self.records.get(trial.trial_id)
        if record is not None:
            record.checkpoint = checkpoint

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.progress.update(self.records.values())

    def _end(self, record: TrialRecord, status: str) -> None:
        tags = {"caviar.outcome": record.outcome, "caviar.last_epoch": str(record.epochs)}
        if record.node_id:
            tags["caviar.node_id"] = record.node_id
        if record.error:
            tags["caviar.error"] = record.error
        self.tracker.trial_ended(record.trial_id, tags=tags, status=status)
        self.progress.update(self.records.values())


def _error_summary(trial: Any) -> str:
    """The last line of the trial's error: enough to see what went wrong in the MLflow UI."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "trial failed")[:500]
