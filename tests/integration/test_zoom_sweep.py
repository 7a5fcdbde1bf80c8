"""A zooming sweep through real Ray into real MLflow, and `caviar report` on what it left."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import run_caviar
from mlflow import MlflowClient

pytestmark = pytest.mark.integration

SPEC = """
name: iris-zoom
data: {source: iris, seed: 1}
space:
  learning_rate: {scale: log, low: 1.0e-4, high: 1.0}
  momentum: {scale: log1m, low: 0.5, high: 0.99}
  hidden_units: {scale: log, low: 4, high: 64, integer: true}
  batch_size: {values: [8, 16, 32]}
fixed: {optimizer: sgd, layers: 1}
search: {strategy: zoom, rounds: 2, trials_per_round: 8, keep_top: 3, margin: 0.05, seed: 2}
scheduler: {kind: asha, grace_period: 1, reduction_factor: 2, max_epochs: 4}
"""


@pytest.fixture(scope="module")
def zoom_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("zoom")
    (folder / "zoom.yaml").write_text(SPEC)
    result = run_caviar("run", "zoom.yaml", cwd=folder)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("iris-zoom")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("caviar.kind") == "sweep")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return {
        "folder": folder,
        "stdout": result.stdout,
        "client": client,
        "parent": parent,
        "children": children,
    }


def test_two_rounds_of_eight_with_round_tags(zoom_sweep: dict[str, Any]) -> None:
    rounds = Counter(c.data.tags["caviar.round"] for c in zoom_sweep["children"])
    assert rounds == {"1": 8, "2": 8}
    assert "round 2:" in zoom_sweep["stdout"]


def test_parent_records_each_region_and_round_two_lies_inside_round_one(
    zoom_sweep: dict[str, Any],
) -> None:
    client: MlflowClient = zoom_sweep["client"]
    parent = zoom_sweep["parent"]
    folder = Path(
        client.download_artifacts(parent.info.run_id, "regions", str(zoom_sweep["folder"]))
    )
    first = json.loads((folder / "round_1.json").read_text())
    second = json.loads((folder / "round_2.json").read_text())
    assert first["learning_rate"] == {"scale": "log", "low": 1e-4, "high": 1.0, "integer": False}
    for name in ("learning_rate", "momentum", "hidden_units"):
        assert (
            first[name]["low"] <= second[name]["low"] <= second[name]["high"] <= first[name]["high"]
        )
    narrowed = [n for n in ("learning_rate", "momentum", "hidden_units") if second[n] != first[n]]
    assert narrowed
    assert parent.data.params["round1.learning_rate"] == "log[0.0001, 1]"
    assert "round2.learning_rate" in parent.data.params
    # search.explore (default 0.25): 2 of round 2's 8 trials come from the whole region, the
    # other 6 from its zoomed box
    inside = 0
    for child in zoom_sweep["children"]:
        if child.data.tags["caviar.round"] == "2":
            lr = float(child.data.params["learning_rate"])
            inside += second["learning_rate"]["low"] <= lr <= second["learning_rate"]["high"]
    assert 6 <= inside <= 8


def test_parent_holds_importance_round_bests_and_report_plots(zoom_sweep: dict[str, Any]) -> None:
    parent = zoom_sweep["parent"]
    importance = {k: v for k, v in parent.data.metrics.items() if k.startswith("importance.")}
    assert set(importance) >= {"importance.learning_rate", "importance.momentum"}
    assert abs(sum(importance.values()) - 1.0) < 1e-6
    for round_number in (1, 2):
        assert f"round{round_number}.best_val_accuracy" in parent.data.metrics
        assert parent.data.tags[f"caviar.round{round_number}.best_run_id"]
    artifacts = {a.path for a in zoom_sweep["client"].list_artifacts(parent.info.run_id, "report")}
    assert {
        "report/report.html",
        "report/objective_vs_parameters.png",
        "report/learning_curves.png",
        "report/best_so_far.png",
        "report/importance.png",
    } <= artifacts


def test_parent_charts_the_search_converging_against_epochs_spent(
    zoom_sweep: dict[str, Any],
) -> None:
    """best_so_far on the parent: one point per improvement, at the epochs spent by then
    (rising steps, improving values, the last equal to the best full-budget trial); and the
    epochs spent when each round began."""
    client, parent = zoom_sweep["client"], zoom_sweep["parent"]
    points = [
        (m.step, m.value) for m in client.get_metric_history(parent.info.run_id, "best_so_far")
    ]
    assert points, "no best_so_far on the parent"
    steps, values = zip(*sorted(points), strict=True)
    assert list(steps) == sorted(set(steps)) and steps[0] > 0
    assert list(values) == sorted(values)  # val_accuracy: only ever better
    rounds = sorted(
        (m.step, m.value) for m in client.get_metric_history(parent.info.run_id, "round")
    )
    assert [r for _, r in rounds] == [1.0, 2.0] and rounds[0][0] == 0 < rounds[1][0]
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    full = [
        c.data.metrics["val_accuracy"] for c in children if c.data.tags["caviar.last_epoch"] == "4"
    ]
    assert values[-1] == pytest.approx(max(full))  # the best trial trained in full


def test_caviar_report_writes_plots_and_a_self_contained_page(zoom_sweep: dict[str, Any]) -> None:
    folder = zoom_sweep["folder"]
    for key in ("iris-zoom", zoom_sweep["parent"].info.run_id):
        out = folder / f"report-{key[:8]}"
        result = run_caviar("report", key, "--out", str(out), cwd=folder)
        assert result.returncode == 0, result.stderr
        page = (out / "report.html").read_text()
        assert page.count("data:image/png;base64,") == 4
        # Self-contained: every image inline, no stylesheet, script or frame fetched.
        assert re.findall(r'src="([^"]{0,22})', page) == ["data:image/png;base64,"] * 4
        assert not re.search(r"<(link|script|iframe|object|embed)\b|url\(", page)
        assert zoom_sweep["parent"].info.run_id in page
        assert "learning_rate" in page and "round" in page
        pngs = ("objective_vs_parameters.png", "learning_curves.png", "best_so_far.png")
        for png in (*pngs, "importance.png"):
            assert (out / png).stat().st_size > 10_000


def test_report_on_an_unknown_sweep_is_a_clear_error(zoom_sweep: dict[str, Any]) -> None:
    result = run_caviar("report", "no-such-sweep", cwd=zoom_sweep["folder"])
    assert result.returncode == 1
    assert "no experiment or sweep run named 'no-such-sweep'" in result.stderr
    assert "Traceback" not in result.stderr


def _links(stdout: str) -> dict[str, str]:
    """The UI links a summary or a report printed, by label."""
    found = {}
    for line in stdout.splitlines():
        label, _, value = line.strip().partition(":")
        if label in ("runs table", "open the UI") or label.endswith("compared"):
            found[label] = value.strip()
    return found


def test_summary_and_report_link_the_same_runs_and_best_trials(zoom_sweep: dict[str, Any]) -> None:
    parent = zoom_sweep["parent"]
    summary = _links(zoom_sweep["stdout"])
    experiment_id = parent.info.experiment_id
    assert summary["runs table"] == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
    assert summary["best 5 compared"].startswith("http://127.0.0.1:5000/#/compare-runs?runs=")
    best = parent.data.tags["caviar.best_run_id"]
    assert f"%22{best}%22" in summary["best 5 compared"].split("%2C")[0]  # best first
    folder = zoom_sweep["folder"]
    result = run_caviar("report", "iris-zoom", "--out", str(folder / "report-links"), cwd=folder)
    assert result.returncode == 0, result.stderr
    assert _links(result.stdout) == summary
