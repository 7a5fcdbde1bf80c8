"""`caviar report` on a fixed MLflow store: every value chosen here, every expectation by hand.

No Ray and no sweep: the store is written with MLflow's own client in the layout caviar writes
(README, "What lands in MLflow"; ``orchestrator/store/tracking.py`` and ``engine/observer.py``):
a parent run tagged ``caviar.kind=sweep`` with the spec's params and the rounds' regions
(``regions/round_N.json``), one nested child run ``trial-NNN`` per trial with its config as
params, per-epoch metrics at ``step = epoch`` and the tags ``caviar.trial_index``,
``caviar.round``, ``caviar.outcome``, ``caviar.last_epoch``. Writing it with MLflow rather than
with caviar's writer keeps the store fixed whatever the writer becomes: a report must read the
sweeps that earlier versions left behind.

Then ``caviar report`` runs as a user runs it (the installed command, a fresh process), and the
tests check what it printed and wrote: the ranking, each round's best and median, the MLflow UI
links with the run ids created here, and that names and values with HTML's special
characters reach the page escaped.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import run_caviar
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

# HTML's five special characters, in the experiment's name and in a categorical value.
NASTY = "<b>&\"'"
NASTY_ESCAPED = "&lt;b&gt;&amp;&quot;&#x27;"  # html.escape(NASTY, quote=True)
EXPERIMENT = f"fixed {NASTY} store"
UI = "http://127.0.0.1:5000"  # the printed `mlflow ui` command's --host and --port

T0 = 1_700_000_000_000  # ms; every start, end and metric timestamp is fixed
EPOCH_MS = 1_000

# ASHA grace 1, reduction factor 2, 4 epochs: rungs at epochs 1 and 2, then the budget (4).
PARENT_PARAMS = {
    "data.source": "iris",
    "data.sizes": "{'train': 90, 'val': 30, 'test': 30}",
    "data.classes": "[0, 1, 2]",
    "trainable": "bn_softmax_mlp",
    "search.strategy": "zoom",
    "search.num_trials": "10",
    "search.seed": "7",
    "scheduler.kind": "asha",
    "scheduler.max_epochs": "4",
    "objective": "max val_accuracy",
    "resources.cpus_per_trial": "1",
    "resources.gpus_per_trial": "0",
    "scheduler.grace_period": "1",
    "scheduler.reduction_factor": "2",
    "scheduler.brackets": "1",
    "space.learning_rate": "log[0.001, 1]",
    "space.activation": f"choice[relu, {NASTY}]",
    "fixed.optimizer": "sgd",
    "fixed.batch_size": "16",
    "round1.learning_rate": "log[0.001, 1]",
    "round1.activation": f"choice[relu, {NASTY}]",
    "round2.learning_rate": "log[0.005, 0.1]",
    "round2.activation": f"choice[relu, {NASTY}]",
}
REGIONS = [
    {
        "learning_rate": {"scale": "log", "low": 0.001, "high": 1.0, "integer": False},
        "activation": {"values": ["relu", NASTY]},
    },
    {
        "learning_rate": {"scale": "log", "low": 0.005, "high": 0.1, "integer": False},
        "activation": {"values": ["relu", NASTY]},
    },
]

# index: (round, learning_rate, activation, outcome, last epoch, val_accuracy per epoch).
# A diverged or failed trial's curve stops at its last finite epoch (NaN is never logged), so
# trial 3 ends at epoch 2 with one point. Values are exact binary fractions, all different,
# none a tie when printed with 4 decimals.
TRIALS: dict[int, tuple[int, float, str, str, int, list[float]]] = {
    0: (1, 0.0125, "relu", "completed", 4, [0.5, 0.625, 0.75, 0.8125]),
    1: (1, 0.5, NASTY, "stopped_early", 1, [0.9375]),
    2: (1, 0.002, "relu", "stopped_early", 2, [0.40625, 0.546875]),
    3: (1, 0.9, NASTY, "diverged", 2, [0.96875]),
    4: (1, 0.004, "relu", "completed", 4, [0.25, 0.375, 0.5, 0.6875]),
    5: (2, 0.05, NASTY, "completed", 4, [0.5, 0.75, 0.8125, 0.875]),
    6: (2, 0.025, "relu", "stopped_early", 2, [0.625, 0.921875]),
    7: (2, 0.08, NASTY, "failed", 1, [0.984375]),
    8: (2, 0.01, "relu", "completed", 4, [0.5, 0.625, 0.75, 0.828125]),
    9: (2, 0.0625, NASTY, "completed", 4, [0.5, 0.5625, 0.6875, 0.796875]),
}
# By hand, ASHA-aware (orchestrator/search/ranking.py): deepest rung reached first (epoch 4:
# trials 0 4 5 8 9; epoch 2: 2 6; epoch 1: 1), then val_accuracy there, larger first. Trials
# 6 (0.92), 1 (0.94), 3 (0.97, diverged) and 7 (0.98, failed) have the highest last values
# and rank below every completed trial or not at all.
RANKING = [5, 8, 0, 9, 4, 6, 2, 1]
# Per round: the best trial (the round's first in RANKING) and the median of its completed
# trials' last values: round 1 median(0.8125, 0.6875) = 0.75; round 2 median(0.875, 0.828125,
# 0.796875) = 0.828125.
ROUNDS = {1: (0, "0.8125", "0.7500"), 2: (5, "0.8750", "0.8281")}


def _trial_metrics(index: int, epoch: int, accuracy: float) -> list[Metric]:
    stamp = T0 + 60_000 * index + EPOCH_MS * epoch
    values = {
        "train_loss": 1.0 / epoch,
        "train_accuracy": accuracy,
        "val_loss": 1.5 / epoch,
        "val_accuracy": accuracy,
        "epoch_seconds": 0.25,
        "learning_rate": TRIALS[index][1],
    }
    return [Metric(k, v, stamp, epoch) for k, v in values.items()]


def _start_child(
    client: MlflowClient, experiment_id: str, parent: str, index: int, round_number: int
) -> str:
    run = client.create_run(
        experiment_id,
        start_time=T0 + 60_000 * index,
        run_name=f"trial-{index:03d}",
        tags={
            "mlflow.parentRunId": parent,
            "caviar.trial_id": f"5e3a1_{index:05d}",
            "caviar.trial_index": str(index),
            "caviar.round": str(round_number),
            "caviar.sampled": "activation,learning_rate",
        },
    )
    return run.info.run_id


def _build_store(folder: Path) -> dict[str, Any]:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(
        EXPERIMENT, artifact_location=(folder / "artifacts").as_uri()
    )

    # An older sweep in the same experiment: `caviar report EXPERIMENT` must take the latest,
    # and nothing of this one (its trial beats every value below) may reach the report.
    old = client.create_run(
        experiment_id,
        start_time=T0 - 86_400_000,
        run_name="fixed-old",
        tags={"caviar.kind": "sweep", "caviar.sweep_id": "20231113-000000-000000"},
    ).info.run_id
    client.log_batch(old, params=[Param(k, v) for k, v in PARENT_PARAMS.items()])
    old_child = client.create_run(
        experiment_id,
        start_time=T0 - 86_000_000,
        run_name="trial-000",
        tags={"mlflow.parentRunId": old, "caviar.trial_index": "0", "caviar.round": "1"},
    ).info.run_id
    client.log_batch(
        old_child,
        params=[Param("learning_rate", "0.1"), Param("activation", "relu")],
        metrics=[Metric("val_accuracy", 0.999, T0 - 86_000_000, e) for e in (1, 2, 3, 4)],
        tags=[RunTag("caviar.outcome", "completed"), RunTag("caviar.last_epoch", "4")],
    )
    client.set_terminated(old_child, "FINISHED", end_time=T0 - 85_000_000)
    client.set_terminated(old, "FINISHED", end_time=T0 - 85_000_000)

    parent = client.create_run(
        experiment_id,
        start_time=T0,
        run_name="fixed-20231114-221320-abcdef",
        tags={
            "caviar.kind": "sweep",
            "caviar.sweep_id": "20231114-221320-abcdef",
            "caviar.spec_hash": "0" * 64,
            "caviar.version": "0.0.0",
            "caviar.trainable": "bn_softmax_mlp",
        },
    ).info.run_id
    client.log_batch(parent, params=[Param(k, v) for k, v in PARENT_PARAMS.items()])
    client.log_text(parent, "name: fixed\n", "spec/fixed.yaml")
    for number, region in enumerate(REGIONS, start=1):
        client.log_dict(parent, region, f"regions/round_{number}.json")

    run_ids: dict[int, str] = {}
    for index, (round_number, lr, activation, outcome, last_epoch, curve) in TRIALS.items():
        run_id = _start_child(client, experiment_id, parent, index, round_number)
        run_ids[index] = run_id
        params = {
            "learning_rate": lr,
            "activation": activation,
            "optimizer": "sgd",
            "batch_size": 16,
            "epochs": 4,
        }
        tags = {
            "caviar.outcome": outcome,
            "caviar.last_epoch": str(last_epoch),
            "caviar.node_id": "node-1",
        }
        if outcome == "failed":
            tags["caviar.error"] = "RuntimeError: the actor died"
        client.log_batch(
            run_id,
            params=[Param(k, str(v)) for k, v in params.items()],
            metrics=[m for e, v in enumerate(curve, start=1) for m in _trial_metrics(index, e, v)],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        client.set_terminated(
            run_id,
            "FAILED" if outcome == "failed" else "FINISHED",
            end_time=T0 + 60_000 * index + EPOCH_MS * (last_epoch + 1),
        )

    counts = {"completed": 5, "stopped_early": 3, "diverged": 1, "failed": 1}
    summary = {f"trials_{k}": float(n) for k, n in counts.items()}
    summary.update(
        epochs_trained=float(sum(t[4] for t in TRIALS.values())),
        wall_seconds=12.5,
        best_val_accuracy=0.875,
        test_accuracy=0.9,
        test_loss=0.3,
    )
    client.log_batch(
        parent,
        metrics=[Metric(k, v, T0 + 700_000, 0) for k, v in summary.items()],
        tags=[
            RunTag("caviar.best_trial_id", "5e3a1_00005"),
            RunTag("caviar.best_trial_index", "5"),
            RunTag("caviar.best_run_id", run_ids[5]),
        ],
    )
    client.set_terminated(parent, "FINISHED", end_time=T0 + 700_000)
    return {
        "uri": uri,
        "experiment_id": experiment_id,
        "parent": parent,
        "runs": run_ids,
        "old": [old, old_child],
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("fixed-store")
    store = _build_store(folder)
    out = folder / "report"
    result = run_caviar(
        "report", EXPERIMENT, "--tracking-uri", store["uri"], "--out", str(out), cwd=folder
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    page = (out / "report.html").read_text()
    return {**store, "folder": folder, "out": out, "stdout": result.stdout, "page": page}


def _rows(page: str, heading: str) -> list[str]:
    """The data rows (``<tr><td>...</tr>``) of the table after ``<h2>heading</h2>``."""
    section = page.split(f"<h2>{heading}</h2>", 1)[1].split("<h2>", 1)[0]
    return re.findall(r"<tr><td>.*?</tr>", section)


def _link(store: dict[str, Any], index: int) -> str:
    run_id = store["runs"][index]
    url = f"{UI}/#/experiments/{store['experiment_id']}/runs/{run_id}"
    return f'<a href="{url}">{run_id[:8]}</a>'


def _compare_url(store: dict[str, Any]) -> str:
    """The compare view of the best five, percent-encoded JSON as ui_links.py builds it."""
    runs = "%2C".join(f"%22{store['runs'][i]}%22" for i in RANKING[:5])
    return f"{UI}/#/compare-runs?runs=%5B{runs}%5D&experiments=%5B%22{store['experiment_id']}%22%5D"


def test_report_prints_the_ui_command_and_links_to_the_created_runs(
    report: dict[str, Any],
) -> None:
    db = report["folder"] / "mlflow.db"
    started = datetime.fromtimestamp(T0 / 1000).strftime("%Y-%m-%d %H:%M:%S")
    assert report["stdout"].splitlines() == [
        # An experiment's name: its newest sweep, and the report says which it took.
        f"caviar: experiment {EXPERIMENT}: sweep run {report['parent']} "
        f"(20231114-221320-abcdef, started {started})",
        f"open the UI:     mlflow ui --backend-store-uri sqlite:///{db} --host 127.0.0.1 "
        "--port 5000",
        f"runs table:      {UI}/#/experiments/{report['experiment_id']}/runs",
        f"best 5 compared: {_compare_url(report)}",
        f"caviar: wrote {report['out'] / 'report.html'}",
    ]


def test_report_writes_the_page_and_three_plots(report: dict[str, Any]) -> None:
    assert sorted(p.name for p in report["out"].iterdir()) == [
        "importance.png",
        "learning_curves.png",
        "objective_vs_parameters.png",
        "report.html",
    ]
    assert report["page"].count('src="data:image/png;base64,') == 3


def test_top_trials_are_ranked_asha_aware_with_their_values_and_runs(
    report: dict[str, Any],
) -> None:
    expected = []
    for rank, index in enumerate(RANKING, start=1):
        round_number, lr, activation, outcome, _, curve = TRIALS[index]
        cells = [
            str(rank),
            f"#{index}",
            str(round_number),
            outcome,
            str(len(curve)),
            f"{curve[-1]:.4f}",
            f"{lr:.4g}",
            NASTY_ESCAPED if activation == NASTY else activation,
            _link(report, index),
        ]
        expected.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    assert _rows(report["page"], "Top trials") == expected
    # Spelled out once, so the expectation above is readable as plain values too.
    assert _rows(report["page"], "Top trials")[0].startswith(
        "<tr><td>1</td><td>#5</td><td>2</td><td>completed</td><td>4</td><td>0.8750</td>"
        f"<td>0.05</td><td>{NASTY_ESCAPED}</td>"
    )
    assert _rows(report["page"], "Top trials")[-1].startswith(
        "<tr><td>8</td><td>#1</td><td>1</td><td>stopped_early</td><td>1</td><td>0.9375</td>"
    )


def test_each_round_shows_its_region_best_trial_and_median(report: dict[str, Any]) -> None:
    regions = {
        1: f"learning_rate log[0.001, 1]; activation {{relu, {NASTY_ESCAPED}}}",
        2: f"learning_rate log[0.005, 0.1]; activation {{relu, {NASTY_ESCAPED}}}",
    }
    expected = [
        f"<tr><td>{r}</td><td>{regions[r]}</td><td>{best_value}</td><td>{median}</td>"
        f"<td>#{best}</td><td>{_link(report, best)}</td></tr>"
        for r, (best, best_value, median) in sorted(ROUNDS.items())
    ]
    assert _rows(report["page"], "Rounds") == expected


def test_page_counts_outcomes_and_links_the_ui(report: dict[str, Any]) -> None:
    page = report["page"]
    db = report["folder"] / "mlflow.db"
    command = f"mlflow ui --backend-store-uri sqlite:///{db} --host 127.0.0.1 --port 5000"
    runs = f"{UI}/#/experiments/{report['experiment_id']}/runs"
    compare = _compare_url(report).replace("&", "&amp;")  # an attribute value, escaped
    assert (
        f"<p>Parent run <code>{report['parent']}</code> in <code>sqlite:///{db}</code>.\n"
        "10 trials (5 completed, 3 stopped early, 1 diverged, 1 failed); "
        "objective: max val_accuracy\n; best model's test accuracy 0.9000.</p>"
    ) in page
    assert (
        f"<p>In the MLflow UI (at <code>{UI}</code>; start it with <code>{command}</code>): "
        f'<a href="{runs}">runs table</a> · <a href="{compare}">best 5 compared</a></p>'
    ) in page


def test_html_special_characters_reach_the_page_escaped(report: dict[str, Any]) -> None:
    page = report["page"]
    assert "<b>" not in page and NASTY not in page
    assert f"<title>caviar report: fixed {NASTY_ESCAPED} store</title>" in page
    assert f"<h1>caviar report: fixed {NASTY_ESCAPED} store</h1>" in page
    # Once per round's region, once per top trial holding the value.
    holders = sum(1 for i in RANKING if TRIALS[i][2] == NASTY)
    assert page.count(NASTY_ESCAPED) == 2 + 2 + holders


def test_importance_names_both_parameters_with_shares_summing_to_one(
    report: dict[str, Any],
) -> None:
    text = report["page"].split("<h2>Importance</h2><p>", 1)[1].split("</p>", 1)[0]
    shares = dict(part.rsplit(" ", 1) for part in text.split(", "))
    assert set(shares) == {"learning_rate", "activation"}
    assert all(re.fullmatch(r"\d\.\d\d", v) for v in shares.values())
    assert math.isclose(sum(float(v) for v in shares.values()), 1.0, abs_tol=0.011)


def test_the_older_sweep_in_the_experiment_is_left_out(report: dict[str, Any]) -> None:
    for run_id in report["old"]:
        assert run_id not in report["page"] and run_id not in report["stdout"]
    assert report["parent"] in report["page"]
    assert "0.9990" not in report["page"]


def test_the_store_holds_raw_values_in_caviars_layout(report: dict[str, Any]) -> None:
    """The fixture itself, read back with MLflow alone (no caviar code): the names and values
    are stored raw (escaping is the page's job), and the children hang under the parent."""
    client = MlflowClient(tracking_uri=report["uri"])
    assert client.get_experiment(report["experiment_id"]).name == EXPERIMENT
    children = client.search_runs(
        [report["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{report['parent']}'",
    )
    by_index = {int(c.data.tags["caviar.trial_index"]): c for c in children}
    assert {i: c.info.run_id for i, c in by_index.items()} == report["runs"]
    assert {i: c.info.run_name for i, c in by_index.items()} == {
        i: f"trial-{i:03d}" for i in TRIALS
    }
    assert by_index[1].data.params == {
        "learning_rate": "0.5",
        "activation": NASTY,
        "optimizer": "sgd",
        "batch_size": "16",
        "epochs": "4",
    }
    for index, (round_number, _, _, outcome, last_epoch, curve) in TRIALS.items():
        tags = by_index[index].data.tags
        assert (tags["caviar.round"], tags["caviar.outcome"], tags["caviar.last_epoch"]) == (
            str(round_number),
            outcome,
            str(last_epoch),
        )
        history = client.get_metric_history(by_index[index].info.run_id, "val_accuracy")
        assert sorted((m.step, m.value) for m in history) == list(enumerate(curve, start=1))
