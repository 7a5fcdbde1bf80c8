"""The end-of-sweep summary links straight to the sweep's runs and its best trials in MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from orchestrator.report.summary import format_summary
from orchestrator.sweep_result import SweepResult
from orchestrator.trials import Trial, TrialState, member_epochs

RUN_IDS = [f"{i:x}" * 32 for i in (10, 3, 7)]  # best first, as run_sweep ranks them


def _result(tracking_uri: str, ranked_run_ids: list[str]) -> SweepResult:
    records = [
        Trial(
            i,
            {"learning_rate": 0.01 * (i + 1)},
            trial_id=f"t{i}",
            state=TrialState.COMPLETED,
            history=[{"epoch": 3, "val_accuracy": 0.9 - i / 100}],
        )
        for i in range(3)
    ]
    return SweepResult(
        name="digits-bn",
        sweep_id="20260101-000000-abcdef",
        experiment="digits-bn",
        tracking_uri=tracking_uri,
        parent_run_id="f" * 32,
        storage_dir=Path("/tmp/ray_results/digits-bn/20260101-000000-abcdef"),
        experiment_id="42",
        metric="val_accuracy",
        mode="max",
        records=records,
        wall_seconds=12.5,
        best=records[0],
        ranked_run_ids=ranked_run_ids,
    )


def _line(summary: str, label: str) -> str:
    lines = [line for line in summary.splitlines() if line.startswith(f"  {label}:")]
    assert len(lines) == 1, summary
    return lines[0].split(":", 1)[1].strip()


def _compare(url: str) -> dict[str, list[str]]:
    path, _, query = urlsplit(url).fragment.partition("?")
    assert path == "/compare-runs"
    return {k: json.loads(v[0]) for k, v in parse_qs(query, strict_parsing=True).items()}


def test_a_sqlite_sweep_links_the_ui_commands_address() -> None:
    summary = format_summary(_result("sqlite:////tmp/s/mlflow.db", RUN_IDS))
    command = _line(summary, "open the UI")
    assert command.startswith("mlflow ui --backend-store-uri sqlite:////tmp/s/mlflow.db")
    runs = _line(summary, "runs table")
    assert runs == "http://127.0.0.1:5000/#/experiments/42/runs"
    assert "--host 127.0.0.1 --port 5000" in command  # the address the links use
    compare = _line(summary, "best 3 compared")
    assert compare.startswith("http://127.0.0.1:5000/#/compare-runs?runs=")
    assert _compare(compare) == {"runs": RUN_IDS, "experiments": ["42"]}


def test_a_server_sweep_links_the_servers_address_and_path() -> None:
    summary = format_summary(_result("https://mlflow.example.org/team/", RUN_IDS[:2]))
    assert _line(summary, "runs table") == ("https://mlflow.example.org/team/#/experiments/42/runs")
    compare = _line(summary, "best 2 compared")
    assert compare.startswith("https://mlflow.example.org/team/#/compare-runs?runs=")
    assert _compare(compare)["runs"] == RUN_IDS[:2]


def test_links_follow_the_store_lines_and_precede_ray_results() -> None:
    labels = [
        line.split(":", 1)[0].strip()
        for line in format_summary(_result("sqlite:////tmp/s/mlflow.db", RUN_IDS)).splitlines()
        if line.startswith("  ") and not line.startswith("    ") and ":" in line
    ]
    at = labels.index("open the UI")
    assert labels[at : at + 4] == ["open the UI", "runs table", "best 3 compared", "Ray results"]


def test_a_sweep_without_ranked_trials_still_links_its_runs() -> None:
    result = _result("sqlite:////tmp/s/mlflow.db", [])
    result.best = None
    summary = format_summary(result)
    assert _line(summary, "runs table") == "http://127.0.0.1:5000/#/experiments/42/runs"
    assert "compare-runs" not in summary


def _member(index: int, epochs: int, pack: int | None) -> Trial:
    history = [{"epoch": epoch} for epoch in range(1, epochs + 1)]
    return Trial(index, {}, state=TrialState.COMPLETED, history=history, pack=pack)


def test_member_epochs_count_an_epoch_fused_while_another_member_trains_beside_it() -> None:
    records = [
        _member(0, 9, pack=0),  # with 1 to epoch 3, then alone to 9
        _member(1, 3, pack=0),
        _member(2, 3, pack=2),  # a pack of three in lockstep to 1, two of them to 3
        _member(3, 3, pack=2),
        _member(4, 1, pack=2),
        _member(5, 4, pack=None),  # a lone trial
    ]
    assert member_epochs(records) == (3 * 2 + 3 + 2 * 2, 6 + 4)
    assert sum(member_epochs(records)) == sum(r.epochs for r in records)
