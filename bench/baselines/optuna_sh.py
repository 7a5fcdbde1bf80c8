"""Baseline C: the same sweep with Optuna, worker processes on one SQLite storage.

``run`` creates the study and starts one ``worker`` process per slot; each worker loads the
data once and runs ``study.optimize`` for its share of the trials (the trial count split as
evenly as it goes). Pruning is Optuna's ``SuccessiveHalvingPruner`` with the spec's ASHA
settings (``min_resource`` = grace period, same reduction factor, so the same rungs: 2, 6, 18
epochs), fed by ``trial.report`` / ``trial.should_prune`` after every epoch. No MLflow logging.

The sampler is Optuna's ``RandomSampler`` (seeded per worker from the spec's seed), because
the other systems run random search: the benchmark compares orchestration, not search
algorithms. ``--sampler tpe`` switches to Optuna's default TPE.

A trial trains with caviar's own training step (``trainables.TrainingSession``: mini-batches
sliced from tensors, one thread per worker), so this is what a careful user gets without Ray,
and any difference to caviar is orchestration, not the training loop.

Optuna has no log1m scale: ``x`` on log1m[low, high] is sampled as ``one_minus_x``
log-uniform on [1 - high, 1 - low], the same distribution.

Each worker writes ``worker-<i>.json`` (trial number -> seconds inside training steps) when
it exits; Optuna's storage does not keep per-epoch timings.

Run by bench/sweep_bench.py; by hand:
    python bench/baselines/optuna_sh.py run --spec bench/specs/digits64.yaml
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ONE_MINUS_PREFIX = "one_minus_"  # bench.common.ONE_MINUS_PREFIX; this script stands alone
STUDY_NAME = "digits-optuna-sh"


def _settings(spec: dict[str, Any]) -> dict[str, Any]:
    scheduler = spec.get("scheduler") or {}
    if scheduler.get("kind", "asha") != "asha":
        raise SystemExit("this baseline mirrors ASHA sweeps only")
    fixed = dict(spec.get("fixed") or {})
    objective = spec.get("objective") or {}
    search = spec.get("search") or {}
    data = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0, "standardize": True}
    data.update(spec.get("data") or {})
    return {
        "fixed": fixed,
        "max_epochs": int(scheduler.get("max_epochs") or fixed.get("epochs", 30)),
        "grace_period": int(scheduler.get("grace_period", 2)),
        "reduction_factor": int(scheduler.get("reduction_factor", 3)),
        "metric": objective.get("metric", "val_accuracy"),
        "direction": "minimize" if objective.get("mode", "max") == "min" else "maximize",
        "num_trials": int(search.get("num_trials", 16)),
        "seed": int(search.get("seed", 0)),
        "data": data,
    }


def _pruner(settings: dict[str, Any]) -> Any:
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=settings["grace_period"],
        reduction_factor=settings["reduction_factor"],
        min_early_stopping_rate=0,
    )


def _sampler(kind: str, seed: int) -> Any:
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """One configuration from the spec's space, with Optuna's suggest API."""
    config: dict[str, Any] = {}
    for name, parameter in space.items():
        if "values" in parameter or "grid" in parameter:
            values = list(parameter.get("values", parameter.get("grid")))
            config[name] = trial.suggest_categorical(name, values)
            continue
        scale = parameter.get("scale", "linear")
        low, high = parameter["low"], parameter["high"]
        integer = bool(parameter.get("integer", False))
        if scale == "log1m":
            one_minus = trial.suggest_float(
                ONE_MINUS_PREFIX + name, 1.0 - high, 1.0 - low, log=True
            )
            config[name] = 1.0 - one_minus
        elif integer:
            config[name] = trial.suggest_int(name, int(low), int(high), log=scale == "log")
        else:
            config[name] = trial.suggest_float(name, low, high, log=scale == "log")
    return config


def load_tensors(data: dict[str, Any]) -> Any:
    """The spec's data as caviar splits it (same generator, fractions, seed and scaling), as
    CPU tensors (``trainables.TensorSplits``)."""
    from trainables import TensorSplits, load_bundled, make_synthetic, split_and_scale

    if data["source"] == "synthetic":  # caviar's generator, with the spec's sizes and seed
        x, y, class_names, feature_names = make_synthetic(
            int(data.get("n_samples", 1000)),
            int(data.get("n_features", 20)),
            int(data.get("n_classes", 3)),
            int(data["seed"]),
        )
    else:
        x, y, class_names, feature_names = load_bundled(data["source"])
    splits = split_and_scale(
        x,
        y,
        val_fraction=data["val_fraction"],
        test_fraction=data["test_fraction"],
        seed=data["seed"],
        standardize=data["standardize"],
        class_names=class_names,
        feature_names=feature_names,
    )
    return TensorSplits.from_splits(splits, "cpu")


def worker(args: argparse.Namespace) -> int:
    """One worker process: data once, then trials until its share is done."""
    import optuna
    import torch

    from trainables import TrainingSession

    spec = yaml.safe_load(args.spec.read_text(encoding="utf-8"))
    settings = _settings(spec)
    torch.set_num_threads(1)  # one core per worker, like one CPU per trial elsewhere
    tensors = load_tensors(settings["data"])
    metric = settings["metric"]
    step_seconds: dict[int, float] = {}

    def objective(trial: Any) -> float:
        config = {**settings["fixed"], **suggest(trial, spec["space"])}
        config["epochs"] = settings["max_epochs"]
        session = TrainingSession(config, tensors, "cpu")
        step_seconds[trial.number] = 0.0
        value = float("nan")
        while not session.finished:
            result = session.step()
            step_seconds[trial.number] += float(result["epoch_seconds"])
            value = float(result[metric])
            trial.report(value, int(result["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study = optuna.load_study(
        study_name=args.study,
        storage=args.storage,
        sampler=_sampler(args.sampler, settings["seed"] * 1000 + args.index),
        pruner=_pruner(settings),
    )
    try:
        study.optimize(objective, n_trials=args.n_trials)
    finally:
        out = args.out_dir / f"worker-{args.index}.json"
        out.write_text(json.dumps({"epoch_seconds": step_seconds}), encoding="utf-8")
    return 0


def run(args: argparse.Namespace) -> int:
    """Create the study, start the workers, wait, report the best trial."""
    import optuna

    spec = yaml.safe_load(args.spec.read_text(encoding="utf-8"))
    settings = _settings(spec)
    optuna.create_study(
        study_name=args.study,
        storage=args.storage,
        direction=settings["direction"],
        sampler=_sampler(args.sampler, settings["seed"]),
        pruner=_pruner(settings),
    )
    total, workers = settings["num_trials"], max(1, args.workers)
    shares = [total // workers + (1 if i < total % workers else 0) for i in range(workers)]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "worker",
                "--spec",
                str(args.spec),
                "--storage",
                args.storage,
                "--study",
                args.study,
                "--sampler",
                args.sampler,
                "--out-dir",
                str(args.out_dir),
                "--index",
                str(index),
                "--n-trials",
                str(share),
            ]
        )
        for index, share in enumerate(shares)
        if share > 0
    ]
    codes = [process.wait() for process in processes]
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete:
        print(f"best {settings['metric']}: {study.best_value} with {study.best_params}")
    return max(codes, default=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "worker"), nargs="?", default="run")
    parser.add_argument("--spec", type=Path, required=True, help="the caviar spec to mirror")
    parser.add_argument("--storage", default="sqlite:///optuna.db")
    parser.add_argument("--study", default=STUDY_NAME)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (run)")
    parser.add_argument("--sampler", choices=("random", "tpe"), default="random")
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    parser.add_argument("--index", type=int, default=0, help="this worker's index (worker)")
    parser.add_argument("--n-trials", type=int, default=0, help="this worker's share (worker)")
    args = parser.parse_args(argv)
    args.spec = args.spec.resolve()
    args.out_dir = args.out_dir.resolve()
    return worker(args) if args.command == "worker" else run(args)


if __name__ == "__main__":
    sys.exit(main())
