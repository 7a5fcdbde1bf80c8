"""The harness's arithmetic and its baselines' search spaces, without running any sweep.

The smoke test (test_bench_smoke.py) proves the harness runs; these pin what its numbers mean,
and that every system searches the space the spec describes, which a smoke run cannot see.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bench.common import (
    SPECS_DIR,
    Timed,
    effective_spec,
    load_yaml,
    max_epochs_of,
    median,
    mlp_config,
    ratio,
)
from bench.readers import SweepRead, TrialRow, best_at_deepest, summarize, sweep_wall_s

SPEC = load_yaml(SPECS_DIR / "digits64.yaml")


def row(start: float, end: float, epochs: int, acc: float | None, secs: float) -> TrialRow:
    return TrialRow(
        start_s=start, end_s=end, epochs=epochs, last_val_accuracy=acc, epoch_seconds=secs
    )


def test_the_benchmark_spec_is_the_issue_sweep_and_caviar_accepts_it() -> None:
    from orchestrator.spec import parse_spec

    spec = parse_spec(SPEC)
    assert spec.num_trials() == 64
    assert spec.max_epochs == 30
    assert (spec.scheduler.grace_period, spec.scheduler.reduction_factor) == (2, 3)
    assert spec.search.seed == 0
    example = load_yaml(SPECS_DIR.parent.parent / "examples" / "digits.yaml")
    assert SPEC["space"] == example["space"]
    assert SPEC["fixed"] == example["fixed"]


def test_effective_spec_overrides_size_only_and_keeps_grace_within_budget() -> None:
    small = effective_spec(SPEC, trials=4, max_epochs=1)
    assert small["search"]["num_trials"] == 4
    assert small["scheduler"]["max_epochs"] == 1
    assert small["scheduler"]["grace_period"] == 1  # caviar refuses grace > max_epochs
    assert small["space"] == SPEC["space"]
    assert SPEC["search"]["num_trials"] == 64  # the base is not modified
    assert max_epochs_of(small) == 1
    assert max_epochs_of({"fixed": {"epochs": 7}}) == 7
    assert max_epochs_of({}) == 30


def test_sweep_wall_is_first_start_to_last_end() -> None:
    trials = [
        row(10.0, 12.0, 2, 0.5, 0.1),
        row(11.0, 15.5, 30, 0.9, 1.0),
        row(12.0, 13.0, 2, 0.6, 0.1),
    ]
    assert sweep_wall_s(trials) == pytest.approx(5.5)


def test_best_is_the_best_of_the_deepest_trials_not_a_lucky_early_stop() -> None:
    trials = [
        row(0, 1, 2, 0.99, 0.1),  # stopped early with a lucky score
        row(0, 1, 30, 0.90, 1.0),
        row(0, 1, 30, 0.95, 1.0),
        row(0, 1, 30, None, 1.0),  # non-finite: never best
    ]
    assert best_at_deepest(trials) == pytest.approx(0.95)
    assert best_at_deepest([row(0, 1, 2, None, 0.1)]) is None


def test_summary_numbers_follow_their_definitions() -> None:
    read = SweepRead(
        [row(100.0, 104.0, 6, 0.8, 3.0), row(101.0, 110.0, 18, 0.9, 5.0)], extra={"x": 1}
    )
    command = Timed(started_at=95.0, seconds=20.0)
    summary = summarize(read, command, slots=2)
    assert summary["sweep_wall_s"] == pytest.approx(10.0)
    assert summary["end_to_end_s"] == pytest.approx(20.0)
    assert summary["before_first_trial_s"] == pytest.approx(5.0)
    assert summary["after_last_trial_s"] == pytest.approx(5.0)
    assert summary["epochs_trained"] == 24
    assert summary["trials_per_min"] == pytest.approx(12.0)
    assert summary["training_s"] == pytest.approx(8.0)
    assert summary["training_fraction"] == pytest.approx(8.0 / (10.0 * 2))
    assert summary["best_val_accuracy"] == pytest.approx(0.9)
    assert summary["x"] == 1


def test_baseline_params_map_back_to_the_trainables_config() -> None:
    from trainables import MlpConfig

    # What a store hands back: strings, and log1m parameters as one_minus_<name>.
    params = {
        "learning_rate": "0.01",
        "one_minus_momentum": "0.05",
        "hidden_units": "64",
        "layers": "2",
        "batch_size": "32",
        "optimizer": "sgd",
        "batch_norm": "True",
        "bn_eval": "ewma",
    }
    config = MlpConfig.model_validate(mlp_config(params, max_epochs=30))
    assert config.momentum == pytest.approx(0.95)
    assert (config.hidden_units, config.batch_norm, config.epochs) == (64, True, 30)


def test_medians_and_ratios() -> None:
    from bench.sweep_bench import aggregate, format_table

    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([None]) is None
    assert ratio(1.0, 4.0) == 0.25
    assert ratio(1.0, 0.0) is None
    runs: list[dict[str, Any]] = []
    for rep, (caviar, optuna) in enumerate([(30.0, 20.0), (28.0, 19.0), (40.0, 21.0)]):
        runs.append({"system": "caviar", "rep": rep, "sweep_wall_s": caviar, "floor_s": 10.0})
        runs.append({"system": "optuna", "rep": rep, "sweep_wall_s": optuna, "floor_s": 9.0})
    result = aggregate(runs, ["caviar", "optuna"])
    assert result["medians"]["caviar"]["sweep_wall_s"] == 30.0
    assert result["ratios"]["caviar/optuna"]["sweep_wall"] == pytest.approx(30.0 / 20.0)
    assert result["ratios"]["caviar/optuna"]["end_to_end"] is None  # not measured here
    assert result["ratios"]["caviar/floor"]["sweep_wall"] == pytest.approx(3.0)
    settings = {"trials": 64, "max_epochs": 30, "grace_period": 2, "reduction_factor": 3}
    table = format_table({**result, "settings": {**settings, "slots": 2, "reps": 3}})
    assert "caviar/optuna" in table and "compute floor" in table and "30.0 s" in table


def test_the_baseline_checkout_gets_its_own_ratios_against_the_same_peers() -> None:
    from bench.sweep_bench import aggregate

    runs = [
        {"system": system, "rep": 0, "sweep_wall_s": wall, "end_to_end_s": e2e}
        for system, wall, e2e in (
            ("caviar_baseline", 4.0, 20.0), ("caviar", 4.0, 16.0), ("optuna", 8.0, 16.0)
        )
    ]  # fmt: skip
    ratios = aggregate(runs, ["caviar_baseline", "caviar", "optuna"])["ratios"]
    assert ratios["caviar/caviar_baseline"]["end_to_end"] == pytest.approx(0.8)
    assert ratios["caviar/optuna"]["end_to_end"] == pytest.approx(1.0)
    assert ratios["caviar_baseline/optuna"]["end_to_end"] == pytest.approx(1.25)
    assert "caviar_baseline/caviar" not in ratios


def test_ray_tune_baseline_samples_the_specs_space() -> None:
    import numpy as np

    from bench.baselines.ray_tune_docs import param_space

    space = param_space(SPEC, 30)
    assert "momentum" not in space and "one_minus_momentum" in space
    assert space["epochs"] == 30 and space["optimizer"] == "sgd" and space["batch_norm"] is True
    rng = np.random.default_rng(0)
    lr = np.asarray(space["learning_rate"].sample(size=2000, random_state=rng))
    one_minus = np.asarray(space["one_minus_momentum"].sample(size=2000, random_state=rng))
    units = np.asarray(space["hidden_units"].sample(size=2000, random_state=rng))
    assert 1e-3 <= lr.min() and lr.max() <= 1.0
    momentum = 1.0 - one_minus
    assert 0.8 <= momentum.min() and momentum.max() <= 0.999
    assert units.min() >= 16 and units.max() <= 256
    assert set(units.tolist()) >= {16, 256}  # both ends reachable (Tune's upper is exclusive)
    # Log scales: about a third of the learning rates in each decade of 1e-3..1.
    for low in (1e-3, 1e-2, 1e-1):
        share = np.mean((lr >= low) & (lr < low * 10))
        assert 0.28 < share < 0.39
    assert set(space["layers"].categories) == {1, 2, 3}
    assert set(space["batch_size"].categories) == {32, 64, 128}


def test_optuna_baseline_samples_the_specs_space() -> None:
    import optuna

    from bench.baselines.optuna_sh import suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(500):
        trial = study.ask()
        configs.append(suggest(trial, SPEC["space"]))
        study.tell(trial, 0.0)
    assert set(configs[0]) == set(SPEC["space"])
    assert all(1e-3 <= c["learning_rate"] <= 1.0 for c in configs)
    assert all(0.8 <= c["momentum"] <= 0.999 for c in configs)
    assert all(
        16 <= c["hidden_units"] <= 256 and c["hidden_units"] == int(c["hidden_units"])
        for c in configs
    )
    assert {c["layers"] for c in configs} == {1, 2, 3}
    assert {c["batch_size"] for c in configs} == {32, 64, 128}
    # momentum on log1m: about a third of the draws in each of (0.8, 0.98), (0.98, 0.998)...
    short = sum(1 - c["momentum"] > 0.02 for c in configs) / len(configs)
    assert 0.3 < short < 0.55  # log10(0.2/0.02) / log10(0.2/0.001) = 0.43


def test_noop_trainable_steps_take_their_time_and_resume() -> None:
    import time

    import torch

    from bench.noop_trainable import NAME, NoopSession
    from trainables import TensorSplits, get_trainable, load_bundled, split_and_scale

    assert get_trainable(NAME).make_session is NoopSession
    x, y, classes, features = load_bundled("iris")
    splits = split_and_scale(
        x,
        y,
        val_fraction=0.2,
        test_fraction=0.2,
        seed=0,
        standardize=True,
        class_names=classes,
        feature_names=features,
    )
    tensors = TensorSplits.from_splits(splits, "cpu")
    session = NoopSession({"step_seconds": 0.02, "epochs": 3, "seed": 5}, tensors)
    started = time.perf_counter()
    results = [session.step() for _ in range(3)]
    assert time.perf_counter() - started >= 0.06
    assert session.finished
    assert [r["epoch"] for r in results] == [1, 2, 3]
    assert all(r["epoch_seconds"] >= 0.02 and 0 <= r["val_accuracy"] <= 1 for r in results)
    again = NoopSession({"step_seconds": 0.0, "epochs": 3}, tensors)
    again.load_state_dict(session.state_dict())
    assert again.finished
    loss, accuracy = again.evaluate(tensors.x_test, tensors.y_test)
    assert math.isfinite(loss) and 0 <= accuracy <= 1
    assert isinstance(again.model, torch.nn.Module)


def test_overhead_minimum_and_numbers() -> None:
    from bench.overhead_bench import minimum_seconds, noop_spec, overhead_numbers
    from orchestrator.spec import parse_spec

    assert minimum_seconds(64, 30, 0.01, 2) == pytest.approx(9.6)
    assert minimum_seconds(5, 30, 0.01, 2) == pytest.approx(0.9)  # 3 rounds on 2 slots
    spec = parse_spec(noop_spec(4, 5, 0.01, "spin"))  # caviar accepts the no-op spec
    assert spec.num_trials() == 4 and spec.max_epochs == 5
    summary = {"sweep_wall_s": 2.0, "epochs_trained": 20, "training_s": 0.2}
    numbers = overhead_numbers(summary, trials=4, reports=5, step_seconds=0.01, slots=2)
    assert numbers["minimum_s"] == pytest.approx(0.1)
    assert numbers["over_minimum"] == pytest.approx(20.0)
    assert numbers["reports_per_s"] == pytest.approx(10.0)
    # (2 s x 2 slots - 0.2 s in steps) / 20 reports = 190 ms of slot time per report
    assert numbers["overhead_per_report_ms"] == pytest.approx(190.0)


def test_driver_cpu_per_trial_reads_the_sweep_window_off_the_samples() -> None:
    from bench.overhead_bench import driver_cpu_numbers

    # [wall clock s, process CPU s]: 1 s of CPU before the sweep, 2 s in it, 1 s after.
    samples = [[0.0, 0.0], [10.0, 1.0], [12.0, 2.0], [14.0, 3.0], [20.0, 4.0]]
    numbers = driver_cpu_numbers(samples, 4.5, first_start_s=10.0, last_end_s=14.0, trials=4)
    assert numbers["driver_cpu_sweep_s"] == pytest.approx(2.0)
    assert numbers["driver_cpu_per_trial_ms"] == pytest.approx(500.0)
    assert numbers["driver_cpu_total_per_trial_ms"] == pytest.approx(1125.0)
    # Between two samples the CPU is interpolated; outside them it is the nearest sample's.
    inside = driver_cpu_numbers(samples, 4.5, first_start_s=11.0, last_end_s=13.0, trials=1)
    assert inside["driver_cpu_sweep_s"] == pytest.approx(1.0)
    outside = driver_cpu_numbers(samples, 4.5, first_start_s=-5.0, last_end_s=25.0, trials=1)
    assert outside["driver_cpu_sweep_s"] == pytest.approx(4.0)


def test_each_threads_cpu_in_the_sweep_window() -> None:
    from bench.overhead_bench import threads_in_window

    samples = [
        [0.0, {"MainThread": 1.0}],
        [10.0, {"MainThread": 2.0, "caviar-mlflow": 0.0}],
        [20.0, {"MainThread": 4.0, "caviar-mlflow": 3.0}],
    ]
    spent = threads_in_window(samples, first_start_s=10.0, last_end_s=15.0)
    assert spent == {"MainThread": pytest.approx(1.0), "caviar-mlflow": pytest.approx(1.5)}


def test_sink_bench_writes_the_same_runs_on_both_arms(tmp_path: Path) -> None:
    """Its two arms must write the same trials, or their CPU would not compare."""
    from mlflow import MlflowClient

    from bench.sink_bench import ARMS, main

    for arm, write in ARMS.items():
        folder = tmp_path / arm
        folder.mkdir()
        write(folder, 3, 2)
        client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        (experiment,) = [e for e in client.search_experiments() if e.name == "sink-bench"]
        runs = client.search_runs([experiment.experiment_id], "tags.caviar.round = '1'")
        assert sorted(r.info.run_name for r in runs) == ["trial-000", "trial-001", "trial-002"]
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert all(r.data.metrics["val_accuracy"] == 0.5 for r in runs)
        assert all(r.data.tags["caviar.outcome"] == "completed" for r in runs)
    assert main(["--trials", "2", "--reps", "1", "--out", str(tmp_path / "out.json")]) == 0


def test_regroup_potential_counts_alone_epochs_another_unit_of_the_shape_shares() -> None:
    """Two lone trials of one shape training at the same time could have been one pack; a
    pack's last member overlapping a lone trial of another width counts only if padded."""
    from bench.regroup_potential import _overlapping, alone_epochs
    from orchestrator.trials import Trial

    def trial(index: int, units: int, start: float, epochs: int, pack: int | None = None):
        history = [
            {"epoch": e, "ended_at": start + e, "epoch_seconds": 1.0} for e in range(1, epochs + 1)
        ]
        config = {"hidden_units": units, "layers": 2, "batch_size": 64}
        return Trial(index, config, history=history, pack=pack)

    records = [
        trial(0, 32, 0.0, 3),  # alone, epochs over [0, 3]
        trial(1, 32, 0.5, 3),  # alone, same shape, overlapping: both regroupable
        trial(2, 64, 10.0, 4, pack=2),  # a pack of two: its epochs 3-4 are alone
        trial(3, 64, 10.0, 2, pack=2),
        trial(4, 48, 12.2, 2),  # alone, another width, overlapping trial 2's epochs 3-4
    ]
    epochs = alone_epochs(records, {})
    assert sorted((e.trial, round(e.end)) for e in epochs if e.trial == 2) == [(2, 13), (2, 14)]
    assert _overlapping(epochs, "shape") == 6  # trials 0 and 1, three epochs each
    assert _overlapping(epochs, "padded") == 6 + 2 + 2  # and trial 2 with trial 4
