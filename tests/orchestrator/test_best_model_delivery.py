"""The best model is logged while the writer delivers the trials' last writes, and is always
delivered (or its error raised) before ``rank_and_test`` returns (engine/best_model.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from orchestrator.engine import best_model
from orchestrator.sweep_result import SweepResult
from orchestrator.trials import Trial, TrialState

MODEL_URI = "models:/m-0123"


class FakeRun:
    """The run's ``log_model``: slow, as a real one is, and telling when it started and ended."""

    def __init__(self, seconds: float = 0.3, error: BaseException | None = None) -> None:
        self.seconds, self.error = seconds, error
        self.started, self.finished = threading.Event(), threading.Event()
        self.thread: str | None = None

    def log_model(self, model: Any, input_example: Any) -> str:
        self.thread = threading.current_thread().name
        self.started.set()
        time.sleep(self.seconds)
        self.finished.set()
        if self.error is not None:
            raise self.error
        return MODEL_URI


class FakeTracker:
    """The tracker's ``flush``: notes whether the model was already on its way."""

    def __init__(self, run: FakeRun, interrupt: bool = False) -> None:
        self.run, self.interrupt = run, interrupt
        self.model_started_before_flush_ended: bool | None = None

    def flush(self) -> None:
        self.model_started_before_flush_ended = self.run.started.wait(timeout=5)
        if self.interrupt:
            raise KeyboardInterrupt

    def child_run_id(self, trial: str) -> str:
        return f"run-{trial}"


def _sweep(tracker: FakeTracker) -> Any:
    spec = SimpleNamespace(objective=SimpleNamespace(metric="val_accuracy"), mode="max")
    data = SimpleNamespace(x_test=np.zeros((8, 4), dtype=np.float32))
    return SimpleNamespace(spec=spec, tracker=tracker, data=data, stream=None)


def _result(records: list[Trial]) -> SweepResult:
    return SweepResult(
        name="s", sweep_id="id", experiment="e", tracking_uri="sqlite:///x.db",
        parent_run_id="p", storage_dir=Path("."), experiment_id="1", metric="val_accuracy",
        mode="max", records=records, wall_seconds=0.0,
    )  # fmt: skip


@pytest.fixture
def records(monkeypatch: pytest.MonkeyPatch) -> list[Trial]:
    trials = [Trial(index=i, round=1, config={}, state=TrialState.COMPLETED) for i in range(3)]
    monkeypatch.setattr(best_model, "milestones", lambda spec: [])
    monkeypatch.setattr(best_model, "ranked", lambda records, *_: list(records))

    def scored(spec: Any, data: Any, result: SweepResult, stream: Any = None) -> str:
        result.test_loss, result.test_accuracy = 0.1, 0.9
        return "the network"

    monkeypatch.setattr(best_model, "_score_best", scored)
    return trials


def test_the_model_is_logged_during_the_flush_and_delivered_before_the_return(
    records: list[Trial],
) -> None:
    run = FakeRun()
    tracker = FakeTracker(run)
    result = _result(records)
    best_model.rank_and_test(_sweep(tracker), run, result)  # type: ignore[arg-type]
    assert tracker.model_started_before_flush_ended  # the two overlap
    assert run.thread != threading.current_thread().name
    assert run.finished.is_set()  # delivered before rank_and_test returned
    assert result.model_uri == MODEL_URI
    assert result.best_run_id == "run-0" and result.ranked_run_ids == ["run-0", "run-1", "run-2"]
    assert result.test_accuracy == 0.9


def test_an_error_logging_the_model_is_raised_where_the_call_used_to_raise_it(
    records: list[Trial],
) -> None:
    run = FakeRun(error=RuntimeError("store refused the model"))
    result = _result(records)
    with pytest.raises(RuntimeError, match="store refused the model"):
        best_model.rank_and_test(_sweep(FakeTracker(run)), run, result)  # type: ignore[arg-type]
    assert result.model_uri is None


def test_an_interruption_during_the_flush_still_waits_for_the_whole_model(
    records: list[Trial],
) -> None:
    run = FakeRun(seconds=0.5)
    result = _result(records)
    with pytest.raises(KeyboardInterrupt):
        best_model.rank_and_test(_sweep(FakeTracker(run, interrupt=True)), run, result)  # type: ignore[arg-type]
    assert run.finished.is_set()  # not cut off half-way by the process's exit
