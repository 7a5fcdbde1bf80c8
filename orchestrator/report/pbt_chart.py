"""A population-based training sweep's picture: the population's tree, and each perturbed
parameter's schedule along the best trial's line.

Top: every trial's objective against epochs, each copy drawn as a jump from the donor's curve
to the copying trial at the copy's epoch, and the best trial's line (the trials its weights
came through, ``search.pbt.line_of``) drawn over them. Bottom: the values that line trained
with, one panel per perturbed parameter, as steps at the copies (log axes for ranges searched
on a log scale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.report import figures
from orchestrator.search.pbt import Exploit, line_of
from orchestrator.store.history import SweepHistory
from orchestrator.trials import Trial


def plot_pbt(history: SweepHistory, best: Trial | None, path: Path) -> Path | None:
    """The PNG, or None for a sweep without copies."""
    import matplotlib.pyplot as plt

    if not history.pbt_lineage or not history.trials:
        return None
    exploits = [Exploit.from_json(e) for e in history.pbt_lineage]
    curves = {t.index: dict(t.curve(history.metric)) for t in history.trials}
    line = []
    if best is not None:
        sampled = {k for e in exploits for k in e.after}
        initial = {
            t.index: {k: t.config[k] for k in sampled if k in t.config} for t in history.trials
        }
        line = line_of(best.index, best.epochs, exploits, initial)
    # The panels: the values that change along that line (a shape never does: a copy keeps
    # its donor's), else every value a copy changed.
    names = sorted({k for s in line for k in s.values if _differs(line, k)}) or sorted(
        {k for e in exploits for k, v in e.after.items() if v != e.before.get(k)}
    )
    rows = 1 + max(1, len(names))
    fig, axes = plt.subplots(
        rows, 1, figsize=(9, 4 + 1.6 * (rows - 1)), sharex=True, squeeze=False,
        gridspec_kw={"height_ratios": [3] + [1] * (rows - 1)},
    )  # fmt: skip
    tree = axes[0][0]
    for _, curve in sorted(curves.items()):
        if curve:
            epochs = sorted(curve)
            tree.plot(epochs, [curve[e] for e in epochs], color="grey", alpha=0.4, lw=1)
    for event in exploits:
        donor, trial = curves.get(event.from_trial, {}), curves.get(event.trial, {})
        if event.epoch in donor and event.epoch in trial:
            tree.annotate(
                "",
                xy=(event.epoch, donor[event.epoch]),
                xytext=(event.epoch, trial[event.epoch]),
                arrowprops={"arrowstyle": "->", "color": "tab:orange", "alpha": 0.7, "lw": 1},
            )
    if best is not None:
        previous: dict[int, float] = {}
        for segment in line:
            curve = curves.get(segment.trial, {})
            # From the copy on: the weights were the donor's at the copy's epoch.
            points = [(segment.start, previous[segment.start])] if segment.start in previous else []
            points += [(e, curve[e]) for e in sorted(curve) if segment.start < e <= segment.end]
            if points:
                xs, ys = zip(*points, strict=True)
                tree.plot(xs, ys, color="tab:blue", lw=2.2)
                if segment.start > 0:
                    tree.text(xs[0], ys[0], f" #{segment.trial}", fontsize=8, va="bottom")
            previous = curve
        path_text = " -> ".join(f"#{segment.trial}" for segment in line)
        tree.plot(
            [], [], color="tab:blue", lw=2.2,
            label=f"the line of best trial #{best.index}'s final weights: {path_text}",
        )  # fmt: skip
    tree.plot([], [], color="tab:orange", label="a copy: the bottom trial takes a top one's")
    tree.set_ylabel(history.metric)
    tree.set_title(
        f"{history.name}: population-based training, {len(history.trials)} trials, "
        f"{len(exploits)} copies"
    )
    tree.grid(True, alpha=0.25)
    tree.legend(loc="lower right", fontsize=8)
    for row, name in enumerate(names or ["(no value changed)"], start=1):
        ax = axes[row][0]
        steps = _schedule(line, name)
        if steps:
            xs, ys = zip(*steps, strict=True)
            ax.step(xs, ys, where="post", color="tab:blue")
            if _logarithmic(history, name):
                ax.set_yscale("log")
        ax.set_ylabel(name, fontsize=8)
        if row == 1:
            ax.set_title("the values that line trained with", fontsize=9)
        ax.grid(True, alpha=0.25)
    axes[-1][0].set_xlabel("epoch")
    fig.tight_layout()  # rows of varying count and labels: measured, not fixed
    return figures.save(fig, path)


def _differs(line: list[Any], name: str) -> bool:
    return len({repr(segment.values.get(name)) for segment in line}) > 1


def _schedule(line: list[Any], name: str) -> list[tuple[int, float]]:
    """(epoch, value) steps of ``name`` along the line, ending at its last epoch."""
    steps = []
    for segment in line:
        value = segment.values.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            steps.append((segment.start, float(value)))
    if steps and line:
        steps.append((line[-1].end, steps[-1][1]))
    return steps


def _logarithmic(history: SweepHistory, name: str) -> bool:
    described = str(history.params.get(f"space.{name}", ""))
    return described.startswith(("log[", "logint["))
