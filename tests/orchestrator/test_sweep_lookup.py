"""An experiment's name means its newest *sweep*: a revisit in the same experiment (newer,
laid out like a sweep) is never taken for one, and the lookup says which run it took.

The store is written with MLflow's own client in caviar's layout: two sweeps, then two
revisits of the older one, newer than both: one as ``caviar revisit`` tags it now
(``caviar.kind = revisit``) and one as it tagged them before (``caviar.kind = sweep`` with
``caviar.revisits``), which stores written then still hold.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from orchestrator.errors import TrackingError
from orchestrator.report.command import report_command
from orchestrator.store.reader import read_sweep

EXPERIMENT = "lookup"
T0 = 1_700_000_000_000  # ms
HOUR = 3_600_000
PARAMS = {
    "data.source": "iris",
    "trainable": "bn_softmax_mlp",
    "objective": "max val_accuracy",
    "scheduler.kind": "fifo",
    "scheduler.max_epochs": "2",
    "search.strategy": "random",
    "search.num_trials": "2",
}


def _parent(
    client: MlflowClient, experiment_id: str, start: int, sweep_id: str, tags: dict[str, str]
) -> str:
    run = client.create_run(
        experiment_id,
        start_time=start,
        run_name=f"lookup-{sweep_id}",
        tags={"caviar.sweep_id": sweep_id, **tags},
    ).info.run_id
    client.log_batch(run, params=[Param(k, v) for k, v in PARAMS.items()])
    for index, accuracy in enumerate((0.5, 0.75)):
        child = client.create_run(
            experiment_id,
            start_time=start + 1000 * (index + 1),
            run_name=f"trial-{index:03d}",
            tags={
                "mlflow.parentRunId": run,
                "caviar.trial_index": str(index),
                "caviar.round": "1",
            },
        ).info.run_id
        client.log_batch(
            child,
            params=[Param("learning_rate", str(0.1 * (index + 1)))],
            metrics=[Metric("val_accuracy", accuracy, start, epoch) for epoch in (1, 2)],
            tags=[RunTag("caviar.outcome", "completed"), RunTag("caviar.last_epoch", "2")],
        )
        client.set_terminated(child, "FINISHED", end_time=start + 10_000)
    client.set_terminated(run, "FINISHED", end_time=start + 20_000)
    return run


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp_path = tmp_path_factory.mktemp("lookup")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(
        EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri()
    )
    old = _parent(client, experiment_id, T0, "20231114-000000-aaaaaa", {"caviar.kind": "sweep"})
    new = _parent(
        client, experiment_id, T0 + HOUR, "20231114-010000-bbbbbb", {"caviar.kind": "sweep"}
    )
    revisit = _parent(
        client,
        experiment_id,
        T0 + 2 * HOUR,
        "20231114-020000-cccccc",
        {"caviar.kind": "revisit", "caviar.revisits": old},
    )
    legacy = _parent(
        client,
        experiment_id,
        T0 + 3 * HOUR,
        "20231114-030000-dddddd",
        {"caviar.kind": "sweep", "caviar.revisits": old},
    )
    return {"uri": uri, "old": old, "new": new, "revisit": revisit, "legacy": legacy}


def _picked_line(run_id: str, sweep_id: str, start_ms: int) -> str:
    started = datetime.fromtimestamp(start_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
    return f"caviar: experiment {EXPERIMENT}: sweep run {run_id} ({sweep_id}, started {started})"


def test_an_experiment_name_means_its_newest_sweep_never_a_revisit(store) -> None:
    said = io.StringIO()
    history = read_sweep(store["uri"], EXPERIMENT, announce=said)
    assert history.parent_run_id == store["new"]
    assert said.getvalue() == _picked_line(store["new"], "20231114-010000-bbbbbb", T0 + HOUR) + "\n"


def test_a_run_id_is_read_as_it_is_and_says_nothing(store) -> None:
    said = io.StringIO()
    for key in ("old", "revisit", "legacy"):  # a report reads a revisit by its run id
        assert read_sweep(store["uri"], store[key], announce=said).parent_run_id == store[key]
    assert said.getvalue() == ""


def test_revisiting_a_revisit_names_the_sweep_to_revisit(store) -> None:
    for key in ("revisit", "legacy"):
        with pytest.raises(TrackingError) as refused:
            read_sweep(store["uri"], store[key], kinds=("sweep",))
        assert str(refused.value) == (
            f"run {store[key]} is a revisit of sweep run {store['old']}, not a sweep; revisit "
            f"the sweep itself: caviar revisit {store['old']}"
        )


def test_report_by_experiment_name_reports_the_sweep_and_says_which(store, tmp_path) -> None:
    said = io.StringIO()
    page = report_command(EXPERIMENT, store["uri"], tmp_path / "report", said)
    first = said.getvalue().splitlines()[0]
    assert first == _picked_line(store["new"], "20231114-010000-bbbbbb", T0 + HOUR)
    assert store["new"] in page.read_text() and store["legacy"] not in page.read_text()
