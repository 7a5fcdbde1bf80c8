"""Builds and runs one sweep: data, MLflow parent run, Ray Tune, the best model's test.

The order is deliberate. Data and the tracking store are checked before Ray starts, so a bad
path or an unreachable server costs seconds, not a sweep. Everything the trials report is
recorded as it arrives (MLflow, progress), so an interrupted sweep loses nothing it finished.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TBX per result
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import logging  # noqa: E402

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler  # noqa: E402

import trainables  # noqa: E402
from orchestrator.callbacks import SweepObserver  # noqa: E402
from orchestrator.datasets import load_data  # noqa: E402
from orchestrator.errors import SweepError  # noqa: E402
from orchestrator.progress import ProgressLine  # noqa: E402
from orchestrator.ranking import ranked, rung_milestones  # noqa: E402
from orchestrator.records import FINAL_OUTCOMES, TrialRecord  # noqa: E402
from orchestrator.search import build_searcher, concurrent_slots  # noqa: E402
from orchestrator.spec import AshaScheduler, SweepSpec  # noqa: E402
from orchestrator.tracking import SweepTracker, ui_command  # noqa: E402
from orchestrator.trial import CaviarTrainable, load_trial_state  # noqa: E402
from trainables import DataSplits, TensorSplits, get_trainable  # noqa: E402

# Tune's per-trial result files are off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS): caviar keeps its
# own records and MLflow, so the analysis' "no result.json" warnings are noise.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


@dataclass
class SweepResult:
    """What a finished sweep produced; everything the summary prints comes from here."""

    name: str
    sweep_id: str
    experiment: str
    tracking_uri: str
    parent_run_id: str
    storage_dir: Path
    metric: str
    mode: str
    records: list[TrialRecord]
    wall_seconds: float
    best: TrialRecord | None = None
    best_run_id: str | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    model_uri: str | None = None
    undelivered: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(r.outcome for r in self.records)
        return {outcome: counted.get(outcome, 0) for outcome in FINAL_OUTCOMES}

    @property
    def epochs_trained(self) -> int:
        return sum(r.epochs for r in self.records)

    @property
    def ui_command(self) -> str:
        return ui_command(self.tracking_uri)


def run_sweep(
    spec: SweepSpec, spec_text: str, spec_filename: str, stream: TextIO | None = None
) -> SweepResult:
    stream = stream or sys.stdout
    started = time.monotonic()
    sweep_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    storage_root = (Path(spec.storage.path) / spec.name).resolve()

    # 1. Data first: a bad dataset fails before Ray or MLflow start.
    data = load_data(spec.data)

    # 2. The tracking store next: unreachable or refusing, we stop before any compute.
    tracker = SweepTracker(spec.tracking_uri(), spec.experiment_name)
    parent_run_id = tracker.start_sweep(
        run_name=f"{spec.name}-{sweep_id}",
        tags=_sweep_tags(spec, sweep_id),
        params=_sweep_params(spec, data),
        spec_text=spec_text,
        spec_filename=spec_filename,
    )
    print(
        f"caviar: sweep {spec.name} ({sweep_id}): {spec.num_trials()} trials, "
        f"data {spec.data.source} {data.sizes()}; MLflow run {parent_run_id} "
        f"in experiment {spec.experiment_name!r} at {tracker.uri}",
        file=stream,
        flush=True,
    )

    result = SweepResult(
        name=spec.name,
        sweep_id=sweep_id,
        experiment=spec.experiment_name,
        tracking_uri=tracker.uri,
        parent_run_id=parent_run_id,
        storage_dir=storage_root / sweep_id,
        metric=spec.objective.metric,
        mode=spec.mode,
        records=[],
        wall_seconds=0.0,
    )
    status = "FAILED"
    started_ray = False
    observer: SweepObserver | None = None
    try:
        started_ray = _ensure_ray()
        # 3. The sweep itself.
        observer = _fit(spec, data, tracker, storage_root, sweep_id, stream)
        result.records = sorted(observer.records.values(), key=lambda r: r.index)
        # 4. The best trial, ranked ASHA-aware, evaluated once on the held-out test split.
        best = ranked(result.records, spec.objective.metric, spec.mode, _milestones(spec))
        if best:
            result.best = best[0]
            tracker.flush()
            result.best_run_id = tracker.child_run_id(result.best.trial_id)
            _test_best(spec, data, result, tracker)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if observer is not None and not result.records:
            result.records = sorted(observer.records.values(), key=lambda r: r.index)
        result.wall_seconds = time.monotonic() - started
        tracker.close()
        tracker.finish_sweep(_summary_metrics(result), _summary_tags(result), status)
        result.undelivered = tracker.undelivered
        if started_ray:
            ray.shutdown()
    return result


def _ensure_ray() -> bool:
    """Join the cluster in ``RAY_ADDRESS`` if there is one, else start Ray on loopback."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False, logging_level="WARNING")
    else:
        # The embedded cluster's GCS port listens on every interface, so it must not run
        # open: token auth with a fresh token per sweep, held only in this process tree's
        # environment (nothing is written to ~/.ray, which would change `ray start` for good).
        if os.environ.setdefault("RAY_AUTH_MODE", "token") == "token":
            os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
        _refresh_ray_config()
        ray.init(
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
            _node_ip_address="127.0.0.1",
        )
    return True


def _refresh_ray_config() -> None:
    """Make an already imported Ray see the auth settings just put in the environment.

    Ray reads ``RAY_AUTH_MODE`` into a cached config when it is imported; Ray's own
    ``_enable_token_auth`` refreshes it the same way.
    """
    from ray._raylet import Config

    Config.initialize("")


def _fit(
    spec: SweepSpec,
    data: DataSplits,
    tracker: SweepTracker,
    storage_root: Path,
    sweep_id: str,
    stream: TextIO,
) -> SweepObserver:
    slots = concurrent_slots(
        ray.cluster_resources(), spec.resources.cpus_per_trial, spec.resources.gpus_per_trial
    )
    search_alg, planned = build_searcher(spec, slots)
    progress = ProgressLine(
        spec.num_trials(), spec.objective.metric, spec.mode, _milestones(spec), stream
    )
    observer = SweepObserver(
        planned, tracker, progress, spec.max_epochs, set(spec.search_space().fixed)
    )
    trainable = tune.with_resources(
        tune.with_parameters(CaviarTrainable, data=data, trainable_name=spec.trainable),
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=spec.objective.metric,
            mode=spec.mode,
            search_alg=search_alg,
            scheduler=_scheduler(spec),
            num_samples=spec.num_trials(),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=sweep_id,
            storage_path=str(storage_root),
            callbacks=[observer],
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=spec.storage.checkpoint_every,
                checkpoint_at_end=True,
                num_to_keep=1,
            ),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    try:
        tuner.fit()  # outcomes come from the observer; Ray's ResultGrid is not needed
    finally:
        progress.close(observer.records.values())
    return observer


def _scheduler(spec: SweepSpec) -> TrialScheduler:
    if isinstance(spec.scheduler, AshaScheduler):
        return ASHAScheduler(
            time_attr="epoch",
            max_t=spec.max_epochs,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
            brackets=spec.scheduler.brackets,
        )
    return FIFOScheduler()


def _milestones(spec: SweepSpec) -> list[int]:
    if isinstance(spec.scheduler, AshaScheduler):
        return rung_milestones(
            spec.scheduler.grace_period, spec.scheduler.reduction_factor, spec.max_epochs
        )
    return [spec.max_epochs]


def _test_best(
    spec: SweepSpec, data: DataSplits, result: SweepResult, tracker: SweepTracker
) -> None:
    """Rebuild the best trial from its last checkpoint and score it once on the test split."""
    assert result.best is not None
    checkpoint = result.best.checkpoint
    if checkpoint is None:
        raise SweepError(f"the best trial {result.best.trial_id} left no checkpoint to test")
    with checkpoint.as_directory() as directory:
        state = load_trial_state(directory)
    tensors = TensorSplits.from_splits(data, "cpu")
    session = get_trainable(spec.trainable).make_session(state["config"], tensors, "cpu")
    session.load_state_dict(state["session"])
    result.test_loss, result.test_accuracy = session.evaluate(tensors.x_test, tensors.y_test)
    model = session.model.eval()
    result.model_uri = tracker.log_model(model, data.x_test[:5], Path(trainables.__file__).parent)


def _sweep_tags(spec: SweepSpec, sweep_id: str) -> dict[str, str]:
    tags = {
        "caviar.kind": "sweep",
        "caviar.sweep_id": sweep_id,
        "caviar.spec_hash": spec.spec_hash(),
        "caviar.version": _version(),
        "caviar.trainable": spec.trainable,
    }
    commit = _git_commit()
    if commit:
        tags["caviar.git_commit"] = commit
    if spec.description:
        tags["mlflow.note.content"] = spec.description
    return tags


def _sweep_params(spec: SweepSpec, data: DataSplits) -> dict[str, Any]:
    params: dict[str, Any] = {
        "data.source": spec.data.source,
        "data.sizes": data.sizes(),
        "trainable": spec.trainable,
        "search.strategy": spec.search.strategy,
        "search.num_trials": spec.num_trials(),
        "search.seed": spec.search.seed,
        "scheduler.kind": spec.scheduler.kind,
        "scheduler.max_epochs": spec.max_epochs,
        "objective": f"{spec.mode} {spec.objective.metric}",
        "resources.cpus_per_trial": spec.resources.cpus_per_trial,
        "resources.gpus_per_trial": spec.resources.gpus_per_trial,
    }
    if isinstance(spec.scheduler, AshaScheduler):
        params["scheduler.grace_period"] = spec.scheduler.grace_period
        params["scheduler.reduction_factor"] = spec.scheduler.reduction_factor
        params["scheduler.brackets"] = spec.scheduler.brackets
    for domain in spec.search_space().domains:
        params[f"space.{domain.name}"] = domain.describe()
    for name, value in spec.fixed.items():
        params[f"fixed.{name}"] = value
    return params


def _summary_metrics(result: SweepResult) -> dict[str, float]:
    metrics: dict[str, float] = {
        f"trials_{outcome}": float(count) for outcome, count in result.counts.items()
    }
    metrics["epochs_trained"] = float(result.epochs_trained)
    metrics["wall_seconds"] = result.wall_seconds
    if result.best is not None:
        value = result.best.metric(result.metric)
        if value is not None:
            metrics[f"best_{result.metric}"] = value
    if result.test_accuracy is not None:
        metrics["test_accuracy"] = result.test_accuracy
    if result.test_loss is not None:
        metrics["test_loss"] = result.test_loss
    return metrics


def _summary_tags(result: SweepResult) -> dict[str, str]:
    tags: dict[str, str] = {}
    if result.best is not None:
        tags["caviar.best_trial_id"] = result.best.trial_id
        tags["caviar.best_trial_index"] = str(result.best.index)
        if result.best_run_id:
            tags["caviar.best_run_id"] = result.best_run_id
    if result.model_uri:
        tags["caviar.model_uri"] = result.model_uri
    return tags


def _version() -> str:
    try:
        return metadata.version("caviar")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
