"""The end-of-sweep summary a user reads in the terminal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from orchestrator.report.page import format_value
from orchestrator.report.ui_links import sweep_links, text_lines, ui_base
from orchestrator.store.uri import ui_command
from orchestrator.sweep_result import SweepResult
from orchestrator.trials import Trial, member_epochs, trial_key


def pack_sizes(records: Sequence[Trial]) -> list[int]:
    """Members per fused pack, in pack order (empty when no trial was packed)."""
    sizes = Counter(r.pack for r in records if r.pack is not None)
    return [sizes[pack] for pack in sorted(sizes)]


def _sizes_text(sizes: list[int]) -> str:
    counted = Counter(sizes)
    return ", ".join(
        f"{size}" if n == 1 else f"{size} (x{n})"
        for size, n in sorted(counted.items(), reverse=True)
    )


def format_summary(result: SweepResult) -> str:
    counts = result.counts
    outcome_text = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items())
    lines = [
        "",
        f"Sweep {result.name} ({result.sweep_id}) finished in {result.wall_seconds:.1f} s",
        f"  trials:          {len(result.records)} ({outcome_text})",
        f"  epochs trained:  {result.epochs_trained}",
    ]
    packs = pack_sizes(result.records)
    if packs:
        alone = len(result.records) - sum(packs)
        text = f"  fused packs:     {len(packs)} packs of {_sizes_text(packs)} trials"
        lines.append(text + (f", {alone} trial{'s' * (alone != 1)} alone" if alone else ""))
        fused_epochs, alone_epochs = member_epochs(result.records)
        lines.append(
            f"  trial epochs:    {fused_epochs} trained fused, {alone_epochs} alone "
            "(a lone trial, or a pack's last member)"
        )
    if result.best is None:
        lines.append("  best trial:      none (every trial diverged or failed)")
    else:
        best = result.best
        value = best.metric(result.metric)
        lines += [
            f"  best trial:      #{best.index} ({trial_key(result.sweep_id, best.index)}), "
            f"{best.state.replace('_', ' ')} "
            f"after {best.epochs} epochs",
            f"  best {result.metric}: {value:.4f}" if value is not None else "",
        ]
        if result.test_accuracy is not None:
            lines.append(
                f"  test accuracy:   {result.test_accuracy:.4f} (held-out split, evaluated once)"
            )
        sampled = {k: v for k, v in best.config.items()}
        # Under pbt the trial's values changed as it trained: its schedule follows (notes).
        lines.append("  best config:" if not result.notes else "  best config (as it started):")
        lines += [f"    {k}: {format_value(v, digits=6)}" for k, v in sorted(sampled.items())]
    lines += result.notes
    if len(result.best_by_round) > 1:
        for round_number, (index, value) in sorted(result.best_by_round.items()):
            shown = f"{value:.4f}" if value is not None else "-"
            median = result.median_by_round.get(round_number)
            median_text = f", median of completed {median:.4f}" if median is not None else ""
            lines.append(
                f"  round {round_number}:         best {result.metric} {shown} "
                f"(trial #{index}){median_text}"
            )
    if result.importance:
        ranking = ", ".join(f"{k} {v:.2f}" for k, v in result.importance.items())
        lines.append(f"  importance:      {ranking}")
    lines += [
        f"  MLflow:          experiment {result.experiment!r}, parent run {result.parent_run_id}",
        f"                   store {result.tracking_uri}",
        f"  open the UI:     {ui_command(result.tracking_uri)}",
        *_link_lines(result),
        f"  Ray results:     {result.storage_dir}",
    ]
    if result.undelivered:
        lines.append(
            f"  WARNING: {len(result.undelivered)} MLflow writes failed: {result.undelivered[:3]}"
        )
    return "\n".join(line for line in lines if line != "")


def _link_lines(result: SweepResult) -> list[str]:
    """Direct links past the UI's GenAI landing page: the runs table and the best trials."""
    if not result.experiment_id:
        return []
    base = ui_base(result.tracking_uri, ui_command(result.tracking_uri))
    links = sweep_links(base, result.experiment_id, result.ranked_run_ids)
    return text_lines(links, indent="  ")
