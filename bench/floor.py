"""The compute floor: the epochs a sweep trained, timed in isolation, spread over the slots.

For every trial a sweep ran, the trial's own configuration is trained in this one warm
process (one torch thread, as a trial gets one CPU) with caviar's training step: one untimed
epoch to warm up, then ``--timed-epochs`` epochs whose median ``epoch_seconds`` is that
configuration's isolated epoch time ``t``. Then

    floor = sum over trials of (epochs the trial trained x its t) / slots

which is how long the sweep would take if the slots did nothing but train, perfectly packed:
no process starts, imports, data loading, scheduling, reporting or logging. Using each
trial's own configuration matters: epoch times differ several-fold between batch size 32 with
three 256-unit layers and batch size 128 with one 16-unit layer.

Input (``--jobs``): {"slots": n, "systems": {name: [{"config": {...}, "epochs": k}, ...]}}.
Output (``--out``): {name: {"floor_s", "epochs", "compute_s", "mean_epoch_s", "trials"}}.
Run by bench/sweep_bench.py as a subprocess, so the timing process is as cold or warm as a
trial's and the harness's own imports do not count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python bench/floor.py): find `bench`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load_splits, load_yaml


def isolated_epoch_seconds(config: dict[str, Any], tensors: Any, timed_epochs: int) -> float:
    """Median steady-state epoch time of one configuration (the first epoch is warm-up)."""
    from trainables import TrainingSession

    session = TrainingSession(config, tensors, "cpu")
    warm = float(session.step()["epoch_seconds"])
    timed = []
    while len(timed) < timed_epochs and not session.finished:
        timed.append(float(session.step()["epoch_seconds"]))
    return statistics.median(timed) if timed else warm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True, help="the sweep's spec (its data)")
    parser.add_argument("--jobs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timed-epochs", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from trainables import TensorSplits

    torch.set_num_threads(1)
    spec = load_yaml(args.spec)
    tensors = TensorSplits.from_splits(load_splits(spec.get("data") or {}), "cpu")
    jobs = json.loads(args.jobs.read_text(encoding="utf-8"))
    slots = int(jobs["slots"])

    started = time.perf_counter()
    cache: dict[str, float] = {}
    out: dict[str, Any] = {}
    for system, trials in jobs["systems"].items():
        compute = 0.0
        epochs = 0
        for trial in trials:
            if int(trial["epochs"]) <= 0:
                continue
            key = json.dumps(trial["config"], sort_keys=True, default=str)
            if key not in cache:
                cache[key] = isolated_epoch_seconds(trial["config"], tensors, args.timed_epochs)
            compute += int(trial["epochs"]) * cache[key]
            epochs += int(trial["epochs"])
        out[system] = {
            "floor_s": compute / slots,
            "compute_s": compute,
            "epochs": epochs,
            "mean_epoch_s": compute / epochs if epochs else None,
            "trials": len(trials),
        }
    out["_timing_s"] = time.perf_counter() - started
    args.out.write_text(json.dumps(out, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
