"""The pack benchmark: K small trials fused into one model, against training them one by one.

For every shape (``LAYERSxUNITS``) and pack size K it trains K members of that shape (each its
own lr, momentum and seed) with ``trainables.pack.PackSession``, and the same kind of configs
one after the other with ``TrainingSession``; it reports

- models/s: models trained (their ``--epochs`` timed epochs each) per second of wall time,
- samples/s: training rows per second summed over the members,
- ratio: pack models/s over sequential models/s (above 1: packing pays),
- peak memory above what the process held before the measurement: CUDA's
  ``max_memory_allocated`` on a GPU, peak RSS (``ru_maxrss``) on the CPU,

and which K ``auto_pack_size`` would choose. Every measurement runs in a fresh subprocess, so
its peak memory is its own and no allocator state carries over. The first ``--warmup``
epochs of every model are not timed. Data are synthetic (a noisy linear teacher), made with
torch, so the benchmark needs nothing but torch and caviar's ``trainables`` (numpy, pydantic):
no Ray, MLflow or scikit-learn.

    .venv/bin/python -m bench.pack_bench                                  # the full grid
    .venv/bin/python -m bench.pack_bench --epochs 2 --out pack.json       # smaller
    python -m bench.pack_bench --device cuda --shapes 2x128,4x512 --ks 1,16,64

On the CPU each measurement uses ``--threads`` intra-op threads (1 by default: the speed-up
per core, the way trials share a machine's cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: find the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_SHAPES = ("1x64", "2x128", "3x256", "4x512")
DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64)


def parse_shape(text: str) -> tuple[int, int]:
    try:
        layers, units = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a shape is LAYERSxUNITS, e.g. 2x128; got {text!r}"
        ) from None
    if layers < 0 or units < 1:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}")
    return layers, units


def _rss_bytes() -> int:
    """This process's resident set now (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# -- one measurement (runs in its own process) ---------------------------------------------


def _make_data(args: dict[str, Any], device: Any) -> Any:
    import torch

    from trainables.train import TensorSplits

    generator = torch.Generator().manual_seed(0)
    n_train, n_val = args["train_rows"], args["val_rows"]
    n = n_train + 2 * n_val
    features, classes = args["features"], args["classes"]
    x = torch.randn(n, features, generator=generator)
    teacher = torch.randn(features, classes, generator=generator)
    y = (x @ teacher + 0.5 * torch.randn(n, classes, generator=generator)).argmax(dim=1)
    cut = (n_train, n_train + n_val)
    return TensorSplits(
        x_train=x[: cut[0]].to(device),
        y_train=y[: cut[0]].to(device),
        x_val=x[cut[0] : cut[1]].to(device),
        y_val=y[cut[0] : cut[1]].to(device),
        x_test=x[cut[1] :].to(device),
        y_test=y[cut[1] :].to(device),
        n_features=features,
        n_classes=classes,
    )


def member_configs(args: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """``count`` configs of one shape that differ as a sweep's would: lr, momentum, seed."""
    return [
        {
            "layers": args["layers"],
            "hidden_units": args["units"],
            "batch_size": args["batch_size"],
            "optimizer": args["optimizer"],
            "learning_rate": 0.02 * (1.0 + 0.05 * i),
            "momentum": 0.9 - 0.002 * (i % 50),
            "epochs": args["warmup"] + args["epochs"],
            "seed": i,
        }
        for i in range(count)
    ]


def measure(args: dict[str, Any]) -> dict[str, Any]:
    """Train K members as a pack (``k`` > 0) or ``seq_models`` one by one (``k`` == 0)."""
    import torch

    from trainables.pack import PackSession
    from trainables.train import TrainingSession

    device = torch.device(args["device"])
    if device.type == "cpu":
        torch.set_num_threads(args["threads"])
    data = _make_data(args, device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        memory_before = torch.cuda.memory_allocated(device)
    else:
        memory_before = _rss_bytes()
    warmup, epochs = args["warmup"], args["epochs"]
    timed = 0.0
    if args["k"] > 0:
        models = args["k"]
        pack = PackSession(member_configs(args, models), data, device)
        for _ in range(warmup):
            pack.step()
        sync()
        started = time.perf_counter()
        for _ in range(epochs):
            pack.step()
        sync()
        timed = time.perf_counter() - started
    else:
        models = args["seq_models"]
        for config in member_configs(args, models):
            session = TrainingSession(config, data, device)
            for _ in range(warmup):
                session.step()
            sync()
            started = time.perf_counter()
            for _ in range(epochs):
                session.step()
            sync()
            timed += time.perf_counter() - started
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - memory_before
    else:
        peak = _peak_rss_bytes() - memory_before
    return {
        "models": models,
        "seconds": timed,
        "models_per_s": models / timed if timed > 0 else float("nan"),
        "samples_per_s": models * epochs * args["train_rows"] / timed if timed > 0 else 0.0,
        "peak_memory_mib": max(peak, 0) / 2**20,
    }


# -- the driver ------------------------------------------------------------------------------


def _run_worker(args: dict[str, Any], timeout: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.pack_bench", "--worker", json.dumps(args)]
    root = Path(__file__).resolve().parent.parent
    path = [str(root), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    done = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"measurement {args} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _auto_k(layers: int, units: int, args: argparse.Namespace, n_configs: int) -> int:
    from trainables.pack import auto_pack_size

    config = {"layers": layers, "hidden_units": units, "batch_size": args.batch_size}
    return auto_pack_size(
        config, args.device, n_configs, n_features=args.features, n_classes=args.classes
    )


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| shape | K | models/s | samples/s | ratio vs seq | peak mem MiB | auto K |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        k = "seq" if row["k"] == 0 else str(row["k"])
        ratio = "1.00" if row["k"] == 0 else f"{row['ratio']:.2f}"
        lines.append(
            f"| {row['shape']} | {k} | {row['models_per_s']:.3f} | {row['samples_per_s']:,.0f} "
            f"| {ratio} | {row['peak_memory_mib']:.1f} | {row.get('auto_k', '')} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help="e.g. 1x64,2x128")
    parser.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="pack sizes")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads on the CPU")
    parser.add_argument("--train-rows", type=int, default=2048)
    parser.add_argument("--val-rows", type=int, default=512)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam", "rmsprop"))
    parser.add_argument("--seq-models", type=int, default=4, help="models in the baseline")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0

    shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
    ks = [int(k) for k in args.ks.split(",") if k]
    if any(k < 1 for k in ks) or args.epochs < 1 or args.warmup < 0:
        parser.error("--ks must be >= 1, --epochs >= 1, --warmup >= 0")
    base = {
        "device": args.device,
        "threads": args.threads,
        "train_rows": args.train_rows,
        "val_rows": args.val_rows,
        "features": args.features,
        "classes": args.classes,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "epochs": args.epochs,
        "warmup": args.warmup,
        "seq_models": args.seq_models,
    }
    rows: list[dict[str, Any]] = []
    for layers, units in shapes:
        shape = f"{layers}x{units}"
        common = {**base, "layers": layers, "units": units}
        sequential = _run_worker({**common, "k": 0}, args.timeout)
        rows.append({"shape": shape, "k": 0, **sequential})
        print(f"{shape} seq: {sequential['models_per_s']:.3f} models/s", file=sys.stderr)
        for k in ks:
            packed = _run_worker({**common, "k": k}, args.timeout)
            ratio = packed["models_per_s"] / sequential["models_per_s"]
            rows.append({"shape": shape, "k": k, **packed, "ratio": ratio})
            print(f"{shape} K={k}: ratio {ratio:.2f}", file=sys.stderr)
        auto = _auto_k(layers, units, args, max(ks))
        for row in rows:
            if row["shape"] == shape and row["k"] == 0:
                row["auto_k"] = auto
    table = markdown(rows)
    print(table)
    if args.out:
        import torch

        report = {
            "settings": {**base, "shapes": args.shapes, "ks": ks},
            "machine": {
                "platform": platform.platform(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "cpus": os.cpu_count(),
                "cuda": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            },
            "rows": rows,
            "table": table,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
