"""``store/lifecycle.py`` on a real SQLite MLflow store: a run is stamped as it opens, and
however its work exits (returns, Ctrl-C, an error) the parent ends with the matching status,
the children still open end KILLED on an interruption, and the folder's marker says the same."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.store import layout
from orchestrator.store.lifecycle import (
    Ending,
    NewParent,
    RunLifecycle,
    discard_unstarted,
    new_run_id,
)
from orchestrator.store.markers import STARTING, read_marker
from orchestrator.store.tracking import SweepTracker

# MLflow puts a SQLite store's artifacts in ./mlruns of the working directory.
pytestmark = pytest.mark.usefixtures("in_tmp_path")


def _start(tmp_path: Path, stream: io.StringIO) -> RunLifecycle:
    run_id = new_run_id()
    parent = NewParent(
        kind=layout.SWEEP,
        run_id=run_id,
        run_name=f"life-{run_id}",
        spec_hash="abc123",
        spec_text="name: life\n",
        spec_filename="life.yaml",
        tags={layout.TRAINABLE: "mlp"},
        params={"search.num_trials": 2},
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return RunLifecycle.start(uri, "life", parent, stream, folder=tmp_path / run_id)


def _parent(run: RunLifecycle) -> tuple[str, dict[str, str], dict[str, float]]:
    found = MlflowClient(run.tracker.uri).get_run(run.parent_run_id)
    return found.info.status, found.data.tags, found.data.metrics


def _child_statuses(run: RunLifecycle) -> list[str]:
    client = MlflowClient(run.tracker.uri)
    children = client.search_runs(
        [run.tracker.experiment_id], f"tags.mlflow.parentRunId = '{run.parent_run_id}'"
    )
    return [child.info.status for child in children]


def _marker_status(run: RunLifecycle) -> str:
    assert run.folder is not None
    marker = read_marker(run.folder)
    assert marker is not None
    return marker.status


def _summary(status: str) -> Ending:
    return Ending(summary=({"trials": 2.0}, {"caviar.note": status}))


def test_a_new_run_is_stamped_and_marked_running(tmp_path: Path) -> None:
    run = _start(tmp_path, io.StringIO())
    status, tags, _ = _parent(run)
    assert status == "RUNNING"
    assert tags[layout.KIND] == layout.SWEEP
    assert tags[layout.SWEEP_ID] == run.run_id
    assert tags[layout.SPEC_HASH] == "abc123"
    assert tags[layout.TRAINABLE] == "mlp"
    assert run.folder is not None
    marker = read_marker(run.folder)
    assert marker is not None and marker.status == "running"
    assert marker.parent_run_id == run.parent_run_id
    with run.running(_summary):
        pass


def test_work_that_returns_ends_finished_with_its_summary(tmp_path: Path) -> None:
    run = _start(tmp_path, io.StringIO())
    with run.running(_summary):
        pass
    status, tags, metrics = _parent(run)
    assert (run.status, status, tags["caviar.note"], metrics["trials"]) == (
        "FINISHED",
        "FINISHED",
        "FINISHED",
        2.0,
    )
    assert _marker_status(run) == "finished"


def test_ctrl_c_ends_the_run_and_its_open_children_killed_and_is_kept(tmp_path: Path) -> None:
    run = _start(tmp_path, io.StringIO())
    with run.running(lambda status: Ending()):
        run.tracker.trial_started("0", "trial-000", {"lr": 0.1}, {layout.TRIAL_INDEX: "0"})
        raise KeyboardInterrupt
    assert run.status == "KILLED"
    assert isinstance(run.interruption, KeyboardInterrupt)
    assert _parent(run)[0] == "KILLED"
    assert _child_statuses(run) == ["KILLED"]
    assert _marker_status(run) == "interrupted"


def test_an_error_ends_the_run_failed_and_is_raised(tmp_path: Path) -> None:
    run = _start(tmp_path, io.StringIO())
    seen: list[str] = []

    def ending(status: str) -> Ending:
        seen.append(status)
        return Ending()

    with pytest.raises(ValueError, match="broken"), run.running(ending):
        raise ValueError("broken")
    assert seen == ["FAILED"]
    assert _parent(run)[0] == "FAILED"
    assert _marker_status(run) == "failed"


def test_a_failing_end_of_an_interrupted_run_still_marks_it(tmp_path: Path) -> None:
    """The store may be what failed (a full disk): the marker must still say interrupted."""
    stream = io.StringIO()
    run = _start(tmp_path, stream)

    def ending(status: str) -> Ending:
        raise OSError("No space left on device")

    with run.running(ending):
        raise KeyboardInterrupt
    assert "MLflow could not be updated (No space left on device)" in stream.getvalue()
    assert _marker_status(run) == "interrupted"


class _Killed(BaseException):
    """What a SIGKILL is to the code it lands in: nothing after it runs."""


def test_a_kill_after_the_parent_is_created_leaves_a_marker_that_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = SweepTracker.start_sweep

    def create_then_die(self: SweepTracker, *args: object, **kwargs: object) -> str:
        created(self, *args, **kwargs)  # type: ignore[arg-type]
        raise _Killed

    monkeypatch.setattr(SweepTracker, "start_sweep", create_then_die)
    with pytest.raises(_Killed):
        _start(tmp_path, io.StringIO())
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "mlruns"]
    marker = read_marker(folder)
    assert marker is not None and (marker.status, marker.parent_run_id) == (STARTING, "")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("life")
    orphan = client.search_runs([experiment.experiment_id])
    assert [run.data.tags[layout.SWEEP_ID] for run in orphan] == [marker.sweep_id]

    assert discard_unstarted(tmp_path) == [marker.sweep_id]
    assert client.search_runs([experiment.experiment_id]) == []
    assert not folder.exists()
    assert discard_unstarted(tmp_path) == []


def test_discarding_leaves_runs_that_started_alone(tmp_path: Path) -> None:
    run = _start(tmp_path, io.StringIO())
    assert discard_unstarted(tmp_path) == []
    assert _parent(run)[0] == "RUNNING" and _marker_status(run) == "running"
    with run.running(_summary):
        pass
