"""``caviar revisit``: do a past sweep's best configurations still rank the same on today's data?

The seeds: "re-evaluate hyperparameters every few months"; intuitions and best configs go
stale as data changes. Revisiting re-trains a sweep's top K configurations (ASHA-aware
ranking, the sweep's own) for the full epoch budget, with the spec the sweep ran (read back
from its MLflow parent run) on the data as it is now, and compares old and new rank and score;
a configuration whose rank moved is flagged. The revisit is a parent run of its own in the
sweep's experiment, laid out as a sweep's (so `caviar report RUN_ID` reads it), each child
tagged with its old rank and run; its tags ``caviar.kind = revisit``, ``caviar.revisits`` (the
old parent run) and ``caviar.revisit.top`` keep it apart from the sweeps: an experiment's name
still means its newest sweep to `caviar report` and `caviar revisit`.

On unchanged data a configuration that completed in the sweep scores exactly as it did (same
seed, same data, same code): any difference is the data's.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from orchestrator.panda.changes import PandaError
from orchestrator.panda.session_layout import epoch_metrics
from orchestrator.panda.trainer import Trainer
from orchestrator.search.ranking import ranked
from orchestrator.spec import SweepSpec, parse_spec_text
from orchestrator.store import layout
from orchestrator.store.lifecycle import FINISHED, Ending, NewParent, RunLifecycle, new_run_id
from orchestrator.store.panda_runs import read_spec_artifact
from orchestrator.store.tracking import SweepTracker, read_sweep
from orchestrator.trials import Trial, TrialState, classify_finished

TrainerFactory = Callable[[SweepSpec, Any, Path | None], Trainer]


@dataclass
class Revisited:
    """One configuration, then and now."""

    config: dict[str, Any]
    old_rank: int
    old_score: float | None
    old_run_id: str
    new_score: float | None = None
    new_rank: int | None = None
    state: str = "completed"

    @property
    def moved(self) -> bool:
        return self.new_rank != self.old_rank


@dataclass
class RevisitResult:
    name: str
    old_run_id: str
    new_run_id: str
    metric: str
    mode: str
    rows: list[Revisited]
    tracking_uri: str


def new_ranks(rows: list[Revisited], mode: str) -> None:
    """Rank by the new score, best first; a diverged (None) score ranks last; ties keep the
    old order."""

    def key(row: Revisited) -> tuple[int, float, int]:
        score = row.new_score
        if score is None or not math.isfinite(score):
            return (1, 0.0, row.old_rank)
        return (0, -score if mode == "max" else score, row.old_rank)

    for rank, row in enumerate(sorted(rows, key=key), start=1):
        row.new_rank = rank


def revisit(
    target: str,
    top: int,
    tracking_uri: str,
    make_trainer: TrainerFactory,
    spec_dir: Path,
    stream: TextIO | None = None,
) -> RevisitResult:
    stream = stream or sys.stdout
    if top < 1:
        raise PandaError(f"--top must be >= 1, got {top}")
    history = read_sweep(tracking_uri, target, kinds=(layout.SWEEP,), announce=stream)
    filename, text = read_spec_artifact(history.parent_run_id, history.tracking_uri)
    spec = parse_spec_text(text, filename, spec_dir=spec_dir)
    mode = "min" if history.mode == "min" else "max"
    best = ranked(history.trials, history.metric, mode, history.milestones)[:top]
    if not best:
        raise PandaError(f"sweep {history.parent_run_id} has no ranked trial to revisit")
    rows = [
        Revisited(
            {**t.config, "epochs": spec.max_epochs},
            rank,
            t.metric(history.metric),
            str(t.run_id),
        )
        for rank, t in enumerate(best, start=1)
    ]
    from orchestrator.spec.data import class_names_param, load_data

    data = load_data(spec.data, spec_dir)
    revisit_id = new_run_id()
    parent = NewParent(
        kind=layout.REVISIT,
        run_id=revisit_id,
        run_name=f"{spec.name}-revisit-{revisit_id}",
        spec_hash=spec.spec_hash(),
        spec_text=text,
        spec_filename=filename,
        tags={
            layout.REVISITS: history.parent_run_id,
            layout.REVISIT_TOP: str(len(rows)),
            layout.TRAINABLE: spec.trainable,
        },
        params={
            "data.source": spec.data.source,
            "data.sizes": data.sizes(),
            "data.classes": class_names_param(data),
            "trainable": spec.trainable,
            "objective": f"{history.mode} {history.metric}",
            "scheduler.kind": "fifo",
            "scheduler.max_epochs": spec.max_epochs,
            "search.strategy": "revisit",
            "search.num_trials": len(rows),
        },
    )
    # A revisit keeps no folder: nothing resumes it, so it has no marker on disk.
    run = RunLifecycle.start(history.tracking_uri, history.name, parent, stream)
    print(
        f"caviar: revisiting the top {len(rows)} of sweep {history.parent_run_id} on the data as "
        f"it is now ({spec.data.source} {data.sizes()}); MLflow run {run.parent_run_id}",
        file=stream,
        flush=True,
    )
    trainer: Trainer | None = None

    def ending(status: str) -> Ending:
        """The trainer released; a finished revisit's rank changes logged."""
        if trainer is not None:
            trainer.close()
        if status != FINISHED:
            return Ending()
        new_ranks(rows, history.mode)
        return Ending(
            summary=(
                {"revisit.rank_changes": float(sum(r.moved for r in rows))},
                {layout.REVISIT_MOVED: ",".join(str(r.old_rank) for r in rows if r.moved)},
            )
        )

    with run.running(ending):
        trainer = make_trainer(spec, data, spec_dir)
        for index, row in enumerate(rows):
            _train(trainer, run.tracker, index, row, history.metric)
            shown = "-" if row.new_score is None else f"{row.new_score:.4f}"
            print(f"caviar:   config #{row.old_rank} {history.metric} {shown}", file=stream)
    if run.interruption is not None:  # ended KILLED; nothing to resume: Ctrl-C goes on up
        raise run.interruption
    return RevisitResult(
        history.name,
        history.parent_run_id,
        run.parent_run_id,
        history.metric,
        history.mode,
        rows,
        history.tracking_uri,
    )


def _train(
    trainer: Trainer, tracker: SweepTracker, index: int, row: Revisited, metric: str
) -> None:
    """One configuration for its full budget, logged as the revisit's child ``index``."""
    key = str(index)
    tracker.trial_started(
        key,
        run_name=f"trial-{index:03d}",
        params=row.config,
        tags={
            layout.TRIAL_INDEX: key,
            layout.ROUND: "1",
            layout.REVISIT_OLD_RANK: str(row.old_rank),
            layout.REVISIT_OLD_RUN_ID: row.old_run_id,
        },
        started_at=time.time(),
    )
    trainer.start(row.config)
    record = Trial(index, row.config)
    while True:
        result = trainer.step()
        record.history.append(result)
        tracker.trial_metrics(key, epoch_metrics(result), int(result["epoch"]))
        if result.get("diverged") or int(result["epoch"]) >= int(row.config["epochs"]):
            break
    state = classify_finished(record, int(row.config["epochs"]))
    row.state = str(state)
    row.new_score = record.metric(metric) if state is not TrialState.DIVERGED else None
    tracker.trial_ended(
        key,
        {layout.OUTCOME: str(state), layout.LAST_EPOCH: str(record.epochs)},
        "FAILED" if state is TrialState.DIVERGED else "FINISHED",
    )


def format_revisit(result: RevisitResult) -> str:
    lines = [
        "",
        f"Revisit of sweep {result.old_run_id} ({result.name}): top {len(result.rows)} "
        f"re-trained on today's data, MLflow run {result.new_run_id}",
        f"  {'old rank':>8}  {'new rank':>8}  {'old ' + result.metric:>18}  "
        f"{'new ' + result.metric:>18}",
    ]
    for row in sorted(result.rows, key=lambda r: r.old_rank):
        old = "-" if row.old_score is None else f"{row.old_score:.4f}"
        new = "-" if row.new_score is None else f"{row.new_score:.4f}"
        flag = "  <- moved" if row.moved else ""
        lines.append(f"  {row.old_rank:>8}  {row.new_rank!s:>8}  {old:>18}  {new:>18}{flag}")
    moved = sum(r.moved for r in result.rows)
    lines.append(
        f"  {moved} of {len(result.rows)} configurations changed rank"
        + ("" if moved else ": the sweep's ranking still holds")
    )
    return "\n".join(lines)
