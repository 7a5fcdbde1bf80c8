"""One sweep in MLflow, as the engine sees it: :class:`SweepTracker`.

One parent run per sweep, one nested child run per trial, per-epoch metrics with
``step = epoch``. The parent run is written synchronously (it must exist before any trial);
trial writes and parent updates go through the batched writer (``writer.py``): a trial's
result costs the sweep loop a queue append instead of a round trip to the store. A write that
fails is retried with backoff; a store that stays away does not stop the sweep, and what could
not be written is reported at the end instead of silently dropped.

The parts, one concept each: ``writer.py`` (the batched background writer, MLflow-free),
``mlflow_sink.py`` (the MLflow layout: every MLflow call that writes), ``reader.py`` (a sweep
read back for reports) and ``uri.py`` (where the store is). This module wires them together
and re-exports what callers import from here.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from orchestrator.store.mlflow_sink import MlflowSink
from orchestrator.store.reader import read_sweep
from orchestrator.store.uri import absolute_uri, check_reachable, ui_base, ui_command
from orchestrator.store.writer import (
    SYSTEM_CLOCK,
    BatchWriter,
    Clock,
    EndRun,
    LogMetrics,
    MetricPoint,
    ParentUpdate,
    ReopenRun,
    StartRun,
    call_with_retries,
    epoch_ms,
)

__all__ = [
    "SweepTracker",
    "absolute_uri",
    "check_reachable",
    "read_sweep",
    "ui_base",
    "ui_command",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class SweepTracker:
    """Writes one sweep to MLflow: the parent run synchronously, trials through the writer.

    Constructing one does no I/O and starts no thread. :meth:`open` reaches the store (it
    raises TrackingError if the store does not answer or refuses); :meth:`start_sweep` and
    :meth:`resume_sweep` call it first, so a sweep still fails on an unusable store before
    any compute. :meth:`connect` is construct-and-open in one call.
    """

    def __init__(self, uri: str, experiment: str, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.uri = absolute_uri(uri)
        self.experiment = experiment
        self._clock = clock
        self._sink = MlflowSink(self.uri, experiment)
        self._writer = BatchWriter(
            self._sink,
            clock=clock,
            # Wait this long after a write arrives before writing: a second of results per
            # trial costs one transaction instead of one per epoch.
            batch_interval_s=float(os.environ.get("CAVIAR_TRACKING_BATCH_S", "1.0")),
            flush_timeout_s=float(os.environ.get("CAVIAR_TRACKING_FLUSH_TIMEOUT_S", "300")),
            store_label=f"MLflow store {self.uri}",
            thread_name="caviar-mlflow",
        )
        self._resumed = False
        self._last_step: dict[str, int] = {}  # per trial: the last epoch queued

    @classmethod
    def connect(cls, uri: str, experiment: str) -> SweepTracker:
        """A tracker whose store has answered (what the constructor used to check)."""
        tracker = cls(uri, experiment)
        tracker.open()
        return tracker

    def open(self) -> None:
        """Reach the store and find (or create) the experiment; later calls do nothing."""
        self._sink.open()

    @property
    def experiment_id(self) -> str:
        """The experiment's id (opens the store if not yet open)."""
        return self._sink.experiment_id

    @property
    def parent_run_id(self) -> str | None:
        return self._sink.parent_run_id

    @property
    def batch_interval_s(self) -> float:
        return self._writer.batch_interval_s

    @property
    def flush_timeout_s(self) -> float:
        return self._writer.flush_timeout_s

    @property
    def outage_seconds(self) -> float:
        return self._writer.outage_seconds

    @property
    def last_error(self) -> str:
        return self._writer.last_error

    # --- parent run (synchronous: it must exist before any trial) ----------------------

    def start_sweep(
        self,
        run_name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
        spec_text: str,
        spec_filename: str,
    ) -> str:
        self.open()
        run_id = self._sink.create_parent(run_name, tags, params, spec_text, spec_filename)
        self._writer.start()
        return run_id

    def resume_sweep(self, parent_run_id: str) -> None:
        """Continue writing to an interrupted sweep: its parent, its children, their steps.

        Children are known by their trial index (``caviar.trial_index``), which a trial
        keeps when the resumed sweep runs it under a new Ray trial id.
        """
        self.open()
        self._resumed = True
        self._last_step.update(self._sink.resume(parent_run_id))
        self._writer.start()

    def discard_parent(self, run_id: str) -> int:
        """Delete the parent run(s) stamped with ``run_id`` (a run stopped before its marker
        recorded its parent, so nothing else refers to it); returns how many."""
        self.open()
        return self._sink.delete_stamped(run_id)

    def finalize_children(self, outcomes: Mapping[str, str]) -> None:
        """After the last write: no duplicate and no RUNNING child is left behind.

        ``outcomes`` maps each trial's key (its index) to its outcome. A child that is not
        the run this tracker wrote for its key (a duplicate, or a trial the sweep does not
        know) is deleted; a child still RUNNING is closed with its trial's outcome.
        """
        if self._nothing_to_repair(outcomes):
            return
        for child in self._sink.children():
            key = child.trial_key
            if key not in outcomes or self._sink.child_runs.get(key) != child.run_id:
                self._retry(lambda r=child.run_id: self._sink.delete_run(r))
                continue
            if child.status == "RUNNING":
                status = "FAILED" if outcomes[key] in ("failed", "running") else "FINISHED"
                self._retry(lambda r=child.run_id, s=status: self._sink.terminate_run(r, s))

    def interrupt_children(self) -> None:
        """An interrupted sweep leaves no child RUNNING: the trials it was training are
        KILLED, as the parent is; a resume continues them and ends each with its outcome."""
        for child in self._sink.children():
            if child.status == "RUNNING":
                self._retry(lambda r=child.run_id: self._sink.terminate_run(r, "KILLED"))

    def _nothing_to_repair(self, outcomes: Mapping[str, str]) -> bool:
        """True when the store cannot hold a duplicate or a RUNNING child, so reading every
        child back (half a second for 64 of them) is skipped: a fresh sweep, a local store
        (no HTTP layer that may repeat a create whose reply was lost), not one failed write,
        and every trial's run created and ended by this tracker."""
        local = urlsplit(self.uri).scheme in ("sqlite", "file", "")
        return (
            local
            and not self._resumed
            and not self._writer.had_errors
            and set(outcomes) == set(self._sink.child_runs) == self._sink.ended
        )

    def log_summary(self, metrics: Mapping[str, float], tags: Mapping[str, str]) -> None:
        """Write the sweep's summary on the parent run (after :meth:`close`)."""
        assert self.parent_run_id is not None
        self._retry(lambda: self._sink.log_summary(metrics, tags))

    def end_sweep(self, status: str) -> None:
        assert self.parent_run_id is not None
        self._retry(lambda: self._sink.end_parent(status))

    def log_model(self, model: Any, input_example: Any, code_paths: Sequence[Path]) -> str:
        """Log the best trial's network on the parent run, with the code it needs to load
        (``code_paths``: folders or files); returns its model URI."""
        return self._sink.log_model(model, input_example, code_paths)

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
        if trial in self._sink.child_runs:  # a resumed sweep: the run exists, open it again
            self._writer.submit(ReopenRun(trial, dict(params), dict(tags)))
            return
        start = StartRun(trial, run_name, dict(params), dict(tags), epoch_ms(started_at))
        self._writer.submit(start)

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
        stamp = epoch_ms(timestamp)
        points = tuple(MetricPoint(k, float(v), stamp, step) for k, v in metrics.items())
        self._writer.submit(LogMetrics(trial, points))

    def trial_ended(
        self, trial: str, tags: Mapping[str, str], status: str, ended_at: float | None = None
    ) -> None:
        """Queue a child run's end; ``ended_at`` (default now) becomes the run's end time."""
        self._writer.submit(EndRun(trial, status, dict(tags), epoch_ms(ended_at)))

    def parent_update(
        self,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        json_artifacts: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue additions to the parent run (a new round's region, its best trial)."""
        now = epoch_ms()
        points = tuple(MetricPoint(k, float(v), now, 0) for k, v in (metrics or {}).items())
        self._writer.submit(
            ParentUpdate(dict(params or {}), dict(tags or {}), points, dict(json_artifacts or {}))
        )

    def parent_metric(
        self, key: str, value: float, step: int, timestamp: float | None = None
    ) -> None:
        """Queue one point of a metric of the parent run at ``step`` (``best_so_far`` at the
        epochs spent); ``timestamp`` in seconds since the epoch, default now."""
        point = MetricPoint(key, float(value), epoch_ms(timestamp), int(step))
        self._writer.submit(ParentUpdate({}, {}, (point,), {}))

    def log_parent_file(self, local_path: Path, artifact_dir: str) -> None:
        """Upload a file (a report plot) to the parent run, synchronously."""
        assert self.parent_run_id is not None
        self._retry(lambda: self._sink.log_parent_file(local_path, artifact_dir))

    def child_run_id(self, trial: str) -> str | None:
        return self._sink.child_runs.get(trial)

    def flush(self) -> None:
        """Block until every queued write has been attempted once (without waiting out the
        batching window: whoever flushes wants the writes now)."""
        self._writer.flush()

    def close(self) -> None:
        """Deliver everything queued; while the store is away, keep trying until the deadline.

        The deadline (``CAVIAR_TRACKING_FLUSH_TIMEOUT_S``, default 300 s) bounds how long a
        finished sweep waits for a tracking server to come back; what is still undelivered
        then is reported, never silently dropped.
        """
        self._writer.close()
        if self._writer.undelivered:
            log.warning("%d MLflow writes could not be delivered", len(self._writer.undelivered))

    @property
    def undelivered(self) -> list[str]:
        return [str(item) for item in self._writer.undelivered]

    def _retry(self, write: Callable[[], T]) -> T:
        return call_with_retries(write, self._clock)


def model_code_paths(model: Any) -> list[Path]:
    """The code a logged model needs to load without caviar's driver: ``trainables``, and
    the user's module when the network is defined outside it."""
    import trainables

    paths = [Path(trainables.__file__).parent]
    module = sys.modules.get(type(model).__module__)
    source = getattr(module, "__file__", None)
    if source and not Path(source).resolve().is_relative_to(paths[0].resolve()):
        path = Path(source)
        paths.append(path.parent if path.name == "__init__.py" else path)
    return paths
