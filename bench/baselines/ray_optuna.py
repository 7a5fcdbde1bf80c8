"""Baseline D: TPE the way the Ray Tune docs teach it, ``OptunaSearch`` under ``ASHAScheduler``.

The search benchmark's (bench/search_bench.py) arm ``ray_optuna``. Ray Tune's ``OptunaSearch``
(Optuna's default ``TPESampler``, seeded with the spec's seed) behind the docs'
``ConcurrencyLimiter``, one trial per core, with ASHA on the spec's rungs, workers reused
between trials (``reuse_actors=True``, which changes the seconds, not the search). What is
shared with caviar on purpose, so that only the search and the early stopping differ: the
spec (space, trial count, epoch budget, ASHA settings, seed), caviar's data splits, and
caviar's training step (``trainables.TrainingSession``), as in the Optuna baseline
(``optuna_sh.py``).

Ray has no log1m scale: ``x`` on log1m[low, high] is searched as ``one_minus_x`` log-uniform on
[1 - high, 1 - low] (``ray_tune_docs.param_space``), the same distribution; TPE then models
``log(1 - x)`` as caviar does.

Writes ``trials.json``: each trial's start and end (wall-clock seconds), the epochs it trained
and its objective at its last epoch, which is what the search benchmark reads back.

By hand:
    RAY_AUTH_MODE=disabled python bench/baselines/ray_optuna.py \
        --spec bench/specs/search/digits_wide.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: find `bench` (this script's siblings)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ray
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from bench.baselines.optuna_sh import _settings, load_tensors
from bench.baselines.ray_tune_docs import _trial_config, param_space

REPO = str(Path(__file__).resolve().parents[2])
STARTED = "trial_started"  # wall-clock seconds when the trial began, in every report
WALL = "wall"  # wall-clock seconds of the report


def train(config: dict[str, Any], tensors: Any, metric: str) -> None:
    """One trial: caviar's training step, reported after every epoch."""
    import torch

    from trainables import TrainingSession

    torch.set_num_threads(1)  # one core per trial, as caviar's cpus_per_trial: 1
    started = time.time()
    session = TrainingSession(_trial_config(config), tensors, "cpu")
    while not session.finished:
        result = session.step()
        tune.report(
            {
                "epoch": int(result["epoch"]),
                metric: float(result[metric]),
                STARTED: started,
                WALL: time.time(),
            }
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True, help="the caviar spec to mirror")
    parser.add_argument("--workers", type=int, default=2, help="trials at once (one per core)")
    parser.add_argument("--storage", type=Path, default=Path("ray_results"))
    parser.add_argument("--out", type=Path, default=Path("trials.json"))
    args = parser.parse_args(argv)

    spec = yaml.safe_load(args.spec.read_text(encoding="utf-8"))
    settings = _settings(spec)
    metric, max_epochs = settings["metric"], settings["max_epochs"]
    mode = "min" if settings["direction"] == "minimize" else "max"
    # Ray's workers unpickle `train`, which refers to `bench`: they need the repository on
    # their path as much as this script does.
    ray.init(
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {"PYTHONPATH": REPO}},
    )
    tensors = load_tensors(settings["data"])
    searcher = ConcurrencyLimiter(
        OptunaSearch(metric=metric, mode=mode, seed=settings["seed"]),
        max_concurrent=max(1, args.workers),
    )
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(train, tensors=tensors, metric=metric), {"cpu": 1}
        ),
        param_space=param_space(spec, max_epochs),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            scheduler=ASHAScheduler(
                max_t=max_epochs,
                grace_period=settings["grace_period"],
                reduction_factor=float(settings["reduction_factor"]),
            ),
            search_alg=searcher,
            num_samples=settings["num_trials"],
            # Workers kept between trials: this arm measures the search, and a process start
            # per trial (Tune's default) would only make each run slower, not differently good.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name="ray-optuna", storage_path=str(args.storage.resolve())),
    )
    results = tuner.fit()
    trials = []
    for result in results:
        last = result.metrics or {}
        value = last.get(metric)
        trials.append(
            {
                "start_s": float(last.get(STARTED, last.get(WALL, 0.0))),
                "end_s": float(last.get(WALL, 0.0)),
                "epochs": int(last.get("epoch", 0)),
                "value": None if result.error is not None or value is None else float(value),
            }
        )
    args.out.write_text(json.dumps({"trials": trials}, indent=1) + "\n", encoding="utf-8")
    ray.shutdown()
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
