"""``MlflowSink.write_trial`` on a real SQLite MLflow store: a trial's run is the same however
its writes were grouped, and a trial that starts and ends in one group costs no separate
tag write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from orchestrator.store.mlflow_sink import MlflowSink
from orchestrator.store.writer import EndRun, LogMetrics, MetricPoint, StartRun, TrialOp

# MLflow puts a SQLite store's artifacts in ./mlruns of the working directory.
pytestmark = pytest.mark.usefixtures("in_tmp_path")


STARTED_MS, ENDED_MS = 1_700_000_000_000, 1_700_000_005_000


def _sink(path: Path) -> MlflowSink:
    sink = MlflowSink(f"sqlite:///{path / 'mlflow.db'}", "sink")
    sink.open()
    sink.create_parent("sweep", {}, {"x": 1}, "name: x\n", "x.yaml")
    return sink


def _ops(trial: str) -> list[TrialOp]:
    return [
        StartRun(
            trial, f"trial-{trial}", {"lr": 0.1, "layers": 2}, {"caviar.trial_index": trial},
            STARTED_MS,
        ),
        LogMetrics(trial, (MetricPoint("val_accuracy", 0.5, STARTED_MS + 10, 1),)),
        LogMetrics(trial, (MetricPoint("val_accuracy", 0.75, STARTED_MS + 20, 2),)),
        EndRun(trial, "FINISHED", {"caviar.outcome": "completed", "caviar.last_epoch": "2"},
               ENDED_MS),
    ]  # fmt: skip


def _run(sink: MlflowSink, trial: str) -> dict[str, Any]:
    client = MlflowClient(sink.uri)
    run = client.get_run(sink.child_runs[trial])
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    tags = {k: v for k, v in run.data.tags.items() if k != "mlflow.parentRunId"}
    return {
        "status": run.info.status,
        "start": run.info.start_time,
        "end": run.info.end_time,
        "name": run.info.run_name,
        "params": run.data.params,
        "metrics": run.data.metrics,
        "tags": tags,
        "parent": run.data.tags["mlflow.parentRunId"] == sink.parent_run_id,
        "history": [(m.step, m.value, m.timestamp) for m in history],
    }


class _TagWrites:
    """Counts the ``log_batch`` calls of a client that write tags."""

    def __init__(self, client: MlflowClient) -> None:
        self.calls = 0
        self._log_batch = client.log_batch
        client.log_batch = self  # type: ignore[method-assign]

    def __call__(self, run_id: str, **batch: Any) -> None:
        self.calls += bool(batch.get("tags"))
        self._log_batch(run_id, **batch)


def test_a_trial_written_in_one_group_or_in_several_is_the_same_run(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "apart").mkdir()
    together, apart = _sink(tmp_path / "one"), _sink(tmp_path / "apart")
    tag_writes = _TagWrites(together.client)
    together.write_trial("0", _ops("0"))
    assert tag_writes.calls == 0  # the end tags came with the run's creation
    for op in _ops("0"):
        apart.write_trial("0", [op])
    assert _run(together, "0") == _run(apart, "0")
    run = _run(together, "0")
    assert run["status"] == "FINISHED" and run["end"] == ENDED_MS and run["parent"]
    assert run["tags"]["caviar.outcome"] == "completed"
    assert run["history"] == [(1, 0.5, STARTED_MS + 10), (2, 0.75, STARTED_MS + 20)]


def test_a_group_retried_after_its_run_was_created_still_writes_the_end_tags(
    tmp_path: Path,
) -> None:
    sink = _sink(tmp_path)
    client = sink.client
    real = client.set_terminated
    failures = [RuntimeError("the store went away after the run was created")]

    def flaky(*args: Any, **kwargs: Any) -> None:
        if failures:
            raise failures.pop()
        real(*args, **kwargs)

    client.set_terminated = flaky  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        sink.write_trial("0", _ops("0"))
    sink.write_trial("0", _ops("0"))  # the writer's retry: the same group again
    run = _run(sink, "0")
    assert run["status"] == "FINISHED"
    assert run["tags"]["caviar.outcome"] == "completed"
    assert run["history"] == [(1, 0.5, STARTED_MS + 10), (2, 0.75, STARTED_MS + 20)]
