"""The service benchmark: ``caviar run`` with ``caviar up`` running, against Optuna and a cold run.

One invocation starts a service in a state folder of its own (``caviar up``, timed), then runs,
interleaved for ``--reps`` repetitions, the systems of ``bench/sweep_bench.py`` on the same
spec (bench/specs/digits64.yaml) plus ``caviar_service``: ``caviar run spec.yaml`` from a fresh
folder with the service up (the spec without ``tracking.uri``, so the sweep runs on the
service and logs to its MLflow server; each repetition its own experiment). At the end it
stops the service (``caviar down``, timed) and checks that no process it started is left.

    .venv/bin/python -m bench.service_bench --reps 3
    .venv/bin/python -m bench.service_bench --reps 1 --trials 4 --max-epochs 3   # smoke size

docs/performance.md ("caviar up") has the numbers and the command that produced them; the
service's end-to-end time includes the client's start, and its first trial is timed from the
command's start, both as a user waits for them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: find `bench`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    RESULTS_DIR,
    SPECS_DIR,
    BenchError,
    Timed,
    caviar_command,
    clean_env,
    effective_spec,
    fresh_workdir,
    load_yaml,
    machine_info,
    median,
    ratio,
    run_timed,
    slots,
    write_json,
    write_yaml,
)
from bench.readers import SweepRead, read_caviar, summarize
from bench.sweep_bench import SPEC_FILE, Context, run_caviar, run_optuna

DEFAULT_SYSTEMS = ("caviar_service", "optuna", "caviar")
KEYS = ("end_to_end_s", "before_first_trial_s", "sweep_wall_s", "after_last_trial_s", "trials")


def run_caviar_service(
    ctx: Context, workdir: Path, home: Path, rep: int
) -> tuple[Timed, SweepRead]:
    experiment = f"{ctx.spec['name']}-service-{rep}"
    spec = {k: v for k, v in ctx.spec.items() if k != "tracking"}
    spec["tracking"] = {"experiment": experiment}  # no uri: the service's MLflow
    write_yaml(spec, workdir / SPEC_FILE)
    timed = run_timed(
        [*caviar_command(), "run", SPEC_FILE],
        cwd=workdir,
        env=clean_env(CAVIAR_HOME=str(home)),
        log_name="caviar_service.log",
        timeout_s=ctx.timeout_s,
    )
    if "running on the service" not in (workdir / "caviar_service.log").read_text():
        raise BenchError(f"caviar run did not use the service; see {workdir}")
    return timed, read_caviar(home / "mlflow" / "mlflow.db", experiment)


def _caviar(home: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [*caviar_command(), *args],
        env=clean_env(CAVIAR_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(
            f"caviar {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return time.perf_counter() - started, done.stdout


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    spec = effective_spec(load_yaml(args.spec), trials=args.trials, max_epochs=args.max_epochs)
    ctx = Context(spec=spec, slots=slots(), timeout_s=args.timeout)
    base = fresh_workdir(args.workdir, "caviar-service-bench-")
    home = base / "home"
    result: dict[str, Any] = {
        "benchmark": "service",
        "machine": machine_info(),
        "settings": {"spec": str(args.spec), "reps": args.reps, "systems": systems},
        "runs": [],
    }
    up_s, up_out = _caviar(home, "up")
    result["up_s"] = up_s
    _progress(f"caviar up: {up_s:.1f} s\n{up_out}")
    ok = False
    try:
        for rep in range(args.reps):
            for system in systems:
                workdir = base / f"rep{rep}-{system}"
                workdir.mkdir()
                write_yaml(spec, workdir / SPEC_FILE)
                if system == "caviar_service":
                    timed, read = run_caviar_service(ctx, workdir, home, rep)
                elif system == "caviar":  # the spec names its own store: no service
                    timed, read = run_caviar(ctx, workdir, CAVIAR_HOME=str(home))
                else:
                    timed, read = run_optuna(ctx, workdir)
                run = {"system": system, "rep": rep, **summarize(read, timed, ctx.slots)}
                result["runs"].append(run)
                _progress(
                    f"[rep {rep + 1}/{args.reps}] {system}: end to end "
                    f"{run['end_to_end_s']:.2f} s, "
                    f"first trial {run['before_first_trial_s']:.2f} s, sweep "
                    f"{run['sweep_wall_s']:.2f} s, after {run['after_last_trial_s']:.2f} s"
                )
            write_json(result, args.out)
        ok = True
    finally:
        down_s, down_out = _caviar(home, "down")
        result["down_s"] = down_s
        _progress(f"caviar down: {down_s:.1f} s: {down_out.strip()}")
        if ok and not args.keep and args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    medians = {
        s: {k: median(r[k] for r in result["runs"] if r["system"] == s) for k in KEYS}
        for s in systems
    }
    result["medians"] = medians
    if "optuna" in medians:
        result["ratios"] = {
            f"{s}/optuna end to end": ratio(
                medians[s]["end_to_end_s"], medians["optuna"]["end_to_end_s"]
            )
            for s in systems
            if s != "optuna"
        }
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"caviar up {result['up_s']:.1f} s, caviar down {result['down_s']:.1f} s; medians of "
        f"{result['settings']['reps']}",
        f"{'system':<16}{'end to end':>12}{'first trial':>13}{'sweep wall':>12}{'after last':>12}",
    ]
    for system, m in result["medians"].items():
        lines.append(
            f"{system:<16}{m['end_to_end_s']:>10.1f} s{m['before_first_trial_s']:>11.1f} s"
            f"{m['sweep_wall_s']:>10.1f} s{m['after_last_trial_s']:>10.1f} s"
        )
    for name, value in result.get("ratios", {}).items():
        lines.append(f"{name}: {value:.3f}")
    return "\n".join(lines)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.service_bench")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--spec", type=Path, default=SPECS_DIR / "digits64.yaml")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "service_bench.json")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    try:
        result = run_benchmark(args)
    except BenchError as error:
        print(f"service_bench: error: {error}", file=sys.stderr)
        return 1
    write_json(result, args.out)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
