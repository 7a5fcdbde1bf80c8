"""Both benchmarks, end to end at tiny sizes, so the harness keeps working as caviar changes.

Real runs (caviar, the Ray Tune docs' baseline and Optuna as subprocesses, real Ray, real
SQLite stores), one repetition of 4 trials and 3 epochs; then the JSON each harness wrote is
checked for its fields and for values that can be true at all. Never timings against a
threshold: the numbers come from running the benchmark (docs/performance.md), not from tests.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.bench, pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[2]
TRIALS, EPOCHS, REPORTS = 4, 3, 5
# caviar's ablations (caviar_untracked, caviar_unpacked, caviar_cold_cache) differ from
# "caviar" only in a setting or a wrapper: the smoke run keeps to the systems compared.
SYSTEMS = ("caviar", "ray_tune_docs", "optuna")
RUN_KEYS = {
    "system",
    "rep",
    "end_to_end_s",
    "sweep_wall_s",
    "before_first_trial_s",
    "after_last_trial_s",
    "trials",
    "trials_per_min",
    "epochs_trained",
    "best_val_accuracy",
    "training_s",
    "training_fraction",
    "outcomes",
    "floor_s",
    "sweep_over_floor",
}


def run_harness(module: str, *args: str, tmp_path: Path) -> tuple[dict[str, Any], str]:
    out = tmp_path / f"{module}.json"
    completed = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args, "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return json.loads(out.read_text()), completed.stdout


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_sweep_benchmark_runs_every_system_and_reports_sane_numbers(tmp_path: Path) -> None:
    result, stdout = run_harness(
        "sweep_bench",
        "--reps", "1", "--trials", str(TRIALS), "--max-epochs", str(EPOCHS),
        "--systems", ",".join(SYSTEMS),
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result["settings"]["systems"] == list(SYSTEMS)
    assert result["settings"]["trials"] == TRIALS and result["settings"]["max_epochs"] == EPOCHS
    slots = result["settings"]["slots"]
    assert slots >= 1
    assert [(r["system"], r["rep"]) for r in result["runs"]] == [(s, 0) for s in SYSTEMS]
    for run in result["runs"]:
        name = run["system"]
        assert RUN_KEYS <= set(run), (name, RUN_KEYS - set(run))
        for key in ("end_to_end_s", "sweep_wall_s", "trials_per_min", "training_s", "floor_s"):
            assert positive(run[key]), (name, key, run[key])
        # The trials ran inside the command: the sweep is part of the end-to-end time.
        assert run["sweep_wall_s"] < run["end_to_end_s"], name
        assert run["before_first_trial_s"] > 0 and run["after_last_trial_s"] > 0, name
        assert run["trials"] == TRIALS, name
        # Every trial reaches the first rung (grace period 2) and none passes the budget.
        assert 2 * TRIALS <= run["epochs_trained"] <= EPOCHS * TRIALS, name
        assert 0.0 <= run["best_val_accuracy"] <= 1.0, name
        assert 0.0 < run["training_fraction"] <= 1.0, name
        assert "failed" not in run["outcomes"], name
        assert sum(run["outcomes"].values()) == TRIALS, name
    caviar = result["runs"][0]
    assert caviar["caviar_epochs_trained"] == caviar["epochs_trained"]
    assert caviar["parent_status"] == "FINISHED"
    # MLflow's runs and the journal are two records of the same trials: the same span.
    assert caviar["sweep_wall_journal_s"] == pytest.approx(caviar["sweep_wall_s"], abs=0.05)

    floor = result["floors"][0]
    for system in SYSTEMS:
        assert floor[system]["epochs"] == next(
            r["epochs_trained"] for r in result["runs"] if r["system"] == system
        )
        assert positive(floor[system]["mean_epoch_s"])
        assert floor[system]["floor_s"] == pytest.approx(floor[system]["compute_s"] / slots)

    assert set(result["medians"]) == set(SYSTEMS)
    assert set(result["ratios"]) == {"caviar/ray_tune_docs", "caviar/optuna", "caviar/floor"}
    assert all(positive(v) for ratios in result["ratios"].values() for v in ratios.values())
    for fragment in ("sweep wall", "compute floor", "caviar/optuna", "caviar/floor"):
        assert fragment in stdout
    assert result["machine"]["versions"]["optuna"]


def test_overhead_benchmark_runs_noop_trials_through_caviar(tmp_path: Path) -> None:
    result, stdout = run_harness(
        "overhead_bench",
        "--reps", "1", "--trials", str(TRIALS), "--reports", str(REPORTS), "--step-ms", "10",
        tmp_path=tmp_path,
    )  # fmt: skip
    (run,) = result["runs"]
    assert run["trials"] == TRIALS
    assert run["reports"] == TRIALS * REPORTS  # FIFO: every trial reports every time
    assert run["outcomes"] == {"completed": TRIALS}
    slots = result["settings"]["slots"]
    assert run["minimum_s"] == pytest.approx(math.ceil(TRIALS / slots) * REPORTS * 0.01)
    for key in ("sweep_wall_s", "end_to_end_s", "over_minimum", "reports_per_s", "training_s"):
        assert positive(run[key]), (key, run[key])
    # Each step spins for 10 ms, so the steps' own time is at least the requested total.
    assert run["training_s"] >= TRIALS * REPORTS * 0.01
    assert math.isfinite(run["overhead_per_report_ms"])
    assert result["medians"]["sweep_wall_s"] == pytest.approx(run["sweep_wall_s"])
    assert "theoretical minimum" in stdout and "overhead per report" in stdout
    # The driver's CPU: some of it in the sweep, more in all (imports, Ray's start), per trial.
    assert 0 < run["driver_cpu_sweep_s"] < run["driver_cpu_total_s"]
    assert run["driver_cpu_per_trial_ms"] < run["driver_cpu_total_per_trial_ms"]
    assert run["driver_cpu_threads_s"]["MainThread"] > 0
    assert "driver CPU per trial" in stdout


def test_search_benchmark_runs_every_arm_and_reports_the_budget_and_target(
    tmp_path: Path,
) -> None:
    """bench/search_bench.py --smoke: one problem, one seed of each arm, 6 trials of 3 epochs.

    CI runs every arm (``CAVIAR_TEST_ALL_ARMS=1``); ``make test`` leaves out `zoom` (its sweeps
    run in tests/integration/test_zoom_sweep.py) and `optuna_random` (the `optuna_tpe` arm's
    code with another sampler), which keeps it under its time budget."""
    arms: tuple[str, ...] = ("random", "zoom", "tpe", "optuna_tpe", "optuna_random", "ray_optuna")
    if os.environ.get("CAVIAR_TEST_ALL_ARMS") != "1":
        arms = tuple(a for a in arms if a not in ("zoom", "optuna_random"))
    result, stdout = run_harness(
        "search_bench", "--smoke", "--arms", ",".join(arms), tmp_path=tmp_path
    )
    assert result["settings"]["arms"] == list(arms) and not result["partial"]
    (problem,) = result["summary"]
    summary = result["summary"][problem]
    runs = result["runs"][problem]
    assert sorted(r["arm"] for r in runs) == sorted(arms)
    for run in runs:
        assert len(run["trials"]) == 6, run["arm"]  # zoom: 2 rounds of 3
        for trial in run["trials"]:
            assert 1 <= trial["epochs"] <= 3 and trial["start_s"] <= trial["end_s"]
            assert trial["value"] is None or 0.0 <= trial["value"] <= 1.0
    spent = [sum(t["epochs"] for t in r["trials"]) for r in runs]
    assert summary["budget_epochs"] == 15 * 3 > max(spent) > 0  # B: 15 full trials of 3 epochs
    assert summary["target"] == summary["arms"]["random"]["final_median"]
    assert summary["arms"]["random"]["reached_target"] == 1  # random reaches its own best
    assert set(summary["arms"]) == set(arms)
    assert (tmp_path / "search_bench.png").stat().st_size > 10_000
    assert "| arm | median best at B |" in stdout

    # --include: an earlier run's arms join the tables; the arm run now replaces its own.
    earlier = tmp_path / "earlier.json"
    (tmp_path / "search_bench.json").rename(earlier)
    again, stdout = run_harness(
        "search_bench", "--smoke", "--arms", "random", "--include", str(earlier),
        tmp_path=tmp_path,
    )  # fmt: skip
    assert again["settings"]["arms"] == ["random", *(a for a in arms if a != "random")]
    merged = again["runs"][problem]
    assert sorted(r["arm"] for r in merged) == sorted(arms)
    kept = {r["arm"]: r["trials"] for r in runs if r["arm"] != "random"}
    assert {r["arm"]: r["trials"] for r in merged if r["arm"] != "random"} == kept
    assert "| ray_optuna |" in stdout


def test_search_benchmark_pbt_arm_spends_exactly_the_budget(tmp_path: Path) -> None:
    """The opt-in pbt arm: a population of 15 (B's full trials), each trained to the budget,
    so it spends B exactly and its best counts at B."""
    result, stdout = run_harness("search_bench", "--smoke", "--arms", "pbt", tmp_path=tmp_path)
    (problem,) = result["summary"]
    (run,) = result["runs"][problem]
    assert run["arm"] == "pbt" and len(run["trials"]) == 15
    assert all(trial["epochs"] == 3 for trial in run["trials"])
    summary = result["summary"][problem]
    assert summary["budget_epochs"] == 45
    assert summary["arms"]["pbt"]["final_median"] is not None
    assert "| pbt |" in stdout
