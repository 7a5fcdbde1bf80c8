"""The end of a panda session in the terminal: what trained, what changed, where it is logged."""

from __future__ import annotations

from orchestrator.panda.command import PandaResult, best_epoch
from orchestrator.store.tracking import ui_command

ENDINGS = {
    "budget": "ran its epoch budget",
    "stopped": "stopped by a person",
    "rule:stop": "stopped by the stop rule",
    "diverged": "diverged",
}


def format_summary(result: PandaResult) -> str:
    outcome = result.outcome
    lineage = outcome.lineage
    branch = lineage.branch()
    trained = sum(len(s.trial.history) for s in lineage.segments.values())
    lines = [
        "",
        f"Panda {result.name} ({result.session_id}) {ENDINGS.get(outcome.status, outcome.status)} "
        f"in {result.wall_seconds:.1f} s",
        f"  model:           epoch {lineage.epoch}, {len(lineage.segments)} segments, "
        f"{trained} epochs trained in all",
    ]
    best = best_epoch(branch, result.metric, result.mode)
    if best is not None:
        lines.append(
            f"  best {result.metric}: {float(best[result.metric]):.4f} at epoch {best['epoch']} "
            "(current branch)"
        )
    if branch:
        last = branch[-1]
        if result.metric in last:
            lines.append(f"  last {result.metric}: {float(last[result.metric]):.4f}")
    if outcome.test_accuracy is not None:
        lines.append(f"  test accuracy:   {outcome.test_accuracy:.4f} (the final model, once)")
    if result.replay_of is not None and result.target is not None and branch:
        final = branch[-1].get(result.metric)
        if final is not None:
            lines.append(
                f"  replay:          final {result.metric} {float(final):.4f} against PBT "
                f"trial #{result.replay_of}'s {result.target:.4f} "
                f"(difference {float(final) - result.target:+.4f})"
            )
    if outcome.pauses:
        paused = sum(p.seconds or 0.0 for p in outcome.pauses)
        at = ", ".join(str(p.epoch) for p in outcome.pauses[-8:])
        times = "once" if len(outcome.pauses) == 1 else f"{len(outcome.pauses)} times"
        lines.append(f"  paused:          {times}, {paused:.1f} s in all (at epoch {at})")
    changes = [s for s in lineage.segments.values() if s.parent is not None]
    if changes:
        lines.append("  changes:")
        for s in changes:
            what = ", ".join(f"{k}={_fmt(v)}" for k, v in s.changes.items()) or "no change"
            how = "rewind to" if s.reason == "rewind" else "at"
            lines.append(f"    segment {s.index}: {how} epoch {s.start_epoch}: {what} ({s.by})")
    lines.append(
        "  now:             "
        + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(lineage.current.config.items()))
    )
    lines += [
        f"  MLflow:          experiment {result.experiment!r}, parent run {result.parent_run_id}",
        f"                   store {result.tracking_uri}",
    ]
    if result.model_uri:
        lines.append(f"  final model:     {result.model_uri} (mlflow.pytorch.load_model)")
    lines += [
        f"  open the UI:     {ui_command(result.tracking_uri)}",
        f"  branches chart:  caviar report {result.parent_run_id}",
        f"  session folder:  {result.folder}",
    ]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
