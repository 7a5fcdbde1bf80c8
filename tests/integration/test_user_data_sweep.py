"""A user's CSV, end to end: `caviar run` (real Ray, real MLflow) on a spec beside its data.

The spec lives in its own folder with the CSV under ``data/``, and caviar is started from a
different folder, as a user running a project's spec from anywhere would; the class mapping
must land on the parent run so the logged model's outputs can be read back.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from conftest import run_caviar
from mlflow import MlflowClient
from user_data_files import fruit_table, write_csv

pytestmark = pytest.mark.integration

SPEC = """
name: user-csv-it
data: {source: csv, path: data/fruit.csv, label: fruit, seed: 1}
space:
  learning_rate: {scale: log, low: 0.01, high: 0.5}
  hidden_units: {values: [8, 16]}
fixed: {optimizer: sgd, batch_size: 16}
search: {strategy: random, num_trials: 4, seed: 2}
scheduler: {kind: asha, grace_period: 1, reduction_factor: 2, max_epochs: 2}
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("user-data")
    project, cwd = root / "project", root / "elsewhere"
    cwd.mkdir()
    write_csv(project / "data" / "fruit.csv", fruit_table(n=150))
    (project / "sweep.yaml").write_text(SPEC)
    result = run_caviar("run", str(project / "sweep.yaml"), cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("user-csv-it")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("caviar.kind") == "sweep")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return {
        "result": result,
        "parent": parent,
        "children": children,
        "project": project,
        "cwd": cwd,
    }


def test_the_sweep_runs_on_the_csv(sweep: dict[str, Any]) -> None:
    out = sweep["result"].stdout
    assert "data csv {'train': 90, 'val': 30, 'test': 30}" in out
    assert "trials:          4 (" in out and "test accuracy:" in out
    assert "Traceback" not in sweep["result"].stderr
    assert len(sweep["children"]) == 4


def test_the_class_mapping_is_on_the_parent_run(sweep: dict[str, Any]) -> None:
    params = sweep["parent"].data.params
    assert params["data.source"] == "csv"
    assert json.loads(params["data.classes"]) == ["apple", "orange", "pear"]


def test_the_logged_model_reads_back_with_the_mapping(sweep: dict[str, Any]) -> None:
    import mlflow.pytorch
    import torch

    from orchestrator.spec import load_spec
    from orchestrator.spec.data import load_data

    parent = sweep["parent"]
    mlflow.set_tracking_uri(f"sqlite:///{sweep['cwd'] / 'mlflow.db'}")
    model = mlflow.pytorch.load_model(parent.data.tags["caviar.model_uri"], map_location="cpu")
    spec_file = sweep["project"] / "sweep.yaml"
    data = load_data(load_spec(spec_file).data, spec_file.parent)
    with torch.no_grad():
        logits = model(torch.as_tensor(data.x_test))
    classes = json.loads(parent.data.params["data.classes"])
    assert logits.shape == (30, len(classes))
    predicted = [classes[i] for i in logits.argmax(dim=1).numpy()]
    truth = [data.class_names[i] for i in data.y_test]
    accuracy = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
    assert accuracy == pytest.approx(parent.data.metrics["test_accuracy"], abs=1e-9)
