"""The MLflow layout of a sweep; the only module that imports ``mlflow``.

One parent run per sweep, one nested child run per trial, per-epoch metrics with
``step = epoch``. All writes happen on the driver, on one background thread, in batches: a
trial's result costs the sweep loop a queue put (microseconds) instead of a round trip to the
store (6 ms on SQLite, ~60 ms over HTTP with ``log_batch``, 15x that one key at a time). A
write that fails is retried with backoff; a store that stays away does not stop the sweep,
and what could not be written is reported at the end instead of silently dropped.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import TrackingError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def absolute_uri(uri: str) -> str:
    """Pin a relative SQLite path to the cwd, so the printed UI command works from anywhere."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before any compute if an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            if response.status != 200:
                raise TrackingError(
                    f"MLflow server at {uri} answered /health with HTTP {response.status}"
                )
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise TrackingError(
                f"MLflow server at {uri} refused the request (HTTP {error.code}); "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
        raise TrackingError(f"MLflow server at {uri} answered HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(
            f"cannot reach the MLflow tracking server at {uri} ({reason}); start it, "
            "or set tracking.uri / MLFLOW_TRACKING_URI to a reachable store"
        ) from None


@dataclass
class _Op:
    """One queued write. ``trial`` names a child run not created yet (its id comes later)."""

    kind: str
    trial: str | None = None
    run_id: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)


class SweepTracker:
    """Writes one sweep to MLflow from a background thread, batching per run."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = absolute_uri(uri)
        check_reachable(self.uri)
        self._client = MlflowClient(tracking_uri=self.uri)
        try:
            found = self._client.get_experiment_by_name(experiment)
            if found is None:
                self.experiment_id = self._client.create_experiment(experiment)
            elif found.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"experiment {experiment!r} is deleted in {self.uri}; restore it "
                    "(mlflow experiments restore) or set tracking.experiment to another name"
                )
            else:
                self.experiment_id = found.experiment_id
        except MlflowException as error:
            raise TrackingError(f"MLflow store {self.uri} refused: {error.message}") from None
        self.experiment = experiment
        self.parent_run_id: str | None = None
        self._child_runs: dict[str, str] = {}
        self._queue: queue.Queue[_Op | None] = queue.Queue()
        self._undelivered: list[tuple[_Op, str]] = []
        self._thread: threading.Thread | None = None

    # --- parent run (synchronous: it must exist before any trial) ----------------------

    def start_sweep(
        self,
        run_name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
        spec_text: str,
        spec_filename: str,
    ) -> str:
        try:
            run = self._client.create_run(self.experiment_id, tags=dict(tags), run_name=run_name)
            self.parent_run_id = run.info.run_id
            self._log_params(self.parent_run_id, params)
            self._client.log_text(self.parent_run_id, spec_text, f"spec/{spec_filename}")
        except MlflowException as error:
            raise TrackingError(
                f"cannot create the sweep's run in {self.uri}: {error.message}"
            ) from None
        self._thread = threading.Thread(target=self._drain, name="caviar-mlflow", daemon=True)
        self._thread.start()
        return self.parent_run_id

    def finish_sweep(
        self, metrics: Mapping[str, float], tags: Mapping[str, str], status: str
    ) -> None:
        self.close()
        assert self.parent_run_id is not None
        self._with_retry(
            lambda: self._client.log_batch(
                self.parent_run_id,
                metrics=[Metric(k, float(v), _now_ms(), 0) for k, v in metrics.items()],
                tags=[RunTag(k, str(v)) for k, v in tags.items()],
            )
        )
        self._with_retry(lambda: self._client.set_terminated(self.parent_run_id, status))

    def log_model(self, model: Any, input_example: Any, code_dir: Path) -> str:
        """Log the best trial's network on the parent run; returns its model URI."""
        import mlflow.pytorch
        from mlflow.models import infer_signature

        assert self.parent_run_id is not None
        mlflow.set_tracking_uri(self.uri)
        output = model(_as_tensor(input_example)).detach().numpy()
        signature = infer_signature(input_example, output)
        torch_version = _torch_requirement()
        with mlflow.start_run(run_id=self.parent_run_id):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                signature=signature,
                input_example=input_example,
                pip_requirements=[torch_version],  # skips MLflow's slow requirement inference
                code_paths=[str(code_dir)],  # the model class loads without caviar installed
            )
        return str(info.model_uri)

    # --- child runs (asynchronous) -----------------------------------------------------

    def trial_started(
        self, trial: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]
    ) -> None:
        self._queue.put(
            _Op(
                "start",
                trial,
                payload={"name": run_name, "params": dict(params), "tags": dict(tags)},
            )
        )

    def trial_metrics(self, trial: str, metrics: Mapping[str, float], step: int) -> None:
        stamp = _now_ms()
        self._queue.put(
            _Op(
                "metrics",
                trial,
                payload={"metrics": [Metric(k, float(v), stamp, step) for k, v in metrics.items()]},
            )
        )

    def trial_ended(self, trial: str, tags: Mapping[str, str], status: str) -> None:
        self._queue.put(_Op("end", trial, payload={"tags": dict(tags), "status": status}))

    def child_run_id(self, trial: str) -> str | None:
        return self._child_runs.get(trial)

    def flush(self) -> None:
        """Block until every queued write has been attempted."""
        self._queue.join()

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._thread = None
        if self._undelivered:
            log.warning("%d MLflow writes could not be delivered", len(self._undelivered))

    @property
    def undelivered(self) -> list[str]:
        return [f"{op.kind} {op.trial or ''}: {reason}" for op, reason in self._undelivered]

    # --- the writer thread -------------------------------------------------------------

    def _drain(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            batch = [first]
            while True:  # take everything already waiting: that is what makes batches
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            ops = [op for op in batch if op is not None]
            stop = len(ops) != len(batch)
            try:
                self._write(ops)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _write(self, ops: list[_Op]) -> None:
        pending_metrics: dict[str, list[Metric]] = {}

        def flush_metrics() -> None:
            for trial, metrics in pending_metrics.items():
                run_id = self._child_runs.get(trial)
                if run_id is None:
                    continue
                for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                    chunk = metrics[start : start + MAX_METRICS_PER_BATCH]
                    self._deliver(
                        _Op("metrics", trial),
                        lambda r=run_id, c=chunk: self._client.log_batch(r, metrics=c),
                    )
            pending_metrics.clear()

        for op in ops:
            if op.kind == "metrics":
                pending_metrics.setdefault(op.trial or "", []).extend(op.payload["metrics"])
                continue
            flush_metrics()
            if op.kind == "start":
                self._deliver(op, lambda o=op: self._create_child(o))
            elif op.kind == "end":
                run_id = self._child_runs.get(op.trial or "")
                if run_id is not None:
                    self._deliver(op, lambda r=run_id, o=op: self._end_child(r, o))
        flush_metrics()

    def _create_child(self, op: _Op) -> None:
        assert self.parent_run_id is not None
        tags = {"mlflow.parentRunId": self.parent_run_id, **op.payload["tags"]}
        run = self._client.create_run(self.experiment_id, tags=tags, run_name=op.payload["name"])
        self._child_runs[op.trial or ""] = run.info.run_id
        self._log_params(run.info.run_id, op.payload["params"])

    def _end_child(self, run_id: str, op: _Op) -> None:
        tags = [RunTag(k, str(v)) for k, v in op.payload["tags"].items()]
        self._client.log_batch(run_id, tags=tags)
        self._client.set_terminated(run_id, op.payload["status"])

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._client.log_batch(run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])

    def _deliver(self, op: _Op, write: Callable[[], None]) -> None:
        try:
            self._with_retry(write)
        except Exception as error:  # a store that stays away must not stop the sweep
            self._undelivered.append((op, str(error)[:200]))

    @staticmethod
    def _with_retry(write: Callable[[], Any]) -> Any:
        for delay in (*RETRY_DELAYS_S, None):
            try:
                return write()
            except MlflowException as error:
                if delay is None or not _is_transient(error):
                    raise
            except OSError:
                if delay is None:
                    raise
            time.sleep(delay)
        return None


def _is_transient(error: MlflowException) -> bool:
    code = getattr(error, "error_code", "")
    return code not in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _as_tensor(array: Any) -> Any:
    import torch

    return torch.as_tensor(array)


def _torch_requirement() -> str:
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


def load_model(model_uri: str, tracking_uri: str) -> Any:
    """Load a model logged by :meth:`SweepTracker.log_model` (used by tests and reports)."""
    import mlflow.pytorch

    mlflow.set_tracking_uri(absolute_uri(tracking_uri))
    return mlflow.pytorch.load_model(model_uri, map_location="cpu")
