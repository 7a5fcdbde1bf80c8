"""The sweep report: plots and one self-contained HTML page, built from a ``SweepHistory``.

Everything comes from what MLflow holds, so the report describes any past sweep. Each
parameter is drawn on its own scale: a log axis for ``log``, and for ``log1m`` the axis is
1 - x on a log scale (flipped, so values closer to 1 sit to the right), which is where a
momentum's differences live.
"""

from __future__ import annotations

import base64
import html
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.report import figures
from orchestrator.report.pbt_chart import plot_pbt
from orchestrator.report.ui_links import SweepLinks, labelled, run_page, sweep_links
from orchestrator.search.importance import ScoredTrial, parameter_importance, value_at_first_rung
from orchestrator.search.ranking import ranked
from orchestrator.search.space import ChoiceDomain, Domain, GridDomain, RangeDomain
from orchestrator.store import layout
from orchestrator.store.history import SweepHistory
from orchestrator.trials import Trial, TrialState

ROUND_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
TOP_TRIALS = 10


@dataclass
class Report:
    """What a report found; ``files`` are the PNGs and the HTML page written."""

    importance: dict[str, float]
    importance_by_round: dict[int, dict[str, float]]
    best_by_round: dict[int, Trial]
    median_by_round: dict[int, float] = field(default_factory=dict)  # over completed trials
    files: list[Path] = field(default_factory=list)


def rank_trials(history: SweepHistory, trials: Sequence[Trial]) -> list[Trial]:
    """ASHA-aware order, best first: the sweep's own ranking (deepest rung, then objective)."""
    return ranked(trials, history.metric, history.mode, history.milestones)


def ui_links(history: SweepHistory, ui_base: str) -> SweepLinks:
    """The sweep's runs table and a compare view of its best trials, in ``rank_trials`` order."""
    best_first = [t.run_id for t in rank_trials(history, history.trials) if t.run_id]
    return sweep_links(ui_base, history.experiment_id, best_first)


def analyse(history: SweepHistory) -> Report:
    """Importance (whole sweep and per round) and the best trial of each round."""
    domains = _domains(history.regions[0]) if history.regions else []
    first_rung = history.milestones[0]

    def scored(trials: Sequence[Trial]) -> list[ScoredTrial]:
        out = []
        for t in trials:
            if t.state is TrialState.FAILED:
                continue
            diverged = t.state is TrialState.DIVERGED
            value = None if diverged else value_at_first_rung(t.history, history.metric, first_rung)
            out.append(ScoredTrial(t.config, value))
        return out

    mode = "max" if history.mode == "max" else "min"
    rounds = sorted({t.round for t in history.trials})
    # Under PBT a trial's values change as it trains (its copies): its starting values do not
    # explain its result, so no importance is claimed from them.
    pbt = history.params.get(layout.SCHEDULER_KIND_PARAM) == "pbt"
    importance = {} if pbt else parameter_importance(scored(history.trials), domains, mode)
    by_round: dict[int, dict[str, float]] = {}
    for r in rounds:
        members = [t for t in history.trials if t.round == r]
        if len(members) == len(history.trials) or pbt:
            # One round holding every trial: the same trials in the same order with the same
            # seed, so the whole sweep's importance, already computed (the forest is the cost).
            by_round[r] = dict(importance)
        else:
            by_round[r] = parameter_importance(scored(members), domains, mode)
    best = {}
    for r in rounds:
        in_round = rank_trials(history, [t for t in history.trials if t.round == r])
        if in_round:
            best[r] = in_round[0]
    medians = {}
    for r in rounds:
        done = [
            t.metric(history.metric)
            for t in history.trials
            if t.round == r and t.state is TrialState.COMPLETED
        ]
        if done:
            medians[r] = float(np.median([v for v in done if v is not None]))
    return Report(importance, by_round, best, medians)


def write_report(
    history: SweepHistory,
    out_dir: Path,
    ui_base: str | None = None,
    ui_command: str | None = None,
    analysed: Report | None = None,
) -> Report:
    """Write the PNGs and ``report.html`` into ``out_dir``; returns what was found.

    With ``ui_base`` the page links each run, the runs table and the best trials compared in
    the MLflow UI there; ``ui_command`` (how to start that UI) is shown beside the links.
    ``analysed``: :func:`analyse` of ``history``, when the caller already has it.
    """
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = analysed if analysed is not None else analyse(history)
    # Under PBT a trial's starting values do not explain its result (its copies replaced
    # them): its picture is the lineage's, not the objective against starting values.
    pbt = history.params.get(layout.SCHEDULER_KIND_PARAM) == "pbt"
    pictures = [
        None
        if pbt
        else _plot_objective_vs_parameters(history, out_dir / "objective_vs_parameters.png"),
        _plot_learning_curves(history, out_dir / "learning_curves.png"),
        _plot_search_progress(history, out_dir / "best_so_far.png"),
        _plot_importance(report, out_dir / "importance.png"),
        plot_pbt(
            history, next(iter(report.best_by_round.values()), None), out_dir / "pbt_lineage.png"
        ),
    ]
    report.files = [p for p in pictures if p is not None]
    page = out_dir / "report.html"
    page.write_text(_html(history, report, ui_base, ui_command))
    report.files.append(page)
    return report


# --- plots -------------------------------------------------------------------------------


def _domains(region: dict[str, Any]) -> list[Domain]:
    domains: list[Domain] = []
    for name, d in region.items():
        if "scale" in d:
            domains.append(
                RangeDomain(
                    name, d["scale"], float(d["low"]), float(d["high"]), bool(d.get("integer"))
                )
            )
        elif "values" in d:
            domains.append(ChoiceDomain(name, tuple(d["values"])))
        else:
            domains.append(GridDomain(name, tuple(d["grid"])))
    return domains


def _colour(round_number: int) -> str:
    return ROUND_COLOURS[(round_number - 1) % len(ROUND_COLOURS)]


def _plot_objective_vs_parameters(history: SweepHistory, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    if not history.regions or not history.trials:
        return None
    domains = _domains(history.regions[0])
    cols = min(3, len(domains))
    rows = math.ceil(len(domains) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    metric = history.metric
    values = [v for t in history.trials if (v := t.metric(metric)) is not None]
    floor = min(values) if values else 0.0
    rounds = sorted({t.round for t in history.trials})
    for ax, domain in zip(axes.flat, domains, strict=False):
        _draw_regions(ax, history, domain)
        for r in rounds:
            trials = [t for t in history.trials if t.round == r]
            bad = [t for t in trials if t.state is TrialState.DIVERGED]
            ok = [t for t in trials if t.metric(metric) is not None and t not in bad]
            xs = _xs(domain, [t.config.get(domain.name) for t in ok], jitter_seed=r)
            ax.scatter(
                xs,
                [t.metric(metric) for t in ok],
                s=22,
                alpha=0.8,
                color=_colour(r),
                label=f"round {r}",
                edgecolors="none",
            )
            if bad:
                xb = _xs(domain, [t.config.get(domain.name) for t in bad], jitter_seed=r)
                ax.scatter(xb, [floor] * len(bad), marker="x", s=30, color=_colour(r), alpha=0.8)
        _style_axis(ax, domain)
        ax.set_ylabel(f"{history.metric} (last epoch)")
        low, high = ax.get_ylim()
        ax.set_ylim(low - 0.04 * len(history.regions) * (high - low), high)  # room for the bars
        ax.grid(True, alpha=0.25)
    for ax in list(axes.flat)[len(domains) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=9, frameon=False)
    title = figures.wrap(
        f"{history.name}: {history.metric} by parameter "
        "(x: diverged; bars at the bottom: each round's region)",
        fig.get_size_inches()[0] - 1.3,  # beside the legend
        points=11,
    )
    fig.suptitle(title, fontsize=11)
    # Room for each axis's y label and ticks, for the x label and ticks under each row, the
    # title's lines above, and the legend at the right.
    top = 0.35 + 0.2 * (title.count("\n") + 1)
    figures.set_margins(fig, left=0.9, right=1.15, bottom=0.7, top=top, col_gap=0.9, row_gap=0.8)
    return figures.save(fig, path)


def _xs(domain: Domain, values: Sequence[Any], jitter_seed: int) -> np.ndarray:
    if isinstance(domain, RangeDomain):
        xs = np.array([float(v) for v in values])
        return 1.0 - xs if domain.scale == "log1m" else xs
    rng = np.random.default_rng(jitter_seed)
    index = {repr(v): i for i, v in enumerate(domain.values)}
    positions = np.array([float(index.get(repr(v), -1)) for v in values])
    return positions + rng.uniform(-0.15, 0.15, size=len(positions))


def _style_axis(ax: Any, domain: Domain) -> None:
    if isinstance(domain, RangeDomain):
        if domain.scale == "log":
            ax.set_xscale("log")
            figures.log_ticks(ax.xaxis, domain.low, domain.high)
            ax.set_xlabel(f"{domain.name} (log scale)")
        elif domain.scale == "log1m":
            ax.set_xscale("log")
            figures.log_ticks(ax.xaxis, 1.0 - domain.high, 1.0 - domain.low)
            ax.invert_xaxis()
            ax.set_xlabel(f"1 - {domain.name} (log scale; right = closer to 1)")
        else:
            ax.set_xlabel(domain.name)
    else:
        ax.set_xticks(range(len(domain.values)))
        ax.set_xticklabels([str(v) for v in domain.values])
        ax.set_xlim(-0.6, len(domain.values) - 0.4)
        ax.set_xlabel(domain.name)


def _draw_regions(ax: Any, history: SweepHistory, domain: Domain) -> None:
    """Each round's range as a bar along the bottom of the axis, in the round's colour."""
    if not isinstance(domain, RangeDomain):
        return
    transform = ax.get_xaxis_transform()  # x in data units, y in axes units
    for r, region in enumerate(history.regions, start=1):
        d = region.get(domain.name)
        if not d or "low" not in d:
            continue
        low, high = float(d["low"]), float(d["high"])
        if domain.scale == "log1m":
            low, high = 1.0 - high, 1.0 - low
        y = 0.025 + 0.035 * (r - 1)
        ax.plot(
            [low, high],
            [y, y],
            transform=transform,
            color=_colour(r),
            lw=4,
            solid_capstyle="butt",
            alpha=0.85,
        )


def _plot_learning_curves(history: SweepHistory, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    if not history.trials:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    for t in history.trials:
        curve = t.curve(history.metric)
        if not curve:
            continue
        epochs, values = zip(*curve, strict=True)
        ax.plot(epochs, values, color=_colour(t.round), alpha=0.35, lw=1)
    for m in history.milestones[:-1]:
        ax.axvline(m, color="grey", ls="--", lw=0.8)
        ax.text(
            m,
            1.0,
            f" rung {m}",
            transform=ax.get_xaxis_transform(),
            va="top",
            fontsize=8,
            color="grey",
        )
    for r in sorted({t.round for t in history.trials}):
        ax.plot([], [], color=_colour(r), label=f"round {r}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(history.metric)
    ax.set_title(
        f"{history.name}: learning curves ({len(history.trials)} trials; dashed: ASHA rungs)"
    )
    ax.grid(True, alpha=0.25)
    ax.legend(loc="lower right", fontsize=9)
    figures.set_margins(fig)
    return figures.save(fig, path)


def _plot_search_progress(history: SweepHistory, path: Path) -> Path | None:
    """The search converging: best so far (full-budget trials) against epochs spent, a step
    per improvement, with the epoch each round began at (the parent's ``best_so_far``)."""
    import matplotlib.pyplot as plt

    if not history.best_so_far:
        return None
    spent = max(
        [history.best_so_far[-1][0], *(step for step, _ in history.round_starts)]
        + [sum(t.epochs for t in history.trials)]
    )
    steps = [step for step, _ in history.best_so_far] + [spent]
    values = [value for _, value in history.best_so_far]
    values.append(values[-1])
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.step(steps, values, where="post", color=ROUND_COLOURS[0], lw=2, label="best so far")
    ax.plot(steps[:-1], values[:-1], "o", color=ROUND_COLOURS[0], ms=4)
    for step, round_number in history.round_starts:
        if round_number > 1:
            ax.axvline(step, color=_colour(round_number), ls="--", lw=1)
            ax.text(
                step,
                1.0,
                f" round {round_number}",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
                color=_colour(round_number),
            )
    ax.set_xlim(0, max(spent, 1))
    ax.set_xlabel("epochs spent (every trial's, so far)")
    ax.set_ylabel(f"best {history.metric} (trials trained in full)")
    ax.set_title(f"{history.name}: the search converging")
    ax.grid(True, alpha=0.25)
    figures.set_margins(fig)
    return figures.save(fig, path)


def _plot_importance(report: Report, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    if not report.importance:
        return None
    names = list(report.importance)[::-1]
    series = [("whole sweep", report.importance, "#444444")] + [
        (f"round {r}", imp, _colour(r))
        for r, imp in sorted(report.importance_by_round.items())
        if imp
    ]
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.55 * len(names) * max(1, len(series) / 2)))
    for k, (label, imp, colour) in enumerate(series):
        ys = np.arange(len(names)) + (k - (len(series) - 1) / 2) * height
        ax.barh(ys, [imp.get(n, 0.0) for n in names], height=height, color=colour, label=label)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.set_xlabel("share of explained variation (permutation importance, random forest)")
    ax.set_title("Which hyperparameters mattered")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, axis="x", alpha=0.25)
    figures.set_margins(fig, left=figures.text_width(names) + 0.3)  # the names, horizontal
    return figures.save(fig, path)


# --- the page ----------------------------------------------------------------------------


def _html(
    history: SweepHistory, report: Report, ui_base: str | None, ui_command: str | None
) -> str:
    esc = html.escape

    def link(t: Trial) -> str:
        run_id = t.run_id or ""
        if not ui_base:
            return esc(run_id)
        url = run_page(ui_base, history.experiment_id, run_id)
        return f'<a href="{esc(url)}">{esc(run_id[:8])}</a>'

    ui_paragraph = ""
    if ui_base:
        anchors = " · ".join(
            f'<a href="{esc(url)}">{esc(label)}</a>'
            for label, url in labelled(ui_links(history, ui_base))
        )
        where = f"<code>{esc(ui_base)}</code>"
        if ui_command and not history.tracking_uri.startswith(("http://", "https://")):
            where += f"; start it with <code>{esc(ui_command)}</code>"
        ui_paragraph = f"<p>In the MLflow UI (at {where}): {anchors}</p>"

    rows_rounds = "".join(
        f"<tr><td>{r}</td><td>{esc(_region_text(_region(history, r)))}</td>"
        f"<td>{b.metric(history.metric):.4f}</td><td>{_median_text(report, r)}</td>"
        f"<td>#{b.index}</td><td>{link(b)}</td></tr>"
        for r, b in sorted(report.best_by_round.items())
        if b.metric(history.metric) is not None
    )
    top = rank_trials(history, history.trials)[:TOP_TRIALS]
    names = list(history.regions[0]) if history.regions else []
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    rows_top = "".join(
        f"<tr><td>{i + 1}</td><td>#{t.index}</td><td>{t.round}</td><td>{esc(t.state)}</td>"
        f"<td>{t.epochs}</td><td>{(t.metric(history.metric) or 0):.4f}</td>"
        + "".join(f"<td>{esc(format_value(t.config.get(n)))}</td>" for n in names)
        + f"<td>{link(t)}</td></tr>"
        for i, t in enumerate(top)
    )
    importance = (
        ", ".join(f"{esc(k)} {v:.2f}" for k, v in report.importance.items()) or "not enough trials"
    )
    images = "".join(
        f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"/></figure>'
        for p in report.files
        if p.suffix == ".png"
    )
    counts = ", ".join(
        f"{int(history.metrics.get(f'trials_{k}', 0))} {k.replace('_', ' ')}"
        for k in ("completed", "stopped_early", "diverged", "failed")
    )
    test = history.metrics.get("test_accuracy")
    packs = Counter(t.pack for t in history.trials if t.pack is not None)
    packed = sum(packs.values())
    pack_text = (
        f" {packed} of them trained in {len(packs)} fused packs "
        f"({min(packs.values())} to {max(packs.values())} members)."
        if packs
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>caviar report: {esc(history.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }} img {{ max-width: 100%; }} figure {{ margin: 1.5em 0; }}
</style></head><body>
<h1>caviar report: {esc(history.name)}</h1>
<p>Parent run <code>{esc(history.parent_run_id)}</code> in <code>{esc(history.tracking_uri)}</code>.
{len(history.trials)} trials ({esc(counts)}); objective: {esc(history.mode)} {esc(history.metric)}
{f"; best model's test accuracy {test:.4f}" if test is not None else ""}.{esc(pack_text)}</p>
{ui_paragraph}
<h2>Rounds</h2>
<table><tr><th>round</th><th>region</th><th>best {esc(history.metric)}</th>
<th>median of completed</th><th>trial</th>
<th>run</th></tr>{rows_rounds}</table>
<h2>Importance</h2><p>{importance}</p>
<h2>Top trials</h2>
<table><tr><th>rank</th><th>trial</th><th>round</th><th>outcome</th><th>epochs</th><th>{esc(history.metric)}</th>{head}<th>run</th></tr>{rows_top}</table>
<h2>Plots</h2>{images}
</body></html>
"""


def _median_text(report: Report, round_number: int) -> str:
    value = report.median_by_round.get(round_number)
    return f"{value:.4f}" if value is not None else "-"


def _region(history: SweepHistory, round_number: int) -> dict[str, Any]:
    return history.regions[round_number - 1] if round_number <= len(history.regions) else {}


def _region_text(region: dict[str, Any]) -> str:
    parts = []
    for name, d in region.items():
        if "low" in d:
            low, high = format_value(d["low"]), format_value(d["high"])
            parts.append(f"{name} {d['scale']}[{low}, {high}]")
        elif "values" in d:
            parts.append(f"{name} {{{', '.join(map(str, d['values']))}}}")
    return "; ".join(parts)


def format_value(value: Any, digits: int = 4) -> str:
    """A parameter's value as people read it: floats to ``digits`` significant digits."""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)
