"""A panda session's report: every branch's curves on one chart, each change marked.

Read back from MLflow alone (``store/panda_runs.py``), like a sweep's report. Each segment is
drawn from the epoch it started at (joined to its parent's point there, so a branch visibly
leaves its parent), in its own colour; a rewind's start is a triangle, an adjustment's a
circle, each labelled with what changed and who asked. Epochs a rewind abandoned stay drawn,
faded: the old branch is part of the record.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from orchestrator.report import figures
from orchestrator.store import layout
from orchestrator.store.panda_runs import PandaHistory, SegmentRun

COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
CHART = "panda_branches.png"
PAGE = "report.html"  # as a sweep's report names its page (report/page.py, the README)


def session_title(history: PandaHistory) -> str:
    """The session as ``caviar panda`` names it: its spec's name and its id. The parent run's
    name is ``<spec>-panda-<id>``, which doubles "panda" for a spec named ``digits-panda``."""
    session = history.tags.get(layout.SWEEP_ID, "")
    suffix = f"-panda-{session}"
    if not session or not history.name.endswith(suffix):
        return history.name  # a run named otherwise: its name as it is
    return f"panda session {history.name.removesuffix(suffix)} ({session})"


def current_branch(history: PandaHistory) -> dict[int, float]:
    """The segments on the newest segment's path to the first, each with the last epoch it
    owns on that path (a parent's epochs after its child branched off are abandoned)."""
    by_index = {s.index: s for s in history.segments}
    if not by_index:
        return {}
    owned: dict[int, float] = {}
    index: int | None = max(by_index)
    upper = float("inf")
    while index is not None:
        owned[index] = upper
        upper = by_index[index].start_epoch
        index = by_index[index].parent
    return owned


def _joined(history: PandaHistory, segment: SegmentRun, metric: str) -> list[tuple[int, float]]:
    """The segment's curve, starting at its parent's point at its start epoch (if any)."""
    curve = list(segment.curves.get(metric, []))
    parent = next((s for s in history.segments if s.index == segment.parent), None)
    if parent is not None:
        before = [p for p in parent.curves.get(metric, []) if p[0] == segment.start_epoch]
        curve = before + curve
    return curve


def plot_branches(history: PandaHistory, path: Path, metrics: tuple[str, ...]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    live = current_branch(history)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(10, 3.6 * len(metrics)), sharex=True)
    axes = list(axes) if len(metrics) > 1 else [axes]
    for ax, metric in zip(axes, metrics, strict=True):
        for segment in history.segments:
            curve = _joined(history, segment, metric)
            if not curve:
                continue
            xs, ys = zip(*curve, strict=True)
            colour = COLOURS[segment.index % len(COLOURS)]
            upper = live.get(segment.index, -1.0)  # epochs past it are an abandoned branch
            kept = [(x, y) for x, y in curve if x <= upper]
            left = [(x, y) for x, y in curve if x >= upper] if kept else curve
            if len(kept) > 1 or (kept and segment.parent is None):
                ax.plot(*zip(*kept, strict=True), color=colour, lw=1.6)
            if len(left) > 1:
                ax.plot(*zip(*left, strict=True), color=colour, lw=1.2, alpha=0.35)
            ax.plot([], [], color=colour, label=f"segment {segment.index}")
            alpha = 1.0 if kept else 0.35
            if segment.parent is None:
                continue
            marker = "^" if segment.reason == "rewind" else "o"
            ax.plot([xs[0]], [ys[0]], marker=marker, color=colour, ms=8, alpha=alpha)
            if metric == metrics[0]:
                ax.annotate(
                    _label(segment),
                    (xs[0], ys[0]),
                    textcoords="offset points",
                    xytext=(4, 8),
                    fontsize=7,
                    color=colour,
                    alpha=alpha,
                )
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.25)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_title(
        f"{session_title(history)}: {len(history.segments)} segments\n"
        "circle: adjustment, triangle: rewind; faded: abandoned branches",
        fontsize=10,
    )
    axes[-1].set_xlabel("epoch (the session's axis)")
    if len(history.segments) <= 12:
        axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()  # rows of varying count and labels: measured, not fixed
    return figures.save(fig, path)


def _label(segment: SegmentRun) -> str:
    try:
        changes = json.loads(segment.changes) if segment.changes else {}
    except ValueError:
        changes = {}
    what = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in changes.items()
    )
    return f"{segment.index}: {what or 'no change'} ({segment.by})"


def write_panda_report(history: PandaHistory, folder: Path, metrics: tuple[str, ...]) -> Path:
    """The chart and a small HTML page listing the segments; returns the page."""
    import base64

    folder.mkdir(parents=True, exist_ok=True)
    chart = plot_branches(history, folder / CHART, metrics)
    image = base64.b64encode(chart.read_bytes()).decode()
    rows = "".join(
        f"<tr><td>{s.index}</td><td>{'' if s.parent is None else s.parent}</td>"
        f"<td>{s.start_epoch}</td><td>{html.escape(s.reason)}</td><td>{html.escape(s.by)}</td>"
        f"<td>{html.escape(s.changes)}</td><td>{html.escape(s.ended_by)}</td>"
        f"<td><code>{s.run_id}</code></td></tr>"
        for s in history.segments
    )
    page = folder / PAGE
    title = html.escape(session_title(history))
    page.write_text(
        f"<!doctype html><meta charset=utf-8><title>{title}</title>"
        f"<h1>{title}</h1><p>MLflow run "
        f"<code>{history.run_id}</code> in experiment {html.escape(history.experiment)}</p>"
        f'<img src="data:image/png;base64,{image}" style="max-width:100%">'
        "<table border=1 cellpadding=4><tr><th>segment</th><th>parent</th><th>start epoch</th>"
        "<th>reason</th><th>by</th><th>changes</th><th>ended by</th><th>run</th></tr>"
        f"{rows}</table>",
        encoding="utf-8",
    )
    return page
