"""The overhead benchmark: no-op trials through caviar's own machinery, against the minimum.

Every trial reports ``--reports`` times (30) and each step takes exactly ``--step-ms`` (10 ms,
spinning on its core by default); nothing is trained. With no early stopping (FIFO), the
fastest any orchestrator could finish is

    minimum = ceil(trials / slots) x reports x step time

so the sweep wall time over that minimum, and the slot time per report not spent in steps,
are pure orchestration cost: scheduling, the actor round trip per result, callbacks, MLflow
queueing, checkpoints.

The sweep is a real ``caviar run`` (``orchestrator.cli.main``) of a spec naming the
``bench_noop`` trainable (bench/noop_trainable.py). caviar's trainable registry is per
process and caviar has no plugin setting, so the driver here starts Ray itself, as
``caviar run`` would (loopback, no dashboard, token auth from the environment), adding the
job's ``worker_process_setup_hook`` that registers ``bench_noop`` in every worker; caviar then
uses that Ray instead of starting its own. See docs/performance.md.

    .venv/bin/python -m bench.overhead_bench                     # 3 repetitions, full size
    .venv/bin/python -m bench.overhead_bench --reps 1 --trials 4 --reports 5   # smoke size
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python bench/overhead_bench.py): find `bench`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    REPO_ROOT,
    RESULTS_DIR,
    BenchError,
    Timed,
    clean_env,
    fresh_workdir,
    machine_info,
    median,
    ray_token_env,
    run_timed,
    slots,
    write_json,
    write_yaml,
)
from bench.readers import read_caviar, summarize

SPEC_FILE = "spec.yaml"
EXPERIMENT = "noop-overhead"
SETUP_HOOK = "bench.noop_trainable.register"
MEDIAN_KEYS = (
    "sweep_wall_s",
    "end_to_end_s",
    "before_first_trial_s",
    "after_last_trial_s",
    "minimum_s",
    "over_minimum",
    "overhead_per_report_ms",
    "reports_per_s",
    "reports",
    "trials",
)


def noop_spec(trials: int, reports: int, step_seconds: float, step_kind: str) -> dict[str, Any]:
    """A caviar spec of ``trials`` no-op trials of ``reports`` steps each, no early stopping."""
    return {
        "name": EXPERIMENT,
        "description": "bench/overhead_bench.py: no-op trials, pure orchestration overhead.",
        "data": {"source": "iris"},  # the trainable ignores it; small, so it costs nothing
        "trainable": "bench_noop",
        "space": {"seed": {"scale": "linear", "low": 0, "high": 100000, "integer": True}},
        "fixed": {"step_seconds": step_seconds, "step_kind": step_kind},
        "search": {"strategy": "random", "num_trials": trials, "seed": 0},
        "scheduler": {"kind": "fifo", "max_epochs": reports},
        "objective": {"metric": "val_accuracy", "mode": "max"},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
        "tracking": {"uri": "sqlite:///mlflow.db"},
    }


def minimum_seconds(trials: int, reports: int, step_seconds: float, slots: int) -> float:
    """The best possible makespan: identical trials packed onto ``slots`` with no gaps."""
    return math.ceil(trials / slots) * reports * step_seconds


def overhead_numbers(
    summary: dict[str, Any], trials: int, reports: int, step_seconds: float, slots: int
) -> dict[str, Any]:
    """The run's numbers against the minimum (docs/performance.md defines them)."""
    minimum = minimum_seconds(trials, reports, step_seconds, slots)
    wall = summary["sweep_wall_s"]
    total_reports = summary["epochs_trained"]
    idle = wall * slots - summary["training_s"]
    return {
        "minimum_s": minimum,
        "over_minimum": wall / minimum if minimum > 0 else None,
        "reports": total_reports,
        "reports_per_s": total_reports / wall if wall > 0 else None,
        "overhead_per_report_ms": 1000.0 * idle / total_reports if total_reports else None,
    }


def inner(spec_path: Path) -> int:
    """The driver process: Ray with the worker setup hook, then ``caviar run`` in-process."""
    from orchestrator.environment import apply_environment_defaults

    apply_environment_defaults()  # before Ray starts: its processes inherit it
    import ray

    import bench.noop_trainable  # noqa: F401  # registers bench_noop in the driver
    from orchestrator.cli import main as caviar_main

    if os.environ.get("RAY_AUTH_MODE") != "token" or not os.environ.get("RAY_AUTH_TOKEN"):
        raise SystemExit("run by the harness: it puts a fresh Ray auth token in the environment")
    ray.init(
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
        _node_ip_address="127.0.0.1",
        runtime_env={"worker_process_setup_hook": SETUP_HOOK},
    )
    try:
        return caviar_main(["run", str(spec_path)])
    finally:
        ray.shutdown()


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    n_slots = slots()
    step_seconds = args.step_ms / 1000.0
    spec = noop_spec(args.trials, args.reports, step_seconds, args.step_kind)
    base = fresh_workdir(args.workdir, "caviar-overhead-bench-")
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    result: dict[str, Any] = {
        "benchmark": "overhead",
        "machine": machine_info(),
        "settings": {
            "trials": args.trials,
            "reports": args.reports,
            "step_ms": args.step_ms,
            "step_kind": args.step_kind,
            "reps": args.reps,
            "slots": n_slots,
            "spec": spec,
            "workdir": str(base),
        },
        "runs": [],
    }
    ok = False
    try:
        for rep in range(args.reps):
            workdir = base / f"rep{rep}"
            workdir.mkdir()
            write_yaml(spec, workdir / SPEC_FILE)
            timed: Timed = run_timed(
                [sys.executable, "-m", "bench.overhead_bench", "--inner", SPEC_FILE],
                cwd=workdir,
                env=clean_env(PYTHONPATH=pythonpath, **ray_token_env()),
                log_name="caviar.log",
                timeout_s=args.timeout,
            )
            summary = summarize(read_caviar(workdir / "mlflow.db", EXPERIMENT), timed, n_slots)
            run = {
                "rep": rep,
                **summary,
                **overhead_numbers(summary, args.trials, args.reports, step_seconds, n_slots),
            }
            result["runs"].append(run)
            write_json(result, args.out)  # a long run that fails later keeps what it measured
            print(
                f"[rep {rep + 1}/{args.reps}] sweep {run['sweep_wall_s']:.2f} s "
                f"(minimum {run['minimum_s']:.2f} s), end-to-end {run['end_to_end_s']:.2f} s, "
                f"{run['reports']} reports",
                file=sys.stderr,
                flush=True,
            )
        result["medians"] = {key: median(r.get(key) for r in result["runs"]) for key in MEDIAN_KEYS}
        ok = True
    finally:
        if ok and not args.keep and args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"run folders kept in {base}", file=sys.stderr)
    return result


def format_table(result: dict[str, Any]) -> str:
    s = result["settings"]
    m = result["medians"]
    return "\n".join(
        [
            f"overhead benchmark: {s['trials']} no-op trials x {s['reports']} reports, "
            f"{s['step_ms']:g} ms steps ({s['step_kind']}), {s['slots']} slots; "
            f"medians of {s['reps']} repetition(s)",
            f"  theoretical minimum   {m['minimum_s']:.2f} s",
            f"  sweep wall time       {m['sweep_wall_s']:.2f} s  "
            f"({m['over_minimum']:.2f}x minimum)",
            f"  end-to-end            {m['end_to_end_s']:.2f} s  (before first trial "
            f"{m['before_first_trial_s']:.2f} s, after last {m['after_last_trial_s']:.2f} s)",
            f"  overhead per report   {m['overhead_per_report_ms']:.2f} ms of slot time",
            f"  reports per second    {m['reports_per_s']:.1f}",
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead_bench",
        description="No-op trials through caviar: orchestration overhead vs the minimum.",
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--reports", type=int, default=30, help="steps (reports) per trial")
    parser.add_argument("--step-ms", type=float, default=10.0, help="time of one step")
    parser.add_argument("--step-kind", choices=("spin", "sleep"), default="spin")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "overhead_bench.json")
    parser.add_argument("--workdir", type=Path, default=None, help="keep run folders here")
    parser.add_argument("--keep", action="store_true", help="keep the temp run folders")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--inner", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.reps, args.trials, args.reports) < 1:
        parser.error("--reps, --trials and --reports must be >= 1")
    if args.step_ms <= 0:
        parser.error("--step-ms must be > 0 (the minimum would be 0)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.inner is not None:
        return inner(args.inner)
    try:
        result = run_benchmark(args)
    except BenchError as error:
        print(f"overhead_bench: error: {error}", file=sys.stderr)
        return 1
    write_json(result, args.out)
    print(format_table(result))
    print(f"\nraw numbers: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
