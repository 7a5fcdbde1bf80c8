"""Read a finished sweep back from the store its system left, into one shape for all systems.

The numbers come from what each system recorded (MLflow runs for caviar and the Ray Tune
baseline, the Optuna storage plus its workers' timing files for Optuna), not from parsing
terminal output: a store is what a user keeps, and its timestamps are the same kind of clock
for every system.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import BenchError, Timed, mlp_config


@dataclass
class TrialRow:
    """One trial as its system's store recorded it."""

    start_s: float
    """When the trial started, seconds since the epoch (the store's own clock)."""
    end_s: float
    """When it ended (completed, stopped early or failed)."""
    epochs: int
    """Epochs it trained (= results it reported)."""
    last_val_accuracy: float | None
    """Validation accuracy at its last epoch; None if it reported none or it was not finite."""
    epoch_seconds: float
    """Sum of its per-epoch ``epoch_seconds``: time inside training steps (train + validate)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The trainable's config the trial ran (store strings allowed), for the compute floor."""
    outcome: str = ""


@dataclass
class SweepRead:
    """A sweep read back: its trials and whatever system-specific numbers are worth keeping."""

    trials: list[TrialRow]
    extra: dict[str, Any] = field(default_factory=dict)


def sweep_wall_s(trials: Sequence[TrialRow]) -> float:
    """First trial start to last trial end: the time trials were running.

    Not the command's duration (imports, Ray start, the best model's test and shutdown are
    outside it) and not caviar's ``wall_seconds`` (which starts before Ray does), so it
    compares the same span for every system.
    """
    if not trials:
        raise BenchError("the sweep recorded no trials")
    return max(t.end_s for t in trials) - min(t.start_s for t in trials)


def best_at_deepest(trials: Iterable[TrialRow]) -> float | None:
    """The best final validation accuracy among the trials that trained the most epochs.

    The same rule for every system, and caviar's own ranking rule (deepest rung first, then
    the objective): a trial stopped at epoch 2 with a lucky score does not count as best.
    Normally the deepest is the full budget.
    """
    scored = [(t.epochs, t.last_val_accuracy) for t in trials if t.last_val_accuracy is not None]
    if not scored:
        return None
    deepest = max(epochs for epochs, _ in scored)
    return max(value for epochs, value in scored if epochs == deepest)


def summarize(read: SweepRead, command: Timed, slots: int) -> dict[str, Any]:
    """The per-run numbers the harness prints and stores (docs/performance.md defines them).

    ``before_first_trial_s`` and ``after_last_trial_s`` split the end-to-end time around the
    sweep: imports, store and Ray start, first workers' setup before; the best model's test,
    logging and shutdown after. They mix the store's clock with this machine's, which are the
    same clock here.
    """
    wall = sweep_wall_s(read.trials)
    training = sum(t.epoch_seconds for t in read.trials)
    first = min(t.start_s for t in read.trials)
    last = max(t.end_s for t in read.trials)
    return {
        "end_to_end_s": command.seconds,
        "sweep_wall_s": wall,
        "before_first_trial_s": first - command.started_at,
        "after_last_trial_s": command.ended_at - last,
        "trials": len(read.trials),
        "trials_per_min": 60.0 * len(read.trials) / wall if wall > 0 else None,
        "epochs_trained": sum(t.epochs for t in read.trials),
        "best_val_accuracy": best_at_deepest(read.trials),
        "training_s": training,
        "training_fraction": training / (wall * slots) if wall > 0 else None,
        "outcomes": _count(t.outcome for t in read.trials),
        **read.extra,
    }


def _count(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _client(db_path: Path) -> Any:
    if not db_path.exists():
        raise BenchError(f"no MLflow store at {db_path}")
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{db_path}")


def _experiment_runs(client: Any, experiment: str) -> list[Any]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise BenchError(f"no MLflow experiment {experiment!r} in {client.tracking_uri}")
    return list(client.search_runs([found.experiment_id], max_results=50_000))


@dataclass(frozen=True)
class _Span:
    start_s: float
    end_s: float
    epoch_seconds: float


def _span(client: Any, run: Any) -> _Span:
    """A trial's span from its MLflow run, and its time inside training steps.

    The span is the run's start and end time, widened to cover its results: from its first
    epoch's start (the first result's timestamp minus that epoch's ``epoch_seconds``) to its
    last result's timestamp. caviar writes to MLflow from a background queue, so its run can
    be created tens of milliseconds after the trial's first step began; the widening measures
    every system's span from the trial's own events, never shorter than they were.
    """
    start, end = run.info.start_time, run.info.end_time
    if start is None or end is None:
        raise BenchError(f"MLflow run {run.info.run_id} has no start or end time (still running?)")
    start_s, end_s = start / 1000.0, end / 1000.0
    history = sorted(
        client.get_metric_history(run.info.run_id, "epoch_seconds"),
        key=lambda m: (m.step, m.timestamp),
    )
    if history:
        start_s = min(start_s, history[0].timestamp / 1000.0 - history[0].value)
        end_s = max(end_s, max(m.timestamp for m in history) / 1000.0)
    return _Span(start_s, end_s, sum(m.value for m in history))


def read_caviar(db_path: Path, experiment: str) -> SweepRead:
    """A ``caviar run``: the parent run's summary and one nested child run per trial."""
    client = _client(db_path)
    runs = _experiment_runs(client, experiment)
    parents = [r for r in runs if r.data.tags.get("caviar.kind") == "sweep"]
    if len(parents) != 1:
        raise BenchError(f"expected one caviar parent run in {db_path}, found {len(parents)}")
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = []
    for child in children:
        span = _span(client, child)
        trials.append(
            TrialRow(
                start_s=span.start_s,
                end_s=span.end_s,
                epochs=int(child.data.tags.get("caviar.last_epoch", 0)),
                last_val_accuracy=_finite(child.data.metrics.get("val_accuracy")),
                epoch_seconds=span.epoch_seconds,
                config=dict(child.data.params),
                outcome=child.data.tags.get("caviar.outcome", "unknown"),
            )
        )
    metrics = parent.data.metrics
    extra = {
        "caviar_wall_seconds": metrics.get("wall_seconds"),
        "caviar_epochs_trained": metrics.get("epochs_trained"),
        "caviar_best_val_accuracy": metrics.get("best_val_accuracy"),
        "caviar_test_accuracy": metrics.get("test_accuracy"),
        "parent_status": parent.info.status,
    }
    return SweepRead(trials, extra)


def read_ray_tune(db_path: Path, experiment: str, max_epochs: int) -> SweepRead:
    """The Ray Tune baseline: ``MLflowLoggerCallback`` makes one top-level run per trial."""
    client = _client(db_path)
    trials = []
    for run in _experiment_runs(client, experiment):
        span = _span(client, run)
        metrics = run.data.metrics
        epochs = int(metrics.get("epoch", metrics.get("training_iteration", 0)))
        trials.append(
            TrialRow(
                start_s=span.start_s,
                end_s=span.end_s,
                epochs=epochs,
                last_val_accuracy=_finite(metrics.get("val_accuracy")),
                epoch_seconds=span.epoch_seconds,
                config=mlp_config(run.data.params, max_epochs),
                outcome=_outcome(run.info.status, epochs, max_epochs),
            )
        )
    return SweepRead(trials)


def _outcome(status: str, epochs: int, max_epochs: int) -> str:
    if status == "FAILED":
        return "failed"
    return "completed" if epochs >= max_epochs else "stopped_early"


def read_optuna(
    storage_url: str,
    study_name: str,
    timing_dir: Path,
    max_epochs: int,
    fixed: Mapping[str, Any],
) -> SweepRead:
    """The Optuna baseline: trials from its storage, per-trial step times from its workers.

    ``fixed`` is the spec's constants: Optuna stores only what it sampled.

    Optuna's storage has no per-epoch timings, and writing them there would add storage round
    trips that a user would not make, so each worker writes its own ``worker-<i>.json``
    (trial number -> seconds in training steps) when it exits.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    step_seconds = _optuna_step_seconds(timing_dir)
    trials = []
    for trial in study.get_trials(deepcopy=False):
        if trial.datetime_start is None or trial.datetime_complete is None:
            raise BenchError(f"Optuna trial {trial.number} never finished ({trial.state.name})")
        steps = trial.intermediate_values
        last = steps[max(steps)] if steps else None
        trials.append(
            TrialRow(
                start_s=trial.datetime_start.timestamp(),
                end_s=trial.datetime_complete.timestamp(),
                epochs=len(steps),
                last_val_accuracy=_finite(last),
                epoch_seconds=step_seconds.get(trial.number, 0.0),
                config=mlp_config({**fixed, **trial.params}, max_epochs),
                outcome={"COMPLETE": "completed", "PRUNED": "stopped_early"}.get(
                    trial.state.name, trial.state.name.lower()
                ),
            )
        )
    missing = {t.number for t in study.get_trials(deepcopy=False)} - set(step_seconds)
    return SweepRead(trials, {"trials_without_timing": len(missing)})


def _optuna_step_seconds(timing_dir: Path) -> dict[int, float]:
    files = sorted(timing_dir.glob("worker-*.json"))
    if not files:
        raise BenchError(f"no Optuna worker timing files in {timing_dir}")
    seconds: dict[int, float] = {}
    for path in files:
        data: Mapping[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        for number, value in data["epoch_seconds"].items():
            seconds[int(number)] = float(value)
    return seconds


def read_caviar_journal(storage_dir: Path) -> SweepRead:
    """A ``caviar run`` from its journal (``caviar_runs/<name>/<sweep>/journal.jsonl``).

    The same spans as :func:`read_caviar` reads from MLflow: from a trial's first epoch start
    (its first result's ``ended_at`` minus that epoch's ``epoch_seconds``) to the driver's
    record of its end, so a sweep that logged nothing (bench/untracked.py) and one that logged
    everything are measured alike.
    """
    from orchestrator.store.journal import read_journal

    journals = sorted(storage_dir.glob("*/*/journal.jsonl"))
    if len(journals) != 1:
        raise BenchError(f"expected one caviar journal under {storage_dir}, found {len(journals)}")
    state = read_journal(journals[0])
    trials = []
    for trial in state.trials.values():
        if not trial.history or trial.ended_at is None:
            raise BenchError(f"journal trial {trial.index} has no results or never ended")
        first = trial.history[0]
        start = float(first["ended_at"]) - float(first.get("epoch_seconds", 0.0))
        trials.append(
            TrialRow(
                start_s=min(start, trial.started_at or start),
                end_s=max(trial.ended_at, float(trial.history[-1]["ended_at"])),
                epochs=int(trial.history[-1]["epoch"]),
                last_val_accuracy=_finite(trial.history[-1].get("val_accuracy")),
                epoch_seconds=sum(float(e.get("epoch_seconds", 0.0)) for e in trial.history),
                config=dict(trial.config),
                outcome=str(trial.state),
            )
        )
    read = SweepRead(trials)
    # Worker processes that ran trials: one per slot when every actor was reused.
    pids = {e["worker_pid"] for t in state.trials.values() for e in t.history if "worker_pid" in e}
    if pids:
        read.extra["worker_processes"] = len(pids)
    return read
