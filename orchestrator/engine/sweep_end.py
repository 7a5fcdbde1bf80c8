"""How a sweep ends: what it logs by how it ended (totals, the report's analysis and plots, or
an interrupted sweep's KILLED children), and what the user is told when it was interrupted.

The run's end itself (statuses, marker, what MLflow missed) is ``store/lifecycle.py``'s."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from orchestrator.engine.sweep import Sweep, records
from orchestrator.resume import resume_command
from orchestrator.spec import SweepSpec
from orchestrator.store import layout
from orchestrator.store.lifecycle import FINISHED, KILLED, Ending, RunLifecycle
from orchestrator.store.tracking import SweepTracker
from orchestrator.sweep_result import SweepResult
from orchestrator.trials import FINAL_STATES, member_epochs, trial_key

INTERRUPTED_NOTE = (
    "\ncaviar: interrupted: stopping the trials and saving what finished "
    "(Ctrl-C again stops at once; nothing already journaled is lost)"
)


def sweep_ending(
    sweep: Sweep, run: RunLifecycle, result: SweepResult, started: float, draw_later: bool
) -> Callable[[str], Ending]:
    """What the sweep logs as it ends, by how it ended.

    An interrupted sweep's children end KILLED and it gets no totals or report: those come
    when ``--resume`` finishes it."""

    def ending(status: str) -> Ending:
        result.status = status
        if isinstance(run.interruption, KeyboardInterrupt):
            print(INTERRUPTED_NOTE, file=sweep.stream, flush=True)
        if not result.records:
            result.records = records(sweep.sweep_id)
        result.wall_seconds = time.monotonic() - started

        def report() -> None:
            draw = _report(result, sweep.tracker, sweep.stream) if status == FINISHED else None
            if draw is not None and not draw_later:
                draw()
                draw = None
            result.draw_report = draw

        return Ending(
            summary=None if status == KILLED else (_summary_metrics(result), _summary_tags(result)),
            child_outcomes={str(r.index): r.state for r in result.records},
            before_end=report,
        )

    return ending


def interrupted_message(spec: SweepSpec, result: SweepResult, shown_spec: str) -> str:
    ended = sum(1 for r in result.records if r.state in FINAL_STATES)
    remaining = spec.num_trials() - ended
    return (
        f"sweep {result.name} ({result.sweep_id}) interrupted after "
        f"{result.wall_seconds:.1f} s: {ended} of {spec.num_trials()} trials ended, "
        f"{remaining} remain (MLflow parent run {result.parent_run_id} marked KILLED).\n"
        f"caviar: finish it with:  {resume_command(shown_spec)}"
    )


def _report(
    result: SweepResult, tracker: SweepTracker, stream: TextIO
) -> Callable[..., None] | None:
    """Importance, each round's best and median on the parent run (and in ``result``, for
    the summary); returns what draws the report's plots and page onto the parent run.

    Built from what MLflow now holds (the same path as ``caviar report``), so what the UI
    shows and what the command writes cannot disagree. A failure here costs the report, never
    the sweep: everything it would summarise is already logged.
    """
    from orchestrator.report.page import analyse
    from orchestrator.store.tracking import read_sweep

    try:
        history = read_sweep(tracker.uri, result.parent_run_id)
        report = analyse(history)
        metrics = {f"importance.{k}": v for k, v in report.importance.items()}
        tags: dict[str, str] = {}
        for round_number, best in report.best_by_round.items():
            value = best.metric(history.metric)
            if value is not None:
                metrics[f"round{round_number}.best_{history.metric}"] = value
            tags[layout.round_best_run_id(round_number)] = best.run_id
        for round_number, median in report.median_by_round.items():
            metrics[f"round{round_number}.median_completed_{history.metric}"] = median
        for round_number, importance in report.importance_by_round.items():
            for name, share in importance.items():
                metrics[f"round{round_number}.importance.{name}"] = share
        tracker.log_summary(metrics, tags)
        result.importance = report.importance
        result.best_by_round = {
            r: (b.index, b.metric(history.metric)) for r, b in report.best_by_round.items()
        }
        result.median_by_round = report.median_by_round
    except Exception as error:  # the sweep is logged; a broken report must not fail it
        print(f"caviar: warning: the report could not be built ({error})", file=stream)
        return None

    def draw(warn: Callable[[str], None] | None = None) -> None:
        """``warn``: where a failure is told (default: the sweep's stream)."""
        import tempfile

        from orchestrator.report.page import write_report
        from orchestrator.store.tracking import ui_base

        try:
            with tempfile.TemporaryDirectory() as tmp:
                files = write_report(history, Path(tmp), ui_base(tracker.uri), analysed=report)
                for path in files.files:
                    tracker.log_parent_file(path, "report")
        except Exception as error:  # a broken plot costs the plots, never the sweep
            note = f"caviar: warning: the report's plots could not be drawn ({error})"
            if warn is not None:
                warn(note)
            else:
                print(note, file=stream)

    return draw


def _summary_metrics(result: SweepResult) -> dict[str, float]:
    metrics: dict[str, float] = {
        f"trials_{outcome}": float(count) for outcome, count in result.counts.items()
    }
    metrics["epochs_trained"] = float(result.epochs_trained)
    metrics["fused_packs"] = float(len({r.pack for r in result.records if r.pack is not None}))
    fused, alone = member_epochs(result.records)
    metrics["epochs_fused"], metrics["epochs_alone"] = float(fused), float(alone)
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
        tags[layout.BEST_TRIAL_ID] = trial_key(result.sweep_id, result.best.index)
        tags[layout.BEST_TRIAL_INDEX] = str(result.best.index)
        if result.best_run_id:
            tags[layout.BEST_RUN_ID] = result.best_run_id
    if result.model_uri:
        tags[layout.MODEL_URI] = result.model_uri
    return tags
