"""The MLflow writer's CPU per trial: what one one-epoch trial's run costs the driver's writer
thread, through caviar's sink one trial at a time and several at once, against MLflow's ORM
models in one bare transaction per group (the floor).

The overhead benchmark's ``--trials 1024 --reports 1`` run (issue 27, goal 4) spends about as
much driver CPU in the MLflow writer thread as in Tune's loop (docs/performance.md). This
times the writer's part alone, on one thread, with nothing else running in the process:

- ``sink``: caviar's ``MlflowSink.write_trial`` for a trial's start, one epoch's metrics and its
  end, one trial at a time (MLflow's public client: create the run, ``log_batch``,
  ``set_terminated``; each call opens its own store sessions): what the writer did before
  ``write_trials``, and still does with ``CAVIAR_NO_SPEEDUPS=1``;
- ``together``: ``MlflowSink.write_trials`` with ``--group`` trials per delivery, as the
  batched writer now calls it (``store/bulk_sql.py``: one transaction per delivery);
- ``one_transaction``: the same rows (run, tags, params, metrics, latest metrics, end) added
  through MLflow's own SQLAlchemy models in one session per ``--group`` trials, with none of
  the checks the public calls make (validation, an active model, NaN handling, existing
  rows): the floor that ``together`` approaches.

Each repetition writes ``--trials`` trials into a fresh store per arm; the arms alternate.

    .venv/bin/python -m bench.sink_bench --trials 256 --reps 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: find `bench`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, machine_info, median, write_json

METRICS = ("val_accuracy", "epoch_seconds", "val_loss", "train_loss")


def _sink(folder: Path) -> Any:
    from orchestrator.store.mlflow_sink import MlflowSink

    sink = MlflowSink(f"sqlite:///{folder / 'mlflow.db'}", "sink-bench")
    with contextlib.chdir(folder):  # the store's artifacts (./mlruns) in its folder
        sink.open()
        sink.create_parent("sweep", {}, {"x": 1}, "name: x\n", "spec.yaml")
    return sink


def _trial_ops(index: int, now_ms: int) -> list[Any]:
    """What the observer queues for a one-epoch trial (the overhead benchmark's)."""
    from orchestrator.store.writer import EndRun, LogMetrics, MetricPoint, StartRun

    key = str(index)
    tags = {
        "caviar.trial_id": f"bench-{index:03d}",
        "caviar.ray_trial_id": f"{index:05d}",
        "caviar.trial_index": key,
        "caviar.round": "1",
        "caviar.sampled": "seed",
    }
    params = {"seed": index, "step_seconds": 0.01, "step_kind": "spin"}
    points = tuple(MetricPoint(name, 0.5, now_ms, 1) for name in METRICS)
    end_tags = {"caviar.outcome": "completed", "caviar.last_epoch": "1"}
    return [
        StartRun(key, f"trial-{index:03d}", params, tags, now_ms),
        LogMetrics(key, points),
        EndRun(key, "FINISHED", end_tags, now_ms),
    ]


def write_with_sink(folder: Path, trials: int, group: int) -> None:
    sink = _sink(folder)
    now = int(time.time() * 1000)
    for index in range(trials):
        sink.write_trial(str(index), _trial_ops(index, now))


def write_together(folder: Path, trials: int, group: int) -> None:
    """caviar's sink as the batched writer now calls it: ``write_trials`` with the trials of
    one delivery (``--group`` of them), written in one transaction (store/bulk_sql.py)."""
    sink = _sink(folder)
    now = int(time.time() * 1000)
    for first in range(0, trials, group):
        indices = range(first, min(trials, first + group))
        sink.write_trials({str(index): _trial_ops(index, now) for index in indices})


def write_one_transaction(folder: Path, trials: int, group: int) -> None:
    from mlflow.store.tracking.dbmodels.models import (
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )

    sink = _sink(folder)
    store = sink.client._tracking_client.store
    location = sink.client.get_experiment(sink.experiment_id).artifact_location
    now = int(time.time() * 1000)
    for first in range(0, trials, group):
        with store.ManagedSessionMaker(read_only=False) as session:
            for index in range(first, min(trials, first + group)):
                start, _, end = _trial_ops(index, now)
                run_id = uuid.uuid4().hex
                run = SqlRun(
                    name=start.name,
                    artifact_uri=f"{location}/{run_id}/artifacts",
                    run_uuid=run_id,
                    experiment_id=int(sink.experiment_id),
                    source_type="UNKNOWN",
                    source_name="",
                    entry_point_name="",
                    user_id="unknown",
                    status=end.status,
                    start_time=start.started_ms,
                    end_time=end.ended_ms,
                    deleted_time=None,
                    source_version="",
                    lifecycle_stage="active",
                )
                tags = {
                    "mlflow.parentRunId": sink.parent_run_id,
                    "mlflow.runName": start.name,
                    **start.tags,
                    **end.tags,
                }
                run.tags = [SqlTag(key=k, value=v) for k, v in tags.items()]
                run.params = [SqlParam(key=k, value=str(v)) for k, v in start.params.items()]
                session.add(run)
                for name in METRICS:
                    for model in (SqlMetric, SqlLatestMetric):
                        session.add(
                            model(
                                key=name, value=0.5, timestamp=now, step=1, is_nan=False,
                                run_uuid=run_id,
                            )
                        )  # fmt: skip


ARMS: dict[str, Callable[[Path, int, int], None]] = {
    "sink": write_with_sink,
    "together": write_together,
    "one_transaction": write_one_transaction,
}


def cpu_per_trial_ms(arm: str, trials: int, group: int, root: Path) -> float:
    """This thread's CPU per trial writing ``trials`` trials (the store's creation excluded)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{arm}-", dir=root))
    started = time.thread_time()
    ARMS[arm](folder, trials, group)
    return 1000.0 * (time.thread_time() - started) / trials


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sink_bench",
        description="The MLflow writer's CPU per one-epoch trial.",
    )
    parser.add_argument("--trials", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--group", type=int, default=8, help="trials per one_transaction")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "sink_bench.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    runs: dict[str, list[float]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="caviar-sink-bench-") as tmp:
        for arm in ARMS:  # a warm-up of each: imports, the template store
            cpu_per_trial_ms(arm, 8, args.group, Path(tmp))
        for _ in range(args.reps):
            for arm in ARMS:
                runs[arm].append(cpu_per_trial_ms(arm, args.trials, args.group, Path(tmp)))
    medians = {arm: median(values) for arm, values in runs.items()}
    write_json(
        {"benchmark": "sink", "machine": machine_info(), "settings": vars(args), "runs": runs,
         "medians": medians},
        args.out,
    )  # fmt: skip
    print(f"MLflow writer CPU per one-epoch trial, medians of {args.reps} (ms):")
    for arm, value in medians.items():
        spread = ", ".join(f"{v:.2f}" for v in runs[arm])
        print(f"  {arm:16s} {value:6.2f}  ({spread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
