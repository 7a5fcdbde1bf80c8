"""``SweepTracker.finalize_children`` on a real SQLite MLflow store: it may skip reading the
children back only when nothing can need repair, and must still close what a sweep left open.
And a tracker is constructed without touching the store; starting the sweep opens it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.errors import TrackingError
from orchestrator.store.tracking import SweepTracker

# MLflow puts a SQLite store's artifacts in ./mlruns of the working directory.
pytestmark = pytest.mark.usefixtures("in_tmp_path")


def _tracker(tmp_path: Path) -> SweepTracker:
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "finalize")
    tracker.start_sweep("sweep", tags={}, params={}, spec_text="name: x\n", spec_filename="x.yaml")
    return tracker


def _children(tracker: SweepTracker) -> dict[str, str]:
    client = MlflowClient(tracker.uri)
    runs = client.search_runs(
        [tracker.experiment_id], f"tags.mlflow.parentRunId = '{tracker.parent_run_id}'"
    )
    return {r.data.tags["caviar.trial_index"]: r.info.status for r in runs}


def _start(tracker: SweepTracker, key: str) -> None:
    tracker.trial_started(key, f"trial-{key}", {"lr": 0.1}, {"caviar.trial_index": key})
    tracker.trial_metrics(key, {"val_accuracy": 0.5}, step=1)


def test_a_child_left_running_is_closed_with_its_trials_outcome(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    _start(tracker, "0")
    _start(tracker, "1")
    tracker.trial_ended("0", tags={"caviar.outcome": "completed"}, status="FINISHED")
    tracker.close()
    assert _children(tracker) == {"0": "FINISHED", "1": "RUNNING"}
    tracker.finalize_children({"0": "completed", "1": "running"})
    assert _children(tracker) == {"0": "FINISHED", "1": "FAILED"}


def test_a_sweep_whose_every_run_ended_is_left_as_written(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    for key in ("0", "1"):
        _start(tracker, key)
        tracker.trial_ended(key, tags={"caviar.outcome": "completed"}, status="FINISHED")
    tracker.close()
    tracker.finalize_children({"0": "completed", "1": "completed"})
    assert _children(tracker) == {"0": "FINISHED", "1": "FINISHED"}


def test_constructing_a_tracker_touches_no_store_and_starts_no_thread(tmp_path: Path) -> None:
    threads = set(threading.enumerate())
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "lazy")
    unreachable = SweepTracker("http://127.0.0.1:9", "lazy")
    assert not (tmp_path / "mlflow.db").exists()
    assert set(threading.enumerate()) - threads == set()
    with pytest.raises(TrackingError, match="cannot reach the MLflow tracking server"):
        unreachable.start_sweep("sweep", {}, {}, "name: x\n", "x.yaml")
    tracker.start_sweep("sweep", tags={}, params={}, spec_text="name: x\n", spec_filename="x.yaml")
    assert (tmp_path / "mlflow.db").exists()
    tracker.close()
