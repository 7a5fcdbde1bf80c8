"""The one-transaction writer (``store/bulk_sql.py``) writes, row for row, what MLflow's public
calls write for the same ops, on a real SQLite MLflow store: the runs, tags, params, metrics
and latest metrics of every trial, however the ops arrive; a repeated delivery changes
nothing; a trial the public calls would refuse is refused alone; with the speed-ups off the
public calls write."""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from postgres import postgres_server, unavailable

from orchestrator.store.bulk_sql import BulkSqlWriter
from orchestrator.store.mlflow_sink import MlflowSink
from orchestrator.store.reader import metric_histories
from orchestrator.store.writer import (
    BatchWriter,
    EndRun,
    LogMetrics,
    MetricPoint,
    StartRun,
    TrialOp,
)

# MLflow puts a SQLite store's artifacts in ./mlruns of the working directory.
pytestmark = pytest.mark.usefixtures("in_tmp_path")


T0 = 1_700_000_000_000
LONG = "x" * 9000  # over MLflow's param (6000) and tag (8000) lengths: cut, not refused


@pytest.fixture(autouse=True)
def _speed_ups_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with the speed-ups on, whatever the shell set; the ones about the
    public path turn them off themselves."""
    monkeypatch.delenv("CAVIAR_NO_SPEEDUPS", raising=False)


def _sink(folder: Path) -> MlflowSink:
    folder.mkdir()
    return _sink_at(f"sqlite:///{folder / 'mlflow.db'}", "bulk")


def _sink_at(uri: str, experiment: str) -> MlflowSink:
    sink = MlflowSink(uri, experiment)
    sink.open()
    sink.create_parent("sweep", {}, {"x": 1}, "name: x\n", "x.yaml")
    return sink


def _start(trial: str, **params: Any) -> StartRun:
    tags = {"caviar.trial_index": trial, "mlflow.user": "someone" if trial == "b" else ""}
    tags = {k: v for k, v in tags.items() if v}
    return StartRun(trial, f"trial-{trial}", {"lr": 0.1, "layers": 2, **params}, tags, T0)


def _points(trial: str, *points: tuple[str, float, int, int]) -> LogMetrics:
    return LogMetrics(trial, tuple(MetricPoint(k, v, T0 + ms, step) for k, v, ms, step in points))


def _end(trial: str, status: str = "FINISHED", **tags: str) -> EndRun:
    return EndRun(trial, status, {"caviar.outcome": status.lower(), **tags}, T0 + 5000)


# Three deliveries of four trials: one that starts and ends in one delivery, one over all
# three (NaN, infinities, a point sent twice, a long tag at its end), one whose later epoch
# comes with a lower step (latest_metrics keeps the higher), one still running at the end.
DELIVERIES: list[list[TrialOp]] = [
    [
        _start("a", note=LONG),
        _points("a", ("val_accuracy", 0.5, 10, 1), ("val_loss", 1.5, 10, 1)),
        _end("a"),
        _start("b"),
        _start("c"),
        _points("c", ("val_accuracy", 0.7, 10, 2)),
    ],
    [
        _points("b", ("val_accuracy", float("nan"), 20, 1), ("val_loss", float("inf"), 20, 1)),
        _points("b", ("val_accuracy", 0.25, 30, 2), ("val_accuracy", 0.25, 30, 2)),
        _points("c", ("val_accuracy", 0.6, 40, 1), ("val_loss", float("-inf"), 40, 1)),
        _start("d"),
    ],
    [
        _points("b", ("val_accuracy", 0.75, 50, 3)),
        _end("b", "FAILED", **{"caviar.error": LONG}),
        _end("c", "KILLED"),
        _points("d", ("val_accuracy", 0.1, 60, 1)),
    ],
]


def _groups(ops: Sequence[TrialOp]) -> dict[str, list[TrialOp]]:
    groups: dict[str, list[TrialOp]] = {}
    for op in ops:
        groups.setdefault(op.trial, []).append(op)
    return groups


def _write_public(sink: MlflowSink, deliveries: Sequence[Sequence[TrialOp]]) -> None:
    for delivery in deliveries:
        for trial, ops in _groups(delivery).items():
            sink.write_trial(trial, ops)


def _write_together(sink: MlflowSink, deliveries: Sequence[Sequence[TrialOp]]) -> None:
    for delivery in deliveries:
        sink.write_trials(_groups(delivery))


def _dump(sink: MlflowSink) -> dict[str, Any]:
    """Every row of the sink's child runs, keyed by trial, with the run ids, the parent's id
    and the experiment replaced by placeholders (two experiments of one store compare)."""
    ids = {run_id: trial for trial, run_id in sink.child_runs.items()}
    location = sink.client.get_experiment(sink.experiment_id).artifact_location
    names = {sink.parent_run_id or "": "PARENT", location: "EXPERIMENT"}
    engine = sqlalchemy.create_engine(sink.uri)
    dump: dict[str, Any] = {}
    try:
        with engine.connect() as conn:
            for table in ("runs", "tags", "params", "metrics", "latest_metrics"):
                rows = []
                for row in conn.execute(sqlalchemy.text(f"SELECT * FROM {table}")):  # noqa: S608
                    record = dict(row._mapping)
                    run_id = record.pop("run_uuid")
                    record.pop("experiment_id", None)
                    if run_id not in ids:
                        continue  # the parent, or another experiment's run
                    for key, value in record.items():
                        if isinstance(value, str):
                            for text, name in {**names, run_id: "RUN"}.items():
                                value = value.replace(text, name)
                            record[key] = value
                    rows.append((ids[run_id], sorted(record.items(), key=str)))
                dump[table] = sorted(rows, key=repr)
    finally:
        engine.dispose()
    return dump


class _Sessions:
    """Counts the write sessions MLflow's store opens."""

    def __init__(self, sink: MlflowSink, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        store = sink.client._tracking_client.store
        maker = store.ManagedSessionMaker

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += bool(kwargs.get("read_only") is False)
            return maker(*args, **kwargs)

        monkeypatch.setattr(store, "ManagedSessionMaker", counted)


def test_trials_written_together_are_the_rows_the_public_calls_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    public, together = _sink(tmp_path / "public"), _sink(tmp_path / "together")
    _write_public(public, DELIVERIES)
    sessions = _Sessions(together, monkeypatch)
    _write_together(together, DELIVERIES)
    assert sessions.count == len(DELIVERIES)  # one transaction per delivery
    expected, got = _dump(public), _dump(together)
    assert [len(expected[t]) for t in expected] == [len(got[t]) for t in got]
    for table in expected:
        assert got[table] == expected[table], table
    assert together.ended == public.ended == {"a", "b", "c"}
    assert set(together.child_runs) == {"a", "b", "c", "d"}
    # what the comparison covers, so that it cannot pass on empty tables
    runs = dict(got["runs"])
    assert dict(runs["b"])["status"] == "FAILED" and dict(runs["b"])["user_id"] == "someone"
    assert dict(runs["d"])["status"] == "RUNNING" and dict(runs["d"])["end_time"] is None
    latest = {(t, dict(r)["key"]): dict(r) for t, r in got["latest_metrics"]}
    assert latest[("c", "val_accuracy")]["value"] == 0.7  # step 2 stays the latest
    assert latest[("b", "val_loss")]["value"] == 1.7976931348623157e308
    nan = [dict(r) for t, r in got["metrics"] if t == "b" and dict(r)["is_nan"]]
    assert len(nan) == 1 and nan[0]["value"] == 0.0
    assert len([1 for t, r in got["metrics"] if t == "b"]) == 4  # the repeated point once
    params = {(t, dict(r)["key"]): dict(r)["value"] for t, r in got["params"]}
    assert len(params[("a", "note")]) == 6000


def test_a_delivery_repeated_after_it_was_written_changes_nothing(tmp_path: Path) -> None:
    public, together = _sink(tmp_path / "public"), _sink(tmp_path / "together")
    _write_public(public, DELIVERIES)
    for delivery in DELIVERIES:  # each delivered twice: a retry after a lost reply
        together.write_trials(_groups(delivery))
        together.write_trials(_groups(delivery))
    assert _dump(together) == _dump(public)


def test_a_trial_the_store_refuses_is_refused_alone(tmp_path: Path) -> None:
    sink = _sink(tmp_path / "store")
    sink.write_trials(_groups([_start("a"), _start("b")]))
    sink.delete_run(sink.child_runs["a"])  # someone deleted trial a's run mid-sweep
    writer = BatchWriter(sink, batch_interval_s=0.0)
    for op in [_points("a", ("val_accuracy", 0.5, 10, 1)), _end("a"), _start("c"), _end("b")]:
        writer.submit(op)
    writer.close()
    refused = writer.undelivered
    assert {u.op.trial for u in refused} == {"a"} and len(refused) == 2
    assert "active" in refused[0].reason
    assert sink.ended == {"b"} and "c" in sink.child_runs


def test_the_public_calls_write_with_the_speed_ups_off_or_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = _sink(tmp_path / "public")
    _write_public(public, DELIVERIES)
    monkeypatch.setenv("CAVIAR_NO_SPEEDUPS", "1")
    off = _sink(tmp_path / "off")
    sessions = _Sessions(off, monkeypatch)
    _write_together(off, DELIVERIES)
    assert sessions.count > 3 * len(DELIVERIES)  # the public calls' several per trial
    assert _dump(off) == _dump(public)
    with pytest.raises(ValueError, match="not a SQL store"):
        BulkSqlWriter.for_store(object(), "1", "/tmp")


def test_the_report_reads_every_run_history_in_one_query_as_run_by_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = _sink(tmp_path / "store")
    _write_together(sink, DELIVERIES)
    run_ids = sorted(sink.child_runs.values())
    sessions = _Sessions(sink, monkeypatch)
    reads = 0
    original = sink.client.get_metric_history

    def counted(run_id: str, key: str) -> Any:
        nonlocal reads
        reads += 1
        return original(run_id, key)

    monkeypatch.setattr(sink.client, "get_metric_history", counted)
    together = metric_histories(sink.client, run_ids, "val_accuracy")
    assert reads == 0 and sessions.count == 0
    monkeypatch.setenv("CAVIAR_NO_SPEEDUPS", "1")
    one_by_one = metric_histories(sink.client, run_ids, "val_accuracy")
    assert reads == len(run_ids)

    def points(histories: dict[str, list[Any]]) -> dict[str, list[tuple[Any, ...]]]:
        return {
            run: sorted((m.step, m.timestamp, repr(m.value)) for m in metrics)
            for run, metrics in histories.items()
        }

    assert points(together) == points(one_by_one)
    assert sum(len(v) for v in together.values()) == 7  # a: 1, b: 3 (one NaN), c: 2, d: 1


def test_on_postgresql_the_rows_are_the_public_calls_rows_too() -> None:
    """The same comparison on a PostgreSQL store (SQLAlchemy's other dialect, as docker-compose
    deploys MLflow's): two experiments of one database, written each way."""
    reason = unavailable()  # in CI (CAVIAR_TEST_REQUIRE_POSTGRES=1) a missing server fails
    if reason is not None:
        pytest.skip(reason)  # a developer's machine without PostgreSQL's server binaries
    with postgres_server() as server:
        password = urllib.parse.quote(server.password, safe="")
        uri = (
            f"postgresql+psycopg2://{server.user}:{password}@127.0.0.1:{server.port}"
            f"/{server.database}"
        )
        public, together = _sink_at(uri, "public"), _sink_at(uri, "together")
        _write_public(public, DELIVERIES)
        _write_together(together, DELIVERIES)
        expected, got = _dump(public), _dump(together)
        assert sum(len(rows) for rows in got.values()) > 30
        for table in expected:
            assert got[table] == expected[table], table
