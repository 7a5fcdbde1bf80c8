"""A user's own model, end to end (real Ray, real MLflow): the example of ``examples/own_model``
run as a user runs it from another folder, and a trainable with a bug in its epoch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import clean_env, run_caviar
from mlflow import MlflowClient

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_model"

FLAKY = """
from models import CnnSession, CnnConfig
from trainables import TrainableDefinition


class FlakySession(CnnSession):
    def step(self):
        if self.config.channels == 4 and self.epoch == 1:
            raise ZeroDivisionError("a bug in epoch 2")
        return super().step()


FLAKY = TrainableDefinition(
    name="flaky_cnn",
    description="the example's network with a bug in its second epoch (4 channels)",
    config_model=CnnConfig,
    metrics={"val_accuracy": "max", "val_loss": "min"},
    make_session=FlakySession,
)
"""


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("own-model")
    project, cwd = root / "project", root / "elsewhere"
    shutil.copytree(EXAMPLE, project)
    cwd.mkdir()
    result = run_caviar("run", str(project / "spec.yaml"), cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("own-cnn-digits")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("caviar.kind") == "sweep")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return {"result": result, "client": client, "parent": parent, "children": children, "cwd": cwd}


def test_the_example_sweeps_the_users_network_into_mlflow(example: dict[str, Any]) -> None:
    parent, children = example["parent"], example["children"]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["trainable"] == "models:DIGITS_CNN"
    assert len(children) == 8
    assert {c.data.params["channels"] for c in children} <= {"4", "8"}
    assert all(0.001 <= float(c.data.params["learning_rate"]) <= 0.5 for c in children)
    outcomes = {c.data.tags["caviar.outcome"] for c in children}
    assert outcomes <= {"completed", "stopped_early"} and "completed" in outcomes
    history = example["client"].get_metric_history(children[0].info.run_id, "val_accuracy")
    assert [m.step for m in sorted(history, key=lambda m: m.step)][:2] == [1, 2]
    assert float(parent.data.metrics["best_val_accuracy"]) > 0.8
    assert 0.8 < float(parent.data.metrics["test_accuracy"]) <= 1.0
    files = {f.path for f in example["client"].list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in files
    assert "test accuracy:" in example["result"].stdout


def test_the_logged_model_loads_without_the_users_folder(example: dict[str, Any]) -> None:
    """MLflow logged models.py beside the network: it loads where models.py is not."""
    uri = example["parent"].data.tags["caviar.model_uri"]
    code = (
        "import mlflow.pytorch, torch, sys\n"
        f"model = mlflow.pytorch.load_model({uri!r})\n"
        "out = model(torch.zeros(3, 64))\n"
        "print(type(model).__module__, type(model).__name__, tuple(out.shape))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=example["cwd"],
        env=clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{example['cwd'] / 'mlflow.db'}"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "models DigitsCNN (3, 10)"


def test_a_bug_in_an_epoch_fails_that_trial_and_not_the_sweep(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project)
    (project / "flaky.py").write_text(FLAKY)
    spec = _edited(
        (project / "spec.yaml").read_text(),
        ("models:DIGITS_CNN", "flaky:FLAKY"),
        ("own-cnn-digits", "flaky-cnn"),
        ("fixed: {epochs: 6, batch_size: 64}", "fixed: {epochs: 3, batch_size: 64}"),
        ("num_trials: 8", "num_trials: 2"),
        (
            "scheduler: {kind: asha, grace_period: 2, reduction_factor: 3}",
            "scheduler: {kind: fifo}",
        ),
        ("channels: {values: [4, 8]}", "channels: {grid: [4, 8]}"),
    )
    (project / "spec.yaml").write_text(spec + "storage: {max_failures: 0}\n")
    result = run_caviar("run", str(project / "spec.yaml"), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("flaky-cnn")
    children = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if "mlflow.parentRunId" in r.data.tags
    ]
    by_channels: dict[str, list[Any]] = {}
    for child in children:
        by_channels.setdefault(child.data.params["channels"], []).append(child)
    assert len(by_channels["4"]) == 2 and len(by_channels["8"]) == 2
    for child in by_channels["4"]:
        assert child.info.status == "FAILED"
        assert child.data.tags["caviar.outcome"] == "failed"
        assert "ZeroDivisionError: a bug in epoch 2" in child.data.tags["caviar.error"]
    for child in by_channels["8"]:
        assert child.info.status == "FINISHED"
        assert child.data.tags["caviar.outcome"] == "completed"
    assert "2 completed" in result.stdout and "2 failed" in result.stdout


def _edited(text: str, *edits: tuple[str, str]) -> str:
    """``text`` with each ``(old, new)`` applied; each ``old`` must occur exactly once, so an
    edit of the example that this test no longer matches fails here instead of the test
    silently running the example unedited."""
    for old, new in edits:
        count = text.count(old)
        assert count == 1, (
            f"the example's spec holds {old!r} {count} times, not once: update the test"
        )
        text = text.replace(old, new)
    return text
