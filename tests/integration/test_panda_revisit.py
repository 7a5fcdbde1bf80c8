"""A real sweep (Ray, MLflow) on a CSV file, then what panda mode does with it: `--from`
continues its best trial exactly, and `revisit` re-trains its top configurations, scoring them
exactly as before on unchanged data and flagging the ranks a changed file moves.

The re-training here runs in this process (``LocalTrainer``, the code the Ray actor runs);
the Ray actor path is exercised by ``test_panda.py``."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_caviar
from mlflow import MlflowClient
from sklearn.datasets import load_iris

from orchestrator.panda.command import run_panda
from orchestrator.panda.origin import continue_from
from orchestrator.panda.revisit import format_revisit, revisit
from orchestrator.panda.trainer import LocalTrainer

pytestmark = pytest.mark.integration

SPEC = """
name: csv-sweep
data: {source: csv, path: data.csv, label: label, seed: 0}
space:
  learning_rate: {scale: log, low: 1.0e-2, high: 1.0}
fixed: {batch_size: 16, hidden_units: 8}
search: {num_trials: 4, seed: 3}
scheduler: {kind: fifo, max_epochs: 4}
"""


def _write_csv(path: Path, flip: float = 0.0) -> None:
    x, y = load_iris(return_X_y=True)
    if flip:  # the data "as it is now": a share of labels changed (fixed seed)
        rng = np.random.default_rng(7)
        changed = rng.random(len(y)) < flip
        y = np.where(changed, (y + 1) % 3, y)
    lines = ["f0,f1,f2,f3,label"] + [
        ",".join(f"{v:.1f}" for v in row) + f",{label}" for row, label in zip(x, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def _local(spec, data, spec_dir):
    return LocalTrainer(data, spec.trainable)


@pytest.fixture(autouse=True)
def _one_thread():
    """Train with the sweep's trials' thread count (cpus_per_trial: 1): torch's reductions
    over 2 threads add in another order, and the last bits of a loss would differ."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "spec.yaml").write_text(SPEC)
    _write_csv(folder / "data.csv")
    done = run_caviar("run", "spec.yaml", cwd=folder)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("csv-sweep").experiment_id],
        "tags.`caviar.kind` = 'sweep'",
    )
    return folder, parent.info.run_id


def test_from_continues_the_best_trial_exactly(sweep, monkeypatch) -> None:
    folder, parent_id = sweep
    monkeypatch.chdir(folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    origin = continue_from(parent_id, uri, 2, folder)
    assert origin.start_epoch == 4 and origin.config["epochs"] == 6
    result = run_panda(
        origin.spec,
        origin.spec_text,
        origin.spec_filename,
        folder,
        make_trainer=_local,
        origin=origin,
        stream=io.StringIO(),
    )
    (root,) = result.outcome.lineage.segments.values()
    assert (root.reason, root.start_epoch) == ("continue", 4)
    continued = [(int(e["epoch"]), e["val_loss"]) for e in root.trial.history]
    # a fresh model of the same configuration trained 6 epochs at once: the same epochs 5, 6
    from orchestrator.spec.data import load_data

    fresh = LocalTrainer(load_data(origin.spec.data, folder), origin.spec.trainable)
    fresh.start(origin.config)
    straight = [fresh.step() for _ in range(6)]
    assert continued == [(int(e["epoch"]), e["val_loss"]) for e in straight[4:]]

    client = MlflowClient(uri)
    run = client.get_run(result.parent_run_id)
    assert run.data.tags["caviar.mode"] == "panda"
    best_trial = client.get_run(parent_id).data.tags["caviar.best_run_id"]
    assert run.data.tags["caviar.panda.from_run"] == best_trial
    (child,) = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'"
    )
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
    assert steps == [5, 6]


def test_revisit_scores_unchanged_data_exactly_and_flags_a_moved_rank(sweep, tmp_path) -> None:
    shared, parent_id = sweep
    # Its own copy of the sweep's folder: this test changes data.csv and adds runs, and the
    # module's other tests must see the sweep as it ran, in whatever order they run.
    folder = tmp_path / "sweep"
    shutil.copytree(shared, folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    same = revisit(parent_id, 3, uri, _local, folder, io.StringIO())
    assert [r.new_score for r in same.rows] == [r.old_score for r in same.rows]
    assert not any(r.moved for r in same.rows)
    assert "0 of 3 configurations changed rank" in format_revisit(same)

    _write_csv(folder / "data.csv", flip=0.3)
    changed = revisit(parent_id, 3, uri, _local, folder, io.StringIO())
    text = format_revisit(changed)
    assert any(r.moved for r in changed.rows), text
    assert "<- moved" in text
    client = MlflowClient(uri)
    run = client.get_run(changed.new_run_id)
    assert run.data.tags["caviar.revisits"] == parent_id
    assert run.data.tags["caviar.kind"] == "revisit" and run.info.status == "FINISHED"
    assert run.data.metrics["revisit.rank_changes"] == sum(r.moved for r in changed.rows)
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{changed.new_run_id}'"
    )
    assert sorted(c.data.tags["caviar.revisit.old_rank"] for c in children) == ["1", "2", "3"]

    # The experiment's name still means the sweep, not the newer revisits, and says which run.
    said = io.StringIO()
    again = revisit("csv-sweep", 1, uri, _local, folder, said)
    assert again.old_run_id == parent_id
    assert said.getvalue().startswith(f"caviar: experiment csv-sweep: sweep run {parent_id} (")
