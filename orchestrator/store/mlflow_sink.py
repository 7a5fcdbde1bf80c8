"""The MLflow layout of a sweep: the sink the batched writer delivers to, and the parent run.

One parent run per sweep, one nested child run per trial (``mlflow.parentRunId``), per-epoch
metrics with ``step = epoch``. A trial's writes cost at most three calls however many epochs
they hold: create the run, ``log_batch`` (chunked to MLflow's per-call limits) and
``set_terminated``; each is safe to repeat, which the writer's retries rely on.

Writes raise :class:`~orchestrator.store.writer.TransientSinkError` when the store is away or
busy (``_is_transient``), and the store's own error when it refuses. Reads raise the store's
own errors. Constructing a sink does no I/O: :meth:`MlflowSink.open` reaches the store.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from orchestrator import speedups
from orchestrator.errors import TrackingError
from orchestrator.store import layout
from orchestrator.store.bulk_sql import (
    BulkRefused,
    BulkSqlWriter,
    RunWrite,
    active_model_set,
    plan_write,
)
from orchestrator.store.sqlite_seed import seed_new_sqlite_store
from orchestrator.store.uri import check_reachable
from orchestrator.store.writer import (
    EndRun,
    LogMetrics,
    MetricPoint,
    ParentUpdate,
    ReopenRun,
    StartRun,
    TransientSinkError,
    TrialOp,
    epoch_ms,
)

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000

TRANSIENT_HINTS = (
    "connection",
    "timed out",
    "timeout",
    "max retries",
    "database is locked",
    "temporarily",
    "unavailable",
    "bad gateway",
    " 502",
    " 503",
    " 504",
)

P = ParamSpec("P")
R = TypeVar("R")


def _is_transient(error: MlflowException) -> bool:
    """Worth retrying: the store is away or busy. Anything else is refused for good, recorded
    and reported; retrying it would only stall the writer until the flush deadline."""
    if getattr(error, "error_code", "") == "TEMPORARILY_UNAVAILABLE":
        return True
    message = str(getattr(error, "message", error)).lower()
    return any(hint in message for hint in TRANSIENT_HINTS)


@contextmanager
def _transient_marked() -> Iterator[None]:
    """Re-raise a store that is away or busy as TransientSinkError (from the original)."""
    try:
        yield
    except MlflowException as error:
        if _is_transient(error):
            raise TransientSinkError(error.message) from error
        raise
    except OSError as error:  # the connection itself (ConnectionError is an OSError)
        raise TransientSinkError(str(error)) from error


def _write(method: Callable[P, R]) -> Callable[P, R]:
    """A write: its transient failures are marked for the writer's (or a caller's) retry."""

    @functools.wraps(method)
    def marked(*args: P.args, **kwargs: P.kwargs) -> R:
        with _transient_marked():
            return method(*args, **kwargs)

    return marked


@dataclass(frozen=True)
class ChildRun:
    """A trial's run as the store holds it; ``trial_key`` is its ``caviar.trial_index`` tag."""

    run_id: str
    trial_key: str | None
    status: str


class MlflowSink:
    """One sweep's runs in one MLflow experiment.

    ``child_runs`` maps each trial's key to the run written for it (a resumed sweep's are read
    back in :meth:`resume`); ``ended`` holds the trials whose run this sink has ended. The
    writer thread updates both; other threads only read them.
    """

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment = experiment
        self.parent_run_id: str | None = None
        self.child_runs: dict[str, str] = {}
        self.ended: set[str] = set()
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._bulk: BulkSqlWriter | None = None
        self._bulk_decided = False

    # --- the store and the parent run (synchronous) -----------------------------------------

    def open(self) -> None:
        """Reach the store and find (or create) the experiment; later calls do nothing.

        Raises TrackingError when the store does not answer, refuses, or holds the experiment
        deleted.
        """
        if self._client is not None:
            return
        check_reachable(self.uri)
        seed_new_sqlite_store(self.uri)  # a new SQLite store without MLflow's migrations
        client = MlflowClient(tracking_uri=self.uri)
        try:
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                experiment_id = client.create_experiment(self.experiment)
            elif found.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"experiment {self.experiment!r} is deleted in {self.uri}; restore it "
                    "(mlflow experiments restore) or set tracking.experiment to another name"
                )
            else:
                experiment_id = found.experiment_id
        except MlflowException as error:
            raise TrackingError(f"MLflow store {self.uri} refused: {error.message}") from None
        self._experiment_id = experiment_id
        self._client = client

    @property
    def experiment_id(self) -> str:
        self.open()
        assert self._experiment_id is not None
        return self._experiment_id

    @property
    def client(self) -> MlflowClient:
        """The store's client, once :meth:`open` has succeeded."""
        if self._client is None:
            raise RuntimeError("MlflowSink.open() has not been called")
        return self._client

    def create_parent(
        self,
        run_name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
        spec_text: str,
        spec_filename: str,
    ) -> str:
        """Create the sweep's run, with its params and its spec as an artifact."""
        client = self.client
        try:
            run = client.create_run(self.experiment_id, tags=dict(tags), run_name=run_name)
            self.parent_run_id = run.info.run_id
            self._log_params(self.parent_run_id, params)
            client.log_text(self.parent_run_id, spec_text, f"spec/{spec_filename}")
        except MlflowException as error:
            raise TrackingError(
                f"cannot create the sweep's run in {self.uri}: {error.message}"
            ) from None
        return self.parent_run_id

    def resume(self, parent_run_id: str) -> dict[str, int]:
        """Continue an interrupted sweep's run; returns each trial's last logged epoch.

        Children are known by their trial index (``caviar.trial_index``), which a trial
        keeps when the resumed sweep runs it under a new Ray trial id.
        """
        client = self.client
        last_steps: dict[str, int] = {}
        try:
            parent = client.get_run(parent_run_id)
            self.parent_run_id = parent.info.run_id
            client.update_run(parent_run_id, status="RUNNING")
            for child in sorted(self._search_children(), key=lambda c: c.info.start_time or 0):
                key = child.data.tags.get(layout.TRIAL_INDEX)
                if key is None or key in self.child_runs:
                    continue  # a duplicate (a create retried after a lost reply) is left out
                self.child_runs[key] = child.info.run_id
                history = client.get_metric_history(child.info.run_id, "epoch_seconds")
                last_steps[key] = max((int(m.step) for m in history), default=0)
        except MlflowException as error:
            raise TrackingError(
                f"cannot continue sweep run {parent_run_id} in {self.uri}: {error.message}"
            ) from None
        return last_steps

    def delete_stamped(self, run_id: str) -> int:
        """Delete every run stamped with this sweep's (session's) id; returns how many."""
        try:
            runs = self.client.search_runs(
                [self.experiment_id], filter_string=layout.stamped_filter(run_id)
            )
            for run in runs:
                self.client.delete_run(run.info.run_id)
        except MlflowException as error:
            raise TrackingError(
                f"cannot discard run {run_id}'s parent in {self.uri}: {error.message}"
            ) from None
        return len(runs)

    def children(self) -> list[ChildRun]:
        """Every run the store holds under the parent, duplicates included."""
        return [
            ChildRun(run.info.run_id, run.data.tags.get(layout.TRIAL_INDEX), run.info.status)
            for run in self._search_children()
        ]

    @_write
    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    @_write
    def terminate_run(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    @_write
    def log_summary(self, metrics: Mapping[str, float], tags: Mapping[str, str]) -> None:
        """The sweep's totals on the parent run (step 0, stamped now)."""
        assert self.parent_run_id is not None
        now = epoch_ms()
        self.client.log_batch(
            self.parent_run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )

    @_write
    def end_parent(self, status: str) -> None:
        assert self.parent_run_id is not None
        self.client.set_terminated(self.parent_run_id, status)

    @_write
    def log_parent_file(self, local_path: Path, artifact_dir: str) -> None:
        assert self.parent_run_id is not None
        self.client.log_artifact(self.parent_run_id, str(local_path), artifact_dir)

    def log_model(self, model: Any, input_example: Any, code_paths: Sequence[Path]) -> str:
        """Log the best trial's network on the parent run; returns its model URI."""
        import mlflow.pytorch
        from mlflow.models import infer_signature

        assert self.parent_run_id is not None
        mlflow.set_tracking_uri(self.uri)
        output = model(_as_tensor(input_example)).detach().numpy()
        signature = infer_signature(input_example, output)
        torch_version = _torch_requirement()
        # Its warning about pickles is for models from strangers; this one is the sweep's own.
        flavour_log = logging.getLogger("mlflow.pytorch")
        level = flavour_log.level
        flavour_log.setLevel(logging.ERROR)
        try:
            with mlflow.start_run(run_id=self.parent_run_id):
                info = mlflow.pytorch.log_model(
                    model,
                    name="model",
                    signature=signature,
                    input_example=input_example,
                    pip_requirements=[torch_version],  # skips MLflow's slow requirement inference
                    # The model class loads without caviar installed (or the user's folder).
                    code_paths=[str(path) for path in code_paths],
                    # MLflow 3's default, "pt2", runs torch.export: it imports torch's whole
                    # compiler stack and traces the network, 1.5-2 s at the end of every sweep.
                    # The pickled module loads with the code logged beside it.
                    serialization_format="pickle",
                )
        finally:
            flavour_log.setLevel(level)
        return str(info.model_uri)

    # --- the Sink the batched writer delivers to ---------------------------------------------

    @_write
    def write_trial(self, trial: str, ops: Sequence[TrialOp]) -> None:
        """Create (or reopen) the trial's run, log its params, metrics and end tags in
        ``log_batch`` calls, and end it if an :class:`EndRun` is among ``ops``."""
        assert self.parent_run_id is not None
        client = self.client
        starts = [op for op in ops if isinstance(op, StartRun)]
        ends = [op for op in ops if isinstance(op, EndRun)]
        reopens = [op for op in ops if isinstance(op, ReopenRun)]
        end_tags_written = False
        if starts and trial not in self.child_runs:
            first = starts[0]
            tags = {layout.PARENT_RUN: self.parent_run_id, **first.tags}
            if not reopens:
                # A trial that starts and ends in one batch gets its end tags with its run:
                # the store ends up the same, and log_batch skips a transaction. A retry
                # after the run exists logs them with log_batch again (end_tags_written is
                # only true for the call that created the run).
                tags.update((k, str(v)) for end in ends for k, v in end.tags.items())
                end_tags_written = True
            run = client.create_run(
                self.experiment_id, start_time=first.started_ms, tags=tags, run_name=first.name
            )
            self.child_runs[trial] = run.info.run_id
        run_id = self.child_runs.get(trial)
        if run_id is None:
            raise MlflowException(f"no run for trial {trial}", error_code="INVALID_STATE")
        reopened = bool(reopens)
        if reopened and not ends:
            client.update_run(run_id, status="RUNNING")
        params = [_param(k, v) for op in [*starts, *reopens] for k, v in op.params.items()]
        metrics = [
            _metric(point) for op in ops if isinstance(op, LogMetrics) for point in op.metrics
        ]
        tagged = [*reopens] if end_tags_written else [*reopens, *ends]
        tags = [RunTag(k, str(v)) for op in tagged for k, v in op.tags.items()]
        for call in _batches(params, metrics, tags):
            client.log_batch(run_id, **call)
        if ends:
            end = ends[-1]
            client.set_terminated(run_id, end.status, end_time=end.ended_ms)
            self.ended.add(trial)
        elif starts or reopened:
            self.ended.discard(trial)

    @_write
    def write_trials(self, groups: Mapping[str, Sequence[TrialOp]]) -> None:
        """Write several trials' ops: in one transaction of a SQL store those that
        ``bulk_sql.py`` can write (a speed-up), the others one trial at a time as
        :meth:`write_trial` does. Safe to repeat whole: a run this created is then an existing
        run, and a start for it goes the public way, which takes repeated writes."""
        assert self.parent_run_id is not None
        bulk = self._bulk_writer()
        planned: list[RunWrite] = []
        rest: list[str] = []
        for trial, ops in groups.items():
            write = None
            if bulk is not None:
                write = plan_write(trial, ops, self.child_runs.get(trial), self.parent_run_id)
            if write is None:
                rest.append(trial)
            else:
                planned.append(write)
        if planned:
            assert bulk is not None
            try:
                self.child_runs.update(bulk.write(planned))
            except BulkRefused:  # nothing written: the public calls say which trial, if any
                rest.extend(write.trial for write in planned)
                planned = []
            for write in planned:
                if write.end is not None:
                    self.ended.add(write.trial)
                elif write.new is not None:
                    self.ended.discard(write.trial)
        for trial in rest:
            self.write_trial(trial, groups[trial])

    def _bulk_writer(self) -> BulkSqlWriter | None:
        """The one-transaction writer, where the store is one of MLflow's SQL stores and the
        speed-ups are on; None where the public path must write (a tracking server, an active
        model, ``CAVIAR_NO_SPEEDUPS``)."""
        if not speedups.enabled() or active_model_set():
            return None
        if not self._bulk_decided:
            store = self.client._tracking_client.store  # private: speedups.py lists it
            try:
                location = self.client.get_experiment(self.experiment_id).artifact_location
                self._bulk = BulkSqlWriter.for_store(store, self.experiment_id, location)
            except ValueError:
                self._bulk = None
            self._bulk_decided = True
        return self._bulk

    @_write
    def write_parent(self, update: ParentUpdate) -> None:
        """Add a parent update's params, tags, metrics and JSON artifacts to the parent run."""
        assert self.parent_run_id is not None
        self._log_params(self.parent_run_id, update.params)
        tags = [RunTag(k, str(v)) for k, v in update.tags.items()]
        metrics = [_metric(point) for point in update.metrics]
        if tags or metrics:
            self.client.log_batch(self.parent_run_id, metrics=metrics, tags=tags)
        for artifact_file, obj in update.json_artifacts.items():
            self.client.log_dict(self.parent_run_id, obj, artifact_file)

    # --- helpers ----------------------------------------------------------------------------

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [_param(k, v) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])

    def _search_children(self) -> list[Any]:
        assert self.parent_run_id is not None
        return list(
            self.client.search_runs(
                [self.experiment_id],
                filter_string=layout.children_filter(self.parent_run_id),
                max_results=50_000,
            )
        )


def _param(key: str, value: Any) -> Param:
    """MLflow caps a param's length; a longer value is cut, not refused."""
    return Param(key, str(value)[:MAX_PARAM_VAL_LENGTH])


def _metric(point: MetricPoint) -> Metric:
    return Metric(point.key, point.value, point.timestamp_ms, point.step)


def _batches(
    params: list[Param], metrics: list[Metric], tags: list[RunTag]
) -> list[dict[str, Any]]:
    """Split one run's writes into ``log_batch`` calls within MLflow's per-call limits."""
    calls: list[dict[str, Any]] = []
    while params or metrics or tags:
        p, params = params[:MAX_PARAMS_PER_BATCH], params[MAX_PARAMS_PER_BATCH:]
        t, tags = tags[:MAX_TAGS_PER_BATCH], tags[MAX_TAGS_PER_BATCH:]
        room = MAX_ENTITIES_PER_BATCH - len(p) - len(t)
        m, metrics = (
            metrics[: min(room, MAX_METRICS_PER_BATCH)],
            metrics[min(room, MAX_METRICS_PER_BATCH) :],
        )
        calls.append({"params": p, "metrics": m, "tags": t})
    return calls


def _as_tensor(array: Any) -> Any:
    import torch

    return torch.as_tensor(array)


def _torch_requirement() -> str:
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"
