"""The Ray Tune callback that turns trial events into records, MLflow writes and progress.

It runs on the driver, in Tune's event loop, so everything it does must be cheap: it updates
in-memory records, queues MLflow writes for the tracker's background thread, and redraws the
progress line at most a few times a second.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import TrialScheduler

from orchestrator import live
from orchestrator.progress import ProgressLine
from orchestrator.records import TrialRecord, classify_finished
from orchestrator.search import RoundSearcher
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
    """Keeps a :class:`TrialRecord` per trial and forwards events to tracking and progress.

    Tune pickles this object with the experiment; the tracker and the progress line are looked
    up by sweep id (``orchestrator.live``), so a restored copy writes to the live ones.
    """

    def __init__(
        self,
        sweep_id: str,
        searcher: RoundSearcher,
        scheduler: TrialScheduler,
        budget: int,
        fixed_names: set[str],
    ) -> None:
        self.sweep_id = sweep_id
        self.searcher = searcher
        self.scheduler = scheduler
        self.budget = budget
        self.fixed_names = fixed_names
        self.records: dict[str, TrialRecord] = {}

    @property
    def tracker(self) -> SweepTracker:
        found = live.lookup(self.sweep_id)
        if found is None:
            raise RuntimeError(f"sweep {self.sweep_id} has no live tracker registered")
        return found.tracker

    @property
    def progress(self) -> ProgressLine:
        found = live.lookup(self.sweep_id)
        if found is None:
            raise RuntimeError(f"sweep {self.sweep_id} has no live progress line registered")
        return found.progress

    def get_state(self) -> dict[str, Any]:
        """Saved with every experiment snapshot; a resumed sweep starts from this state.

        The scheduler's state rides along: Tune restores searchers and callbacks but not
        schedulers, and an ASHA that forgot its rungs would promote trials an uninterrupted
        sweep would have stopped.
        """
        return {"records": self.records, "scheduler": pickle.dumps(self.scheduler.__dict__)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.records = dict(state.get("records", {}))
        if "scheduler" in state:
            self.scheduler.__dict__.update(pickle.loads(state["scheduler"]))

    def setup(self, **info: Any) -> None:
        """Tune starts (or restores) the experiment: make this copy the live observer."""
        found = live.lookup(self.sweep_id)
        if found is not None:
            found.observer = self

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.records:
            return  # restarted after a failure: same record, same MLflow run
        index = self.searcher.index_of.get(trial.trial_id, len(self.records))
        config = dict(trial.config)
        round_number = self.searcher.round_of.get(trial.trial_id, 1)
        record = TrialRecord(trial.trial_id, index, config, round=round_number)
        self.records[trial.trial_id] = record
        self.tracker.trial_started(
            trial.trial_id,
            run_name=f"trial-{index:03d}",
            params=config,
            tags={
                "caviar.trial_id": trial.trial_id,
                "caviar.trial_index": str(index),
                "caviar.round": str(round_number),
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
        epoch = int(entry.get("epoch", 0))
        # A trial restored from a checkpoint replays the epochs after it (same values: the
        # session resumes exactly); keep one entry per epoch.
        record.history = [e for e in record.history if int(e.get("epoch", 0)) < epoch]
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
