"""The sweep observer's bookkeeping for Tune events, on a real MLflow SQLite store.

Tune can report a trial's error without ever reporting its start: when the reused actor it
was being reset onto dies, ``on_trial_error`` is the first the callbacks hear of the trial.
Such a trial must still count as failed, with its own MLflow run, not vanish from the sweep.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from orchestrator.engine import live
from orchestrator.engine.observer import SweepObserver
from orchestrator.engine.progress import ProgressLine
from orchestrator.engine.searcher import RoundSearcher
from orchestrator.search.plan import RoundPlan
from orchestrator.search.space import RangeDomain, SearchSpace
from orchestrator.store.tracking import SweepTracker

# MLflow puts a SQLite store's artifacts in ./mlruns of the working directory.
pytestmark = pytest.mark.usefixtures("in_tmp_path")


SPACE = SearchSpace((RangeDomain("learning_rate", "log", 1e-4, 1.0),), {"epochs": 4})
PLAN = RoundPlan(1, 3, 7, 0.5, 0.1, "val_accuracy", "max", (2, 4), 4)


def _observer(tmp_path: Path) -> tuple[SweepObserver, RoundSearcher, SweepTracker]:
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "observer")
    tracker.start_sweep("sweep", {}, {}, "name: observer\n", "spec.yaml")
    progress = ProgressLine(3, "val_accuracy", "max", [2, 4], io.StringIO(), interval_s=3600)
    live.register("obs", live.LiveSweep(tracker, progress))
    searcher = RoundSearcher(SPACE, PLAN, sweep_id="obs")
    return SweepObserver("obs", searcher, 4, {"epochs"}), searcher, tracker


def _trial(trial_id: str, config: dict) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config=config, error_file=None)


def test_a_trial_that_fails_before_it_starts_is_a_failed_trial_with_its_run(
    tmp_path: Path,
) -> None:
    observer, searcher, tracker = _observer(tmp_path)
    try:
        started = _trial("a", searcher.suggest("a"))
        unstarted = _trial("b", searcher.suggest("b"))
        observer.on_trial_start(0, [], started)
        observer.on_trial_result(0, [], started, {"epoch": 1, "val_accuracy": 0.5})
        observer.on_trial_complete(0, [], started)
        observer.on_trial_error(0, [], unstarted)  # its reset failed: no on_trial_start

        outcomes = {r.trial_id: r.state for r in observer.records.values()}
        assert outcomes == {"a": "stopped_early", "b": "failed"}
        tracker.flush()
        run_id = tracker.child_run_id(str(searcher.index_of["b"]))
        assert run_id is not None
    finally:
        tracker.close()
        live.unregister("obs")
    run = MlflowClient(tracker.uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["caviar.outcome"] == "failed"
    assert run.data.tags["caviar.ray_trial_id"] == "b"
    assert run.data.tags["caviar.trial_id"] == f"obs-{searcher.index_of['b']:03d}"  # its own


def test_a_child_run_spans_its_trial_not_the_moment_the_writer_got_to_it(
    tmp_path: Path,
) -> None:
    """MLflow writes are batched (about a second), so a run created when the writer gets to
    it would start and end late; the UI's durations, and the benchmark, need the trial's own."""
    import time

    observer, searcher, tracker = _observer(tmp_path)
    try:
        trial = _trial("a", searcher.suggest("a"))
        before_start = time.time()
        observer.on_trial_start(0, [], trial)
        after_start = time.time()
        time.sleep(0.3)
        observer.on_trial_result(0, [], trial, {"epoch": 1, "val_accuracy": 0.5})
        before_end = time.time()
        observer.on_trial_complete(0, [], trial)
        after_end = time.time()
        tracker.flush()
        run_id = tracker.child_run_id(str(searcher.index_of["a"]))
    finally:
        tracker.close()
        live.unregister("obs")
    info = MlflowClient(tracker.uri).get_run(run_id).info
    assert int(before_start * 1000) <= info.start_time <= after_start * 1000 + 1
    assert int(before_end * 1000) <= info.end_time <= after_end * 1000 + 1


def _pack(searcher: RoundSearcher, trial_id: str, size: int) -> SimpleNamespace:
    """A fused pack's Tune trial over the next ``size`` planned trials."""
    indices = []
    for n in range(size):
        searcher.suggest(f"{trial_id}-{n}")
        index = searcher.index_of.pop(f"{trial_id}-{n}")
        searcher.trials[index].pack = indices[0] if indices else index
        indices.append(index)
    searcher.members_of[trial_id] = tuple(indices)
    return _trial(trial_id, {})


def _journal_lines(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_pack_member_at_its_last_epoch_ends_after_its_checkpoint_is_journaled(
    tmp_path: Path,
) -> None:
    """A kill between a member's end and its pack's final checkpoint once left the best trial
    ended with no checkpoint to test: the end must come after what it points to."""
    from orchestrator.store.journal import Journal
    from orchestrator.trials import MEMBER_LAST, MEMBER_RESULTS

    observer, searcher, tracker = _observer(tmp_path)
    observer.journal = Journal(tmp_path / "journal.jsonl")
    try:
        pack = _pack(searcher, "p", 2)
        observer.on_trial_start(0, [], pack)
        epochs = [{"epoch": e, "val_accuracy": e / 10} for e in (1, 2, 3, 4)]
        result = {MEMBER_RESULTS: [[0, epochs], [1, epochs]], MEMBER_LAST: []}
        observer.on_trial_result(0, [], pack, result)
        assert not [e for e in _journal_lines(observer.journal.path) if e["e"] == "end"]
        observer.on_checkpoint(0, [], pack, SimpleNamespace(path=str(tmp_path / "ckpt")))
        observer.on_trial_complete(0, [], pack)
    finally:
        tracker.close()
        live.unregister("obs")
    events = [(e["e"], e.get("i")) for e in _journal_lines(observer.journal.path)]
    for index in (0, 1):
        assert events.index(("checkpoint", index)) < events.index(("end", index)), events
    assert {r.state for r in observer.records.values()} == {"completed"}


def test_a_journal_that_cannot_be_written_halts_the_sweep_and_records_nothing_more(
    tmp_path: Path,
) -> None:
    from orchestrator.store.journal import Journal, JournalWriteError

    observer, searcher, tracker = _observer(tmp_path)
    observer.journal = Journal(Path("/dev/full"))  # every write: ENOSPC
    try:
        trial = _trial("a", searcher.suggest("a"))
        observer.on_trial_start(0, [], trial)  # no exception reaches Tune
        observer.on_trial_result(0, [], trial, {"epoch": 1, "val_accuracy": 0.5})
    finally:
        tracker.close()
        live.unregister("obs")
    assert isinstance(observer.halted(), JournalWriteError)
    assert "is full" in str(observer.halted())
    assert observer.records == {}  # what could not be journaled reached nothing else


def test_the_parent_logs_the_best_so_far_against_epochs_spent(tmp_path: Path) -> None:
    """best_so_far on the parent: a point whenever a full-budget trial beats the best, at the
    epochs every trial has trained by then; stopped-early and worse trials add none."""
    observer, searcher, tracker = _observer(tmp_path)
    try:
        trials = [_trial(t, searcher.suggest(t)) for t in ("a", "b", "c")]
        for trial in trials:
            observer.on_trial_start(0, [], trial)
        curves = {"a": [0.5, 0.6, 0.7, 0.8], "b": [0.9, 0.95], "c": [0.4, 0.5, 0.6, 0.85]}
        for trial in trials:
            for epoch, value in enumerate(curves[trial.trial_id], start=1):
                observer.on_trial_result(0, [], trial, {"epoch": epoch, "val_accuracy": value})
            observer.on_trial_complete(0, [], trial)
        tracker.flush()
        parent = tracker.parent_run_id
    finally:
        tracker.close()
        live.unregister("obs")
    client = MlflowClient(tracker.uri)
    points = [(m.step, m.value) for m in client.get_metric_history(parent, "best_so_far")]
    # a: full, 0.8 once 4 epochs were spent; b: stopped at 2 with 0.95 (never the best);
    # c: full and better, once all 10 were spent
    assert points == [(4, 0.8), (10, 0.85)]
    rounds = [(m.step, m.value) for m in client.get_metric_history(parent, "round")]
    assert rounds == [(0, 1.0)]
    assert observer.best_so_far.spent == 10
