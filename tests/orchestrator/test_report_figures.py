"""The report's figures, laid out with fixed margins (``report/figures.py``), keep every label,
title and tick label inside the figure, and no subplot's labels run into another's.

Each plot of ``write_report`` is drawn from a hand-made sweep meant to be awkward: seven
parameters over three rounds (log, log1m, integer and categorical axes, a long parameter name),
losses with small values, a PBT-free zoom. The check is matplotlib's own measure of what it
draws (``get_tightbbox``), so a margin too small for a label fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import pytest

from orchestrator.report import figures
from orchestrator.report.page import analyse, write_report
from orchestrator.store.history import SweepHistory
from orchestrator.trials import Trial, TrialState

matplotlib.use("Agg")

LONG_NAME = "weight_decay_of_the_output_layer"


def _history(metric: str, mode: str, parameters: int) -> SweepHistory:
    region = {
        "learning_rate": {"scale": "log", "low": 1e-5, "high": 10.0},
        "momentum": {"scale": "log1m", "low": 0.5, "high": 0.999},
        "hidden_units": {"scale": "log", "low": 16, "high": 256, "integer": True},
        "layers": {"values": [1, 2, 3, 4]},
        "batch_size": {"values": [16, 32, 64, 128, 256]},
        LONG_NAME: {"scale": "log", "low": 1e-6, "high": 0.1},
        "activation": {"values": ["relu", "tanh", "sigmoid"]},
    }
    region = dict(list(region.items())[:parameters])
    narrower = {**region, "learning_rate": {"scale": "log", "low": 1e-3, "high": 1.0}}
    trials = []
    for index in range(48):
        round_number = 1 + index // 16
        epochs = 27 if index % 5 == 0 else 3
        loss = 0.02 + 0.001 * index
        curve = [
            loss * (1 + 1 / e) if metric.endswith("loss") else 1 - loss / e
            for e in range(1, epochs + 1)
        ]
        config = {
            "learning_rate": 10 ** (-5 + index % 6),
            "momentum": 0.5 + 0.01 * index,
            "hidden_units": 16 + 5 * index,
            "layers": 1 + index % 4,
            "batch_size": [16, 32, 64, 128, 256][index % 5],
            LONG_NAME: 10 ** -(1 + index % 5),
            "activation": ["relu", "tanh", "sigmoid"][index % 3],
        }
        trials.append(
            Trial(
                index,
                config,
                round=round_number,
                state=TrialState.DIVERGED
                if index == 7
                else (TrialState.COMPLETED if epochs == 27 else TrialState.STOPPED_EARLY),
                history=[{"epoch": e, metric: v} for e, v in enumerate(curve, start=1)],
                run_id=f"run{index:03d}",
            )
        )
    return SweepHistory(
        name="an awkward sweep with a long name",
        experiment_id="1",
        parent_run_id="parent",
        tracking_uri="sqlite:///unused.db",
        metric=metric,
        mode=mode,
        milestones=[3, 9, 27],
        regions=[region, narrower, narrower],
        trials=trials,
        best_so_far=[(30, 0.05), (200, 0.031), (400, 0.0205)],
        round_starts=[(0, 1), (150, 2), (300, 3)],
    )


@pytest.mark.parametrize(
    ("metric", "mode", "parameters"),
    [("val_loss", "min", 7), ("val_accuracy", "max", 7), ("val_accuracy", "max", 1)],
)
def test_every_plot_keeps_its_text_inside_and_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metric: str, mode: str, parameters: int
) -> None:
    checked: dict[str, list[str]] = {}
    save = figures.save

    def checking_save(fig: Any, path: Path) -> Path:
        checked[path.name] = _problems(fig)
        return save(fig, path)

    monkeypatch.setattr(figures, "save", checking_save)
    history = _history(metric, mode, parameters)
    write_report(history, tmp_path, analysed=analyse(history))
    assert set(checked) == {
        "objective_vs_parameters.png",
        "learning_curves.png",
        "best_so_far.png",
        "importance.png",
    }
    assert checked == {name: [] for name in checked}


def _problems(fig: Any) -> list[str]:
    """What lies outside the figure, and which subplots' drawn boxes overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems = []
    whole = fig.get_tightbbox(renderer)  # in inches
    inches = fig.get_size_inches()
    if whole.x0 < 0 or whole.y0 < 0 or whole.x1 > inches[0] or whole.y1 > inches[1]:
        problems.append(f"drawn {whole.bounds} beyond the figure's {tuple(inches)} inches")
    boxes = [(ax, ax.get_tightbbox(renderer)) for ax in fig.get_axes() if ax.get_visible()]
    for ax, _ in boxes:
        labels = [t for t in ax.get_xticklabels(which="both") if t.get_visible() and t.get_text()]
        extents = sorted(
            ((t.get_window_extent(renderer), t.get_text()) for t in labels), key=lambda e: e[0].x0
        )
        for (a, a_text), (b, b_text) in zip(extents, extents[1:], strict=False):
            if a.overlaps(b):
                problems.append(f"{ax.get_xlabel()!r}: tick labels {a_text!r}, {b_text!r} overlap")
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1 :]:
            if box_a.overlaps(box_b):
                problems.append(f"{a.get_xlabel()!r} overlaps {b.get_xlabel()!r}")
    return problems


@pytest.mark.parametrize(("low", "high"), [(60, 90), (16, 256), (1e-3, 0.2), (1e-5, 10.0)])
def test_a_log_axis_gets_at_least_two_plain_labels_that_do_not_overlap(
    low: float, high: float
) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    ax.scatter([low, high], [0, 1])
    ax.set_xscale("log")
    figures.log_ticks(ax.xaxis, low, high)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    view = sorted(ax.get_xlim())
    shown = [
        t
        for t in ax.get_xticklabels(which="both")
        if t.get_visible() and t.get_text() and view[0] <= t.get_position()[0] <= view[1]
    ]
    boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: b.x0)
    plt.close(fig)
    assert len(shown) >= 2, [t.get_text() for t in shown]
    assert all("$" not in t.get_text() for t in shown)  # plain numbers, no TeX-like labels
    assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:], strict=False))
