"""The MLflow layout of a sweep; the only module that imports ``mlflow``.

One parent run per sweep, one nested child run per trial, per-epoch metrics with
``step = epoch``. All writes happen on the driver, on one background thread, in batches: a
trial's result costs the sweep loop a queue put (microseconds) instead of a round trip to the
store (``log_batch`` is an order of magnitude cheaper than one key at a time:
docs/performance.md). A
write that fails is retried with backoff; a store that stays away does not stop the sweep,
and what could not be written is reported at the end instead of silently dropped.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orchestrator.environment import apply_environment_defaults
from orchestrator.errors import TrackingError
from orchestrator.store.history import SweepHistory
from orchestrator.store.sqlite_seed import seed_new_sqlite_store
from orchestrator.trials import Trial, TrialState

apply_environment_defaults()  # before MLflow is imported

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_PARAM_LENGTH = 6000
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def ui_base(uri: str) -> str:
    """Where the MLflow UI for this store answers (the address ``ui_command`` serves)."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return "http://127.0.0.1:5000"


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
        seed_new_sqlite_store(self.uri)  # a new SQLite store without MLflow's migrations
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
        self.flush_timeout_s = float(os.environ.get("CAVIAR_TRACKING_FLUSH_TIMEOUT_S", "300"))
        self._child_runs: dict[str, str] = {}
        self._ended: set[str] = set()  # trials whose run this tracker has ended
        self._resumed = False
        self._had_errors = False  # any write failed, even if a retry then succeeded
        self._last_step: dict[str, int] = {}
        self._queue: queue.Queue[_Op | None] = queue.Queue()
        self._backlog: deque[_Op] = deque()
        self._undelivered: list[tuple[_Op, str]] = []
        self._thread: threading.Thread | None = None
        self._hurry = threading.Event()  # set: write without waiting for a batch to form
        self._closed = False
        # Wait this long after a write arrives before writing: a second of results per trial
        # costs one transaction instead of one per epoch.
        self.batch_interval_s = float(os.environ.get("CAVIAR_TRACKING_BATCH_S", "1.0"))
        self._deadline = math.inf
        self.outage_seconds = 0.0
        self.last_error = ""

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
        self._start_writer()
        return self.parent_run_id

    def resume_sweep(self, parent_run_id: str) -> None:
        """Continue writing to an interrupted sweep: its parent, its children, their steps.

        Children are known by their trial index (``caviar.trial_index``), which a trial
        keeps when the resumed sweep runs it under a new Ray trial id.
        """
        try:
            self._resumed = True
            parent = self._client.get_run(parent_run_id)
            self.parent_run_id = parent.info.run_id
            self._client.update_run(parent_run_id, status="RUNNING")
            for child in sorted(self._children(), key=lambda c: c.info.start_time or 0):
                key = child.data.tags.get("caviar.trial_index")
                if key is None or key in self._child_runs:
                    continue  # a duplicate (a create retried after a lost reply) is left out
                self._child_runs[key] = child.info.run_id
                history = self._client.get_metric_history(child.info.run_id, "epoch_seconds")
                self._last_step[key] = max((int(m.step) for m in history), default=0)
        except MlflowException as error:
            raise TrackingError(
                f"cannot continue sweep run {parent_run_id} in {self.uri}: {error.message}"
            ) from None
        self._start_writer()

    def finalize_children(self, outcomes: Mapping[str, str]) -> None:
        """After the last write: no duplicate and no RUNNING child is left behind.

        ``outcomes`` maps each trial's key (its index) to its outcome. A child that is not
        the run this tracker wrote for its key (a duplicate, or a trial the sweep does not
        know) is deleted; a child still RUNNING is closed with its trial's outcome.
        """
        if self._nothing_to_repair(outcomes):
            return
        for child in self._children():
            key = child.data.tags.get("caviar.trial_index")
            if key not in outcomes or self._child_runs.get(key) != child.info.run_id:
                self._with_retry(lambda r=child.info.run_id: self._client.delete_run(r))
                continue
            if child.info.status == "RUNNING":
                status = "FAILED" if outcomes[key] in ("failed", "running") else "FINISHED"
                self._with_retry(
                    lambda r=child.info.run_id, s=status: self._client.set_terminated(r, s)
                )

    def interrupt_children(self) -> None:
        """An interrupted sweep leaves no child RUNNING: the trials it was training are
        KILLED, as the parent is; a resume continues them and ends each with its outcome."""
        for child in self._children():
            if child.info.status == "RUNNING":
                self._with_retry(
                    lambda r=child.info.run_id: self._client.set_terminated(r, "KILLED")
                )

    def _nothing_to_repair(self, outcomes: Mapping[str, str]) -> bool:
        """True when the store cannot hold a duplicate or a RUNNING child, so reading every
        child back (half a second for 64 of them) is skipped: a fresh sweep, a local store
        (no HTTP layer that may repeat a create whose reply was lost), not one failed write,
        and every trial's run created and ended by this tracker."""
        local = urlsplit(self.uri).scheme in ("sqlite", "file", "")
        return (
            local
            and not self._resumed
            and not self._had_errors
            and set(outcomes) == set(self._child_runs) == self._ended
        )

    def log_summary(self, metrics: Mapping[str, float], tags: Mapping[str, str]) -> None:
        """Write the sweep's summary on the parent run (after :meth:`close`)."""
        assert self.parent_run_id is not None
        self._with_retry(
            lambda: self._client.log_batch(
                self.parent_run_id,
                metrics=[Metric(k, float(v), _now_ms(), 0) for k, v in metrics.items()],
                tags=[RunTag(k, str(v)) for k, v in tags.items()],
            )
        )

    def end_sweep(self, status: str) -> None:
        assert self.parent_run_id is not None
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
                    code_paths=[str(code_dir)],  # the model class loads without caviar installed
                    # MLflow 3's default, "pt2", runs torch.export: it imports torch's whole
                    # compiler stack and traces the network, 1.5-2 s at the end of every sweep.
                    # The pickled module loads with the code logged beside it.
                    serialization_format="pickle",
                )
        finally:
            flavour_log.setLevel(level)
        return str(info.model_uri)

    # --- child runs (asynchronous) -----------------------------------------------------

    def trial_started(
        self,
        trial: str,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        started_at: float | None = None,
    ) -> None:
        """Queue a child run. ``started_at`` (seconds since the epoch; default now) is when
        the trial started: the run gets that start time, not the moment the writer got to it,
        so the UI's durations are the trials' own."""
        if trial in self._child_runs:  # a resumed sweep: the run exists, open it again
            self._queue.put(_Op("reopen", trial))
            return
        payload = {
            "name": run_name,
            "params": dict(params),
            "tags": dict(tags),
            "at_ms": _ms(started_at),
        }
        self._queue.put(_Op("start", trial, payload=payload))

    def trial_metrics(
        self, trial: str, metrics: Mapping[str, float], step: int, timestamp: float | None = None
    ) -> None:
        """Queue one epoch's metrics; an epoch already logged (a replay after a restore or a
        worker restart, which reproduces the same values) is not logged twice.

        ``timestamp`` (seconds since the epoch) is when the trial finished that epoch; epochs
        that reached the driver together keep their own times. Default: now."""
        if step <= self._last_step.get(trial, 0):
            return
        self._last_step[trial] = step
        stamp = _ms(timestamp)
        items = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        self._queue.put(_Op("metrics", trial, payload={"metrics": items}))

    def trial_ended(
        self, trial: str, tags: Mapping[str, str], status: str, ended_at: float | None = None
    ) -> None:
        """Queue a child run's end; ``ended_at`` (default now) becomes the run's end time."""
        payload = {"tags": dict(tags), "status": status, "at_ms": _ms(ended_at)}
        self._queue.put(_Op("end", trial, payload=payload))

    def parent_update(
        self,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        json_artifacts: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue additions to the parent run (a new round's region, its best trial)."""
        payload = {
            "params": dict(params or {}),
            "tags": dict(tags or {}),
            "metrics": [Metric(k, float(v), _now_ms(), 0) for k, v in (metrics or {}).items()],
            "json": dict(json_artifacts or {}),
        }
        self._queue.put(_Op("parent", payload=payload))

    def log_parent_file(self, local_path: Path, artifact_dir: str) -> None:
        """Upload a file (a report plot) to the parent run, synchronously."""
        assert self.parent_run_id is not None
        self._with_retry(
            lambda: self._client.log_artifact(self.parent_run_id, str(local_path), artifact_dir)
        )

    def child_run_id(self, trial: str) -> str | None:
        return self._child_runs.get(trial)

    def flush(self) -> None:
        """Block until every queued write has been attempted once (without waiting out the
        batching window: whoever flushes wants the writes now)."""
        self._hurry.set()
        try:
            self._queue.join()
        finally:
            if not self._closed:
                self._hurry.clear()

    def close(self) -> None:
        """Deliver everything queued; while the store is away, keep trying until the deadline.

        The deadline (``CAVIAR_TRACKING_FLUSH_TIMEOUT_S``, default 300 s) bounds how long a
        finished sweep waits for a tracking server to come back; what is still undelivered
        then is reported, never silently dropped.
        """
        if self._thread is not None and self._thread.is_alive():
            self._deadline = time.monotonic() + self.flush_timeout_s
            self._closed = True
            self._hurry.set()
            self._queue.put(None)
            self._thread.join()
        self._thread = None
        for op in self._backlog:
            self._undelivered.append((op, "tracking store unreachable until the deadline"))
        self._backlog.clear()
        if self._undelivered:
            log.warning("%d MLflow writes could not be delivered", len(self._undelivered))

    @property
    def undelivered(self) -> list[str]:
        return [f"{op.kind} {op.trial or ''}: {reason}" for op, reason in self._undelivered]

    # --- the writer thread -------------------------------------------------------------

    def _start_writer(self) -> None:
        self._thread = threading.Thread(target=self._drain, name="caviar-mlflow", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        """Move queued ops to the ordered backlog and write it; back off while the store is away."""
        stopping = False
        delay = 0.0
        outage_started: float | None = None
        while True:
            try:
                item = self._queue.get(timeout=delay or None) if not stopping else None
                items = [] if item is None and stopping else [item]
            except queue.Empty:
                items = []
            while True:  # take everything already waiting: that is what makes batches
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item in items:
                if item is None:
                    stopping = True
                else:
                    self._backlog.append(item)
            if items and not stopping and delay == 0.0:
                self._hurry.wait(self.batch_interval_s)  # a batch forms; flush/close cut it short
                while True:
                    try:
                        extra = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    items.append(extra)
                    if extra is None:
                        stopping = True
                    else:
                        self._backlog.append(extra)
            delivered = self._write_backlog()
            for _ in items:
                self._queue.task_done()
            if delivered:
                if outage_started is not None:
                    self.outage_seconds += time.monotonic() - outage_started
                    log.warning("MLflow store reachable again; backlog delivered")
                    outage_started = None
                delay = 0.0
                if stopping:
                    return
            else:
                if outage_started is None:
                    outage_started = time.monotonic()
                    log.warning(
                        "MLflow store %s unreachable (%s); %d writes wait and will be retried",
                        self.uri,
                        self.last_error,
                        len(self._backlog),
                    )
                delay = min(30.0, max(1.0, delay * 2))
                if stopping:
                    if time.monotonic() >= self._deadline:
                        return
                    time.sleep(delay)

    def _write_backlog(self) -> bool:
        """Write the backlog in order; False if the store is unreachable (the rest waits).

        Trial ops between two parent updates are grouped per trial, and each group costs at
        most three calls however many epochs it holds: create the run, one ``log_batch`` with
        its params, metrics and tags, and ``set_terminated``. Every call is safe to repeat,
        so a group that failed half-way is simply retried whole.
        """
        while self._backlog:
            segment: list[_Op] = []
            while self._backlog and self._backlog[0].kind != "parent":
                segment.append(self._backlog.popleft())
            groups: dict[str, list[_Op]] = {}
            for op in segment:
                groups.setdefault(op.trial or "", []).append(op)
            for trial, ops in list(groups.items()):
                if not self._try(ops, lambda t=trial, o=ops: self._apply_trial(t, o)):
                    unwritten = [op for op in segment if (op.trial or "") in groups]
                    self._backlog.extendleft(reversed(unwritten))
                    return False
                del groups[trial]
            if self._backlog:
                op = self._backlog[0]
                if not self._try([op], lambda o=op: self._update_parent(o)):
                    return False
                self._backlog.popleft()
        return True

    def _apply_trial(self, trial: str, ops: list[_Op]) -> None:
        assert self.parent_run_id is not None
        starts = [op for op in ops if op.kind == "start"]
        if starts and trial not in self._child_runs:
            payload = starts[0].payload
            tags = {"mlflow.parentRunId": self.parent_run_id, **payload["tags"]}
            run = self._client.create_run(
                self.experiment_id,
                start_time=payload.get("at_ms"),
                tags=tags,
                run_name=payload["name"],
            )
            self._child_runs[trial] = run.info.run_id
        run_id = self._child_runs.get(trial)
        if run_id is None:
            raise MlflowException(f"no run for trial {trial}", error_code="INVALID_STATE")
        ends = [op for op in ops if op.kind == "end"]
        if any(op.kind == "reopen" for op in ops) and not ends:
            self._client.update_run(run_id, status="RUNNING")
        params = [
            Param(k, str(v)[:MAX_PARAM_LENGTH])
            for op in starts
            for k, v in op.payload["params"].items()
        ]
        metrics = [m for op in ops if op.kind == "metrics" for m in op.payload["metrics"]]
        tags = [RunTag(k, str(v)) for op in ends for k, v in op.payload["tags"].items()]
        for call in _batches(params, metrics, tags):
            self._client.log_batch(run_id, **call)
        if ends:
            end = ends[-1].payload
            self._client.set_terminated(run_id, end["status"], end_time=end.get("at_ms"))
            self._ended.add(trial)
        elif any(op.kind in ("start", "reopen") for op in ops):
            self._ended.discard(trial)

    def _try(self, ops: list[_Op], write: Callable[[], None]) -> bool:
        """True when written or permanently refused (recorded); False when worth retrying."""
        try:
            write()
            return True
        except MlflowException as error:
            self._had_errors = True
            if _is_transient(error):
                self.last_error = error.message[:200]
                return False
            reason = error.message
        except (OSError, ConnectionError) as error:
            self._had_errors = True
            self.last_error = str(error)[:200]
            return False
        except Exception as error:  # a refused write must not kill the writer
            self._had_errors = True
            reason = str(error)
        for op in ops:
            self._undelivered.append((op, reason[:200]))
        return True

    def _update_parent(self, op: _Op) -> None:
        assert self.parent_run_id is not None
        payload = op.payload
        self._log_params(self.parent_run_id, payload["params"])
        tags = [RunTag(k, str(v)) for k, v in payload["tags"].items()]
        if tags or payload["metrics"]:
            self._client.log_batch(self.parent_run_id, metrics=payload["metrics"], tags=tags)
        for artifact_file, obj in payload["json"].items():
            self._client.log_dict(self.parent_run_id, obj, artifact_file)

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._client.log_batch(run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])

    def _children(self) -> list[Any]:
        assert self.parent_run_id is not None
        return list(
            self._client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
                max_results=50_000,
            )
        )

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


def _is_transient(error: MlflowException) -> bool:
    """Worth retrying: the store is away or busy. Anything else is refused for good, recorded
    and reported; retrying it would only stall the writer until the flush deadline."""
    if getattr(error, "error_code", "") == "TEMPORARILY_UNAVAILABLE":
        return True
    message = str(getattr(error, "message", error)).lower()
    return any(hint in message for hint in TRANSIENT_HINTS)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(seconds: float | None) -> int:
    """MLflow's milliseconds for a time in seconds since the epoch; None means now."""
    return int(seconds * 1000) if seconds is not None else _now_ms()


def _as_tensor(array: Any) -> Any:
    import torch

    return torch.as_tensor(array)


def _torch_requirement() -> str:
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


# --- reading a sweep back (for reports) -----------------------------------------------------

RUN_ID_PATTERN = r"[0-9a-f]{32}"


def read_sweep(uri: str, experiment_or_run: str) -> SweepHistory:
    """Everything a report needs, from the store alone: parent, regions, trials, curves.

    ``experiment_or_run`` is a parent run id, or an experiment name (its latest sweep).
    """
    import json
    import re
    import tempfile

    from orchestrator.search.ranking import rung_milestones
    from orchestrator.store.history import SweepHistory

    uri = absolute_uri(uri)
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        is_run_id = bool(re.fullmatch(RUN_ID_PATTERN, experiment_or_run))
        parent = _find_parent(client, experiment_or_run, is_run_id)
        params = dict(parent.data.params)
        metric, mode = params.get("objective", "max val_accuracy").split(" ", 1)[::-1]
        max_epochs = int(params.get("scheduler.max_epochs", "1"))
        if params.get("scheduler.kind") == "asha":
            milestones = rung_milestones(
                int(params["scheduler.grace_period"]),
                float(params["scheduler.reduction_factor"]),
                max_epochs,
            )
        else:
            milestones = [max_epochs]
        regions: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = client.download_artifacts(parent.info.run_id, "regions", tmp)
                files = sorted(
                    Path(local).glob("round_*.json"), key=lambda p: int(p.stem.split("_")[1])
                )
                regions = [json.loads(f.read_text()) for f in files]
            except (MlflowException, OSError):
                regions = []
        children = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
            max_results=50_000,
        )
        trials = []
        for child in children:
            tags = child.data.tags
            history = client.get_metric_history(child.info.run_id, metric)
            curve = sorted((int(m.step), float(m.value)) for m in history)
            config = {k: _parse_param(v) for k, v in child.data.params.items()}
            trials.append(
                Trial(
                    index=int(tags.get("caviar.trial_index", "0")),
                    config=config,
                    round=int(tags.get("caviar.round", "1")),
                    trial_id=tags.get("caviar.trial_id", child.info.run_id),
                    state=_state(tags.get("caviar.outcome")),
                    history=[{"epoch": epoch, metric: value} for epoch, value in curve],
                    run_id=child.info.run_id,
                )
            )
    except MlflowException as error:
        raise TrackingError(f"cannot read the sweep from {uri}: {error.message}") from None
    trials.sort(key=lambda t: t.index)
    experiment = client.get_experiment(parent.info.experiment_id)
    return SweepHistory(
        name=experiment.name,
        experiment_id=parent.info.experiment_id,
        parent_run_id=parent.info.run_id,
        tracking_uri=uri,
        metric=metric,
        mode=mode,
        milestones=milestones,
        regions=regions,
        trials=trials,
        params=params,
        metrics=dict(parent.data.metrics),
    )


def _find_parent(client: MlflowClient, key: str, looks_like_run_id: bool) -> Any:
    if looks_like_run_id:
        try:
            run = client.get_run(key)
        except MlflowException:
            run = None
        if run is not None:
            if run.data.tags.get("caviar.kind") != "sweep":
                raise TrackingError(f"run {key} is not a caviar sweep's parent run")
            return run
    experiment = client.get_experiment_by_name(key)
    if experiment is None:
        raise TrackingError(
            f"no experiment or sweep run named {key!r} in the store; "
            "pass an experiment name or a parent run id (caviar run prints both)"
        )
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`caviar.kind` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise TrackingError(f"experiment {key!r} holds no caviar sweep")
    return runs[0]


def _state(outcome: str | None) -> TrialState:
    """A child run's ``caviar.outcome`` tag; one not (yet) set is a trial still running."""
    try:
        return TrialState(outcome or "running")
    except ValueError:
        return TrialState.RUNNING


def _parse_param(text: str) -> Any:
    """Params come back as strings; recover numbers and booleans for plotting."""
    if text in ("True", "False"):
        return text == "True"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
