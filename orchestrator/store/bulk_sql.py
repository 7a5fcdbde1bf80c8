"""Many trials' writes in one transaction of MLflow's SQL store, through MLflow's own ORM models.

MLflow's public client costs a trial six store transactions (``create_run`` two, ``log_batch``
three, ``set_terminated`` one), each with its session, SQLite's three PRAGMAs and a commit: on a
sweep of many short trials the driver's writer thread spends more CPU on them than Tune's whole
loop (docs/performance.md, "Driver CPU per trial"). This writes the rows those calls write (the
run, its tags, params, metrics and latest metrics, its end) for every trial of one delivery in a
single session of the same store, with the same session factory (so the same error mapping: a
locked or unreachable database is ``TEMPORARILY_UNAVAILABLE``, which the writer retries).

It is a speed-up over MLflow's internals (``orchestrator/speedups.py``; off with
``CAVIAR_NO_SPEEDUPS=1``), and it does what the public calls do, checked row by row against
them (``tests/orchestrator/test_bulk_sql.py``):

- a new run as ``MlflowClient.create_run`` makes it: the ``mlflow.runName`` tag, the user from
  ``mlflow.user`` (else ``unknown``), the artifact URI under the experiment's location, its
  creation tags as given;
- params, metrics and tags validated (and long values cut) by MLflow's own validators, as
  ``log_batch`` does; a metric's NaN stored as 0 with ``is_nan``, an infinity as the largest
  float; repeated points of one write dropped; ``latest_metrics`` kept by (step, timestamp,
  value);
- the end as ``set_terminated``: the status checked, the end time set.

What it does not do is left to the public path (:func:`plan_write` returns None, and the sink
writes that trial with the client): reopening a run, a start whose run already exists (a
retry), a ``mlflow.runName`` tag, repeated param keys, an active model (whose metrics MLflow
also records against the model). A run found deleted, or an experiment deleted, raises
:class:`BulkRefused`, and the writer then writes each trial on its own, the public way, so that
only the trial at fault is refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import LifecycleStage, RunStatus, SourceType
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import (
    SqlExperiment,
    SqlLatestMetric,
    SqlMetric,
    SqlParam,
    SqlRun,
    SqlTag,
)
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
from mlflow.utils.uri import append_to_uri_path
from mlflow.utils.validation import (
    MAX_PARAM_VAL_LENGTH,
    _validate_metric,
    _validate_param,
    _validate_tag,
)
from sqlalchemy.exc import IntegrityError

from orchestrator.store import layout
from orchestrator.store.writer import (
    EndRun,
    LogMetrics,
    MetricPoint,
    ReopenRun,
    StartRun,
    TrialOp,
)

ARTIFACTS_FOLDER = SqlAlchemyStore.ARTIFACTS_FOLDER_NAME
LARGEST_FLOAT = 1.7976931348623157e308  # what MLflow's SQL store keeps for an infinity


class BulkRefused(MlflowException):
    """Not written, for a reason the public calls handle trial by trial: a deleted run or
    experiment (which they refuse), or rows already there (which they skip: a delivery
    repeated after it was written). Nothing of the call was written."""


@dataclass
class NewRun:
    """A run to create: ``create_run``'s arguments."""

    name: str
    started_ms: int
    tags: dict[str, str]


@dataclass
class RunWrite:
    """One trial's share of a delivery: a run to create or an existing run, then its params,
    metrics and tags, and its end (status, end time) if it ends."""

    trial: str
    run_id: str | None
    new: NewRun | None = None
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[MetricPoint] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    end: tuple[str, int] | None = None


class BulkSqlWriter:
    """Writes :class:`RunWrite` s into one experiment of a SQL store, one transaction a call."""

    def __init__(self, store: SqlAlchemyStore, experiment_id: str, artifact_location: str) -> None:
        self._store = store
        self._experiment_id = int(experiment_id)
        self._artifact_location = artifact_location

    @classmethod
    def for_store(cls, store: Any, experiment_id: str, artifact_location: str) -> BulkSqlWriter:
        """A writer for ``store`` when it is one of MLflow's SQL stores (else ValueError)."""
        if not isinstance(store, SqlAlchemyStore):
            raise ValueError(f"not a SQL store: {type(store).__name__}")
        return cls(store, experiment_id, artifact_location)

    def write(self, writes: Sequence[RunWrite]) -> dict[str, str]:
        """Write ``writes`` in one transaction; returns the run id of each trial whose run it
        created. Nothing is written when it raises."""
        prepared = [_validated(write) for write in writes]
        try:
            return self._write(prepared)
        except MlflowException as error:
            if isinstance(error.__cause__, IntegrityError):  # a point already there: a retry
                raise BulkRefused(f"rows already written: {error.__cause__}") from error
            raise

    def _write(self, prepared: Sequence[RunWrite]) -> dict[str, str]:
        created: dict[str, str] = {}
        with self._store.ManagedSessionMaker(read_only=False) as session:
            self._check_experiment(session)
            existing = self._existing_runs(session, [w.run_id for w in prepared if w.run_id])
            latest = self._latest_metrics(session, list(existing))
            for write in prepared:
                if write.new is not None:
                    run_id = uuid.uuid4().hex
                    run = self._new_run(run_id, write)
                    session.add(run)
                    created[write.trial] = run_id
                else:
                    assert write.run_id is not None
                    run_id = write.run_id
                    run = existing[run_id]
                    for key, value in write.tags.items():
                        session.merge(SqlTag(run_uuid=run_id, key=key, value=value))
                params = write.params.items()
                session.add_all(SqlParam(run_uuid=run_id, key=k, value=v) for k, v in params)
                metrics = _metric_rows(run_id, write.metrics)
                session.add_all(metrics)
                _update_latest(session, latest.setdefault(run_id, {}), run_id, metrics)
                if write.end is not None:
                    run.status, run.end_time = write.end
        return created

    # --- the rows ----------------------------------------------------------------------------

    def _new_run(self, run_id: str, write: RunWrite) -> SqlRun:
        new = write.new
        assert new is not None
        tags = {**new.tags, MLFLOW_RUN_NAME: new.name, **write.tags}
        status, ended = write.end if write.end is not None else ("RUNNING", None)
        run = SqlRun(
            name=new.name,
            artifact_uri=append_to_uri_path(self._artifact_location, run_id, ARTIFACTS_FOLDER),
            run_uuid=run_id,
            experiment_id=self._experiment_id,
            source_type=SourceType.to_string(SourceType.UNKNOWN),
            source_name="",
            entry_point_name="",
            user_id=new.tags.get(MLFLOW_USER, "unknown"),
            status=status,
            start_time=new.started_ms,
            end_time=ended,
            deleted_time=None,
            source_version="",
            lifecycle_stage=LifecycleStage.ACTIVE,
        )
        run.tags = [SqlTag(key=key, value=value) for key, value in tags.items()]
        return run

    def _check_experiment(self, session: Any) -> None:
        stage = (
            session.query(SqlExperiment.lifecycle_stage)
            .filter(SqlExperiment.experiment_id == self._experiment_id)
            .scalar()
        )
        if stage != LifecycleStage.ACTIVE:
            raise BulkRefused(f"experiment {self._experiment_id} is {stage or 'missing'}")

    @staticmethod
    def _existing_runs(session: Any, run_ids: list[str]) -> dict[str, SqlRun]:
        if not run_ids:
            return {}
        runs = {r.run_uuid: r for r in session.query(SqlRun).filter(SqlRun.run_uuid.in_(run_ids))}
        for run_id in run_ids:
            run = runs.get(run_id)
            if run is None or run.lifecycle_stage != LifecycleStage.ACTIVE:
                raise BulkRefused(f"run {run_id} is not an active run")
        return runs

    @staticmethod
    def _latest_metrics(session: Any, run_ids: list[str]) -> dict[str, dict[str, SqlLatestMetric]]:
        latest: dict[str, dict[str, SqlLatestMetric]] = {run_id: {} for run_id in run_ids}
        if run_ids:
            query = session.query(SqlLatestMetric).filter(SqlLatestMetric.run_uuid.in_(run_ids))
            for row in query:
                latest[row.run_uuid][row.key] = row
        return latest


def _validated(write: RunWrite) -> RunWrite:
    """``write`` as ``log_batch`` would take it: keys checked, long values cut, the status
    checked; MlflowException as MLflow raises it."""
    params = {p.key: p.value for p in (_validate_param(k, v) for k, v in write.params.items())}
    tags = {t.key: t.value for t in (_validate_tag(k, v) for k, v in write.tags.items())}
    for index, point in enumerate(write.metrics):
        path = f"metrics[{index}]"
        _validate_metric(point.key, point.value, point.timestamp_ms, point.step, path)
    end = write.end
    if end is not None:
        end = (RunStatus.to_string(RunStatus.from_string(end[0])), end[1])
    return RunWrite(write.trial, write.run_id, write.new, params, list(write.metrics), tags, end)


def _metric_rows(run_id: str, points: Sequence[MetricPoint]) -> list[SqlMetric]:
    """One row per distinct point, in order: NaN as 0 with ``is_nan``, infinities as the
    largest float (MLflow's ``sanitize_metric_value``)."""
    rows: list[SqlMetric] = []
    seen: set[tuple[str, int, int, float, bool]] = set()
    for point in points:
        value = float(point.value)
        is_nan = value != value
        if is_nan:
            value = 0.0
        elif value in (float("inf"), float("-inf")):
            value = LARGEST_FLOAT if value > 0 else -LARGEST_FLOAT
        identity = (point.key, int(point.timestamp_ms), int(point.step), value, is_nan)
        if identity in seen:
            continue
        seen.add(identity)
        rows.append(
            SqlMetric(
                run_uuid=run_id,
                key=point.key,
                value=value,
                timestamp=int(point.timestamp_ms),
                step=int(point.step),
                is_nan=is_nan,
            )
        )
    return rows


def _order(metric: SqlMetric | SqlLatestMetric) -> tuple[int, int, float]:
    """Which of two points of a key is the latest (MLflow's ``_compare_metrics``)."""
    return (metric.step, metric.timestamp, metric.value)


def _update_latest(
    session: Any, latest: dict[str, SqlLatestMetric], run_id: str, rows: Sequence[SqlMetric]
) -> None:
    """Keep each key's latest point by (step, timestamp, value), as MLflow's store does."""
    for row in rows:
        current = latest.get(row.key)
        if current is None:
            current = SqlLatestMetric(
                run_uuid=run_id,
                key=row.key,
                value=row.value,
                timestamp=row.timestamp,
                step=row.step,
                is_nan=row.is_nan,
            )
            latest[row.key] = current
            session.add(current)
        elif _order(row) > _order(current):
            current.value, current.step = row.value, row.step
            current.timestamp, current.is_nan = row.timestamp, row.is_nan


def plan_write(
    trial: str, ops: Sequence[TrialOp], run_id: str | None, parent_run_id: str
) -> RunWrite | None:
    """What ``MlflowSink.write_trial`` writes for one trial's ``ops`` (``run_id``: its run, if
    it has one), as a :class:`RunWrite`; None when it needs the public path: a reopened run, a
    start whose run exists (a retry) or sent twice, no run to write to, or the run name as a
    tag."""
    if any(isinstance(op, ReopenRun) for op in ops):
        return None
    starts = [op for op in ops if isinstance(op, StartRun)]
    ends = [op for op in ops if isinstance(op, EndRun)]
    if (starts and (run_id is not None or len(starts) > 1)) or (not starts and run_id is None):
        return None
    end_tags = {k: str(v) for end in ends for k, v in end.tags.items()}
    write = RunWrite(trial, run_id)
    if starts:  # as write_trial creates it: the end tags with the run, the params after
        first = starts[0]
        tags = {layout.PARENT_RUN: parent_run_id, **first.tags, **end_tags}
        write.new = NewRun(first.name, first.started_ms, tags)
        write.params = {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in first.params.items()}
    else:
        write.tags = end_tags
    if layout.RUN_NAME in {*write.tags, *(write.new.tags if write.new else ())}:
        return None
    write.metrics = [point for op in ops if isinstance(op, LogMetrics) for point in op.metrics]
    if ends:
        write.end = (ends[-1].status, ends[-1].ended_ms)
    return write


def active_model_set() -> bool:
    """Whether MLflow would link this process's metrics to an active model (then the
    public path, which records them against it too)."""
    from mlflow.tracking.fluent import get_active_model_id

    return get_active_model_id() is not None
