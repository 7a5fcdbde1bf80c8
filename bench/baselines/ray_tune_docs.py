"""Baseline B: the sweep written the way the Ray Tune docs teach it.

A function trainable that loads the dataset and builds its model in every trial, trains with a
torch ``DataLoader``, calls ``tune.report`` after every epoch, under an ``ASHAScheduler``, with
``MLflowLoggerCallback`` logging every result to an MLflow SQLite store. ``reuse_actors`` is
Tune's default for ``TuneConfig`` (False in Ray 2.60): a fresh worker process per trial.
``--reuse-actors`` gives the variant that keeps workers between trials.

What is shared with caviar on purpose, so that only the orchestration differs: the spec file
(search space, trial count, epoch budget, ASHA settings, seed, data splits), the network
(``trainables.BnSoftmaxMLP``) and the optimizer mapping (``build_optimizer``). The training
loop itself is the docs' (``DataLoader`` mini-batches), not caviar's tensor slicing.

Deliberate departures from a copy-paste of the docs, each so the comparison is fair:
``ray.init`` is called explicitly, bound to 127.0.0.1 without the dashboard and with the token
authentication the caller puts in the environment, as ``caviar run`` starts Ray; no
checkpoints are written (caviar writes some, so this favours the baseline).

Run by bench/sweep_bench.py; by hand:
    RAY_AUTH_MODE=disabled python bench/baselines/ray_tune_docs.py --spec bench/specs/digits64.yaml
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import ray
import torch
import torch.nn.functional as F
import yaml
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from torch.utils.data import DataLoader, TensorDataset

from trainables import BnSoftmaxMLP, MlpConfig, load_bundled, split_and_scale
from trainables.model import recompute_population_statistics
from trainables.train import build_optimizer, learning_rate_at

ONE_MINUS_PREFIX = "one_minus_"  # bench.common.ONE_MINUS_PREFIX; this script stands alone


def train_digits(config: dict[str, Any], data_settings: dict[str, Any]) -> None:
    """One trial, the docs' way: load, split, build, then train and report epoch by epoch."""
    x, y, class_names, feature_names = load_bundled(data_settings["source"])
    splits = split_and_scale(
        x,
        y,
        val_fraction=data_settings["val_fraction"],
        test_fraction=data_settings["test_fraction"],
        seed=data_settings["seed"],
        standardize=data_settings["standardize"],
        class_names=class_names,
        feature_names=feature_names,
    )
    cfg = MlpConfig.model_validate(_trial_config(config))
    torch.manual_seed(cfg.seed)

    train_set = TensorDataset(torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train))
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(train_set) % cfg.batch_size == 1,  # BatchNorm cannot take a 1-row batch
    )
    x_train = torch.from_numpy(splits.x_train)
    x_val, y_val = torch.from_numpy(splits.x_val), torch.from_numpy(splits.y_val)
    model = BnSoftmaxMLP(
        splits.n_features,
        splits.n_classes,
        hidden_units=cfg.hidden_units,
        layers=cfg.layers,
        activation=cfg.activation,
        batch_norm=cfg.batch_norm,
        bn_momentum=cfg.bn_momentum,
    )
    optimizer = build_optimizer(cfg, model.parameters())

    for epoch in range(cfg.epochs):
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(cfg, epoch)
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for xb, yb in loader:
            optimizer.zero_grad()
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(yb)
            correct += int((logits.argmax(dim=1) == yb).sum())
            seen += len(yb)
        if cfg.bn_eval == "population":
            recompute_population_statistics(model, x_train)
        model.eval()
        with torch.no_grad():
            val_logits = model(x_val)
            val_loss = F.cross_entropy(val_logits, y_val).item()
            val_accuracy = float((val_logits.argmax(dim=1) == y_val).float().mean())
        tune.report(
            {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "epoch_seconds": time.perf_counter() - started,
            }
        )


def _trial_config(config: dict[str, Any]) -> dict[str, Any]:
    """Tune's sampled config to the trainable's: ``one_minus_x`` (log-uniform) back to x."""
    out = {}
    for key, value in config.items():
        if key.startswith(ONE_MINUS_PREFIX):
            out[key[len(ONE_MINUS_PREFIX) :]] = 1.0 - float(value)
        else:
            out[key] = value
    return out


def param_space(spec: dict[str, Any], max_epochs: int) -> dict[str, Any]:
    """The spec's space in Ray Tune's domains, plus the fixed values as constants.

    Ray has no log1m scale, so ``x`` on log1m[low, high] is sampled as ``1 - x`` log-uniform
    on [1 - high, 1 - low], the same distribution. Integer log ranges use ``lograndint``
    (upper bound exclusive in Tune, hence ``high + 1``).
    """
    space: dict[str, Any] = {}
    for name, parameter in spec["space"].items():
        if "values" in parameter:
            space[name] = tune.choice(list(parameter["values"]))
        elif "grid" in parameter:
            space[name] = tune.grid_search(list(parameter["grid"]))
        else:
            scale = parameter.get("scale", "linear")
            low, high = parameter["low"], parameter["high"]
            integer = bool(parameter.get("integer", False))
            if scale == "log1m":
                space[ONE_MINUS_PREFIX + name] = tune.loguniform(1.0 - high, 1.0 - low)
            elif scale == "log":
                space[name] = (
                    tune.lograndint(int(low), int(high) + 1)
                    if integer
                    else tune.loguniform(low, high)
                )
            else:
                space[name] = (
                    tune.randint(int(low), int(high) + 1) if integer else tune.uniform(low, high)
                )
    space.update(spec.get("fixed") or {})
    space["epochs"] = max_epochs
    return space


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True, help="the caviar spec to mirror")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="ray-tune-docs")
    parser.add_argument("--storage", type=Path, default=Path("ray_results"))
    parser.add_argument("--reuse-actors", action="store_true", help="keep workers across trials")
    args = parser.parse_args(argv)

    spec = yaml.safe_load(args.spec.read_text(encoding="utf-8"))
    scheduler = spec.get("scheduler") or {}
    if scheduler.get("kind", "asha") != "asha":
        raise SystemExit("this baseline mirrors ASHA sweeps only")
    fixed = spec.get("fixed") or {}
    max_epochs = int(scheduler.get("max_epochs") or fixed.get("epochs", 30))
    search = spec.get("search") or {}
    objective = spec.get("objective") or {}
    metric = objective.get("metric", "val_accuracy")
    mode = objective.get("mode", "max")
    data = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0, "standardize": True}
    data.update(spec.get("data") or {})
    cpus = (spec.get("resources") or {}).get("cpus_per_trial", 1)

    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_digits, data_settings=data), {"cpu": cpus}),
        param_space=param_space(spec, max_epochs),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            scheduler=ASHAScheduler(
                max_t=max_epochs,
                grace_period=int(scheduler.get("grace_period", 2)),
                reduction_factor=float(scheduler.get("reduction_factor", 3)),
                brackets=int(scheduler.get("brackets", 1)),
            ),
            search_alg=BasicVariantGenerator(random_state=int(search.get("seed", 0))),
            num_samples=int(search.get("num_trials", 16)),
            reuse_actors=args.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=args.experiment,
            storage_path=str(args.storage.resolve()),
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=args.tracking_uri, experiment_name=args.experiment
                )
            ],
        ),
    )
    results = tuner.fit()
    best = results.get_best_result(metric=metric, mode=mode, scope="last")
    print(f"best {metric}: {best.metrics.get(metric)} with {best.config}", flush=True)
    ray.shutdown()
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
