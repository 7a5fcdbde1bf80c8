"""The sweep benchmark: caviar against the Ray Tune docs' pattern and Optuna, and the floor.

One invocation runs every system on the same spec (bench/specs/digits64.yaml: 64 trials, ASHA
to 30 epochs, grace 2, reduction factor 3, seed 0), interleaved (A B C A B C ...) so that a
drift in the machine's speed hits every system alike, then times the compute floor of what
each run trained, and reports medians over the repetitions. Each system runs as a subprocess
in a fresh temp folder, so its end-to-end time is what a user waits for and its store is new.

    .venv/bin/python -m bench.sweep_bench                    # 3 repetitions, full size
    .venv/bin/python -m bench.sweep_bench --reps 1 --trials 4 --max-epochs 3   # smoke size

docs/performance.md defines every number; the raw numbers go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python bench/sweep_bench.py): find `bench`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BENCH_DIR,
    REPO_ROOT,
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
    max_epochs_of,
    median,
    ratio,
    ray_token_env,
    run_timed,
    slots,
    write_json,
    write_yaml,
)
from bench.readers import (
    SweepRead,
    TrialRow,
    read_caviar,
    read_caviar_journal,
    read_optuna,
    read_ray_tune,
    summarize,
    sweep_wall_s,
)

SPEC_FILE = "spec.yaml"
RAY_EXPERIMENT = "ray-tune-docs"
OPTUNA_STUDY = "digits-optuna-sh"
DEFAULT_SYSTEMS = ("caviar", "ray_tune_docs", "optuna")
REFERENCE = "caviar"
MEDIAN_KEYS = (
    "sweep_wall_s",
    "progress_clock_s",
    "end_to_end_s",
    "before_first_trial_s",
    "after_last_trial_s",
    "trials",
    "trials_per_min",
    "epochs_trained",
    "best_val_accuracy",
    "training_s",
    "training_fraction",
    "floor_s",
    "sweep_over_floor",
)


@dataclass(frozen=True)
class Context:
    """What every system's run needs: the spec (as data and as the file in its folder)."""

    spec: dict[str, Any]
    slots: int
    timeout_s: float
    baseline_tree: Path | None = None  # caviar_baseline's checkout (--baseline-tree)

    @property
    def max_epochs(self) -> int:
        return max_epochs_of(self.spec)


Runner = Callable[[Context, Path], tuple[Timed, SweepRead]]


def run_caviar(ctx: Context, workdir: Path, **env: str) -> tuple[Timed, SweepRead]:
    """A: ``caviar run spec.yaml``, exactly as a user runs it."""
    timed = run_timed(
        [*caviar_command(), "run", SPEC_FILE],
        cwd=workdir,
        env=clean_env(**env),
        log_name="caviar.log",
        timeout_s=ctx.timeout_s,
    )
    read = read_caviar(workdir / "mlflow.db", str(ctx.spec["name"]))
    # The same span from the journal, to compare with caviar_untracked (which has no runs).
    journal = read_caviar_journal(workdir / "caviar_runs")
    read.extra["sweep_wall_journal_s"] = sweep_wall_s(journal.trials)
    read.extra.update({k: v for k, v in journal.extra.items() if k == "worker_processes"})
    read.extra["progress_clock_s"] = progress_clock_s(workdir / "caviar.log")
    return timed, read


def progress_clock_s(log: Path) -> float | None:
    """The time on ``caviar run``'s last progress line: the sweep's wall as a user sees it
    (issue 27's measure), from the sweep's start (before its workers and data) to its end."""
    times = re.findall(r"^\[\s*([0-9.]+)s\] running ", log.read_text(errors="replace"), re.M)
    return float(times[-1]) if times else None


def run_caviar_unpacked(ctx: Context, workdir: Path) -> tuple[Timed, SweepRead]:
    """A2: caviar with ``resources.pack_size: 1``: one trial per worker, no fused packs (the
    spec's default, ``auto``, packs small networks: see docs/performance.md)."""
    spec = dict(ctx.spec)
    spec["resources"] = {**(spec.get("resources") or {}), "pack_size": 1}
    write_yaml(spec, workdir / SPEC_FILE)
    return run_caviar(ctx, workdir)


def run_caviar_cold_cache(ctx: Context, workdir: Path) -> tuple[Timed, SweepRead]:
    """A1: caviar with an empty cache folder, as on a machine's first sweep: MLflow migrates a
    new SQLite store itself (and caviar keeps it as the template), to price the template."""
    return run_caviar(ctx, workdir, CAVIAR_CACHE_DIR=str(workdir / "empty-cache"))


def run_caviar_baseline(ctx: Context, workdir: Path) -> tuple[Timed, SweepRead]:
    """A': ``caviar run spec.yaml`` with another checkout's code first on the path (driver and
    workers), interleaved with this one's: a change measured against the code before it under
    the same load (``--baseline-tree``)."""
    if ctx.baseline_tree is None:
        raise BenchError("caviar_baseline needs --baseline-tree (a checkout of the older code)")
    return run_caviar(ctx, workdir, PYTHONPATH=str(ctx.baseline_tree.resolve()))


def run_caviar_untracked(ctx: Context, workdir: Path) -> tuple[Timed, SweepRead]:
    """A0: caviar with its trials' MLflow writes dropped (bench/untracked.py), to price them."""
    timed = run_timed(
        [sys.executable, "-m", "bench.untracked", SPEC_FILE],
        cwd=workdir,
        env=clean_env(PYTHONPATH=str(REPO_ROOT)),
        log_name="caviar_untracked.log",
        timeout_s=ctx.timeout_s,
    )
    return timed, read_caviar_journal(workdir / "caviar_runs")


def _run_ray_tune(ctx: Context, workdir: Path, reuse_actors: bool) -> tuple[Timed, SweepRead]:
    command = [
        sys.executable,
        str(BENCH_DIR / "baselines" / "ray_tune_docs.py"),
        "--spec",
        SPEC_FILE,
        "--experiment",
        RAY_EXPERIMENT,
        "--tracking-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--storage",
        "ray_results",
    ]
    if reuse_actors:
        command.append("--reuse-actors")
    timed = run_timed(
        command,
        cwd=workdir,
        env=clean_env(**ray_token_env()),
        log_name="ray_tune.log",
        timeout_s=ctx.timeout_s,
    )
    return timed, read_ray_tune(workdir / "mlflow.db", RAY_EXPERIMENT, ctx.max_epochs)


def run_ray_tune_docs(ctx: Context, workdir: Path) -> tuple[Timed, SweepRead]:
    """B: the Ray Tune docs' pattern, a fresh worker per trial (Tune's default)."""
    return _run_ray_tune(ctx, workdir, reuse_actors=False)


def run_ray_tune_reuse(ctx: Context, workdir: Path) -> tuple[Timed, SweepRead]:
    """B2: the same with ``reuse_actors=True`` (opt-in: ``--systems ...,ray_tune_reuse``)."""
    return _run_ray_tune(ctx, workdir, reuse_actors=True)


def run_optuna(ctx: Context, workdir: Path) -> tuple[Timed, SweepRead]:
    """C: Optuna, one worker process per slot on a SQLite storage, successive halving."""
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    timed = run_timed(
        [
            sys.executable,
            str(BENCH_DIR / "baselines" / "optuna_sh.py"),
            "run",
            "--spec",
            SPEC_FILE,
            "--storage",
            storage,
            "--study",
            OPTUNA_STUDY,
            "--workers",
            str(ctx.slots),
            "--out-dir",
            ".",
        ],
        cwd=workdir,
        env=clean_env(),
        log_name="optuna.log",
        timeout_s=ctx.timeout_s,
    )
    fixed = dict(ctx.spec.get("fixed") or {})
    return timed, read_optuna(storage, OPTUNA_STUDY, workdir, ctx.max_epochs, fixed)


SYSTEMS: dict[str, Runner] = {
    "caviar": run_caviar,
    "caviar_unpacked": run_caviar_unpacked,
    "caviar_untracked": run_caviar_untracked,
    "caviar_cold_cache": run_caviar_cold_cache,
    "caviar_baseline": run_caviar_baseline,
    "ray_tune_docs": run_ray_tune_docs,
    "ray_tune_reuse": run_ray_tune_reuse,
    "optuna": run_optuna,
}


def measure_floor(
    ctx: Context, workdir: Path, trained: dict[str, list[TrialRow]], timed_epochs: int
) -> dict[str, Any]:
    """Time every trained configuration in isolation (bench/floor.py) in a subprocess."""
    jobs = {
        "slots": ctx.slots,
        "systems": {
            system: [{"config": t.config, "epochs": t.epochs} for t in trials]
            for system, trials in trained.items()
        },
    }
    (workdir / "floor_jobs.json").write_text(json.dumps(jobs, default=str), encoding="utf-8")
    run_timed(
        [
            sys.executable,
            str(BENCH_DIR / "floor.py"),
            "--spec",
            SPEC_FILE,
            "--jobs",
            "floor_jobs.json",
            "--out",
            "floor.json",
            "--timed-epochs",
            str(timed_epochs),
        ],
        cwd=workdir,
        env=clean_env(),
        log_name="floor.log",
        timeout_s=ctx.timeout_s,
    )
    return json.loads((workdir / "floor.json").read_text(encoding="utf-8"))


def aggregate(runs: Sequence[dict[str, Any]], systems: Sequence[str]) -> dict[str, Any]:
    """Medians per system over the repetitions, and caviar's ratios to the others.

    A ratio is of medians (median caviar / median other), below 1 when caviar is faster.
    """
    medians: dict[str, dict[str, float | None]] = {}
    for system in systems:
        mine = [r for r in runs if r["system"] == system]
        medians[system] = {key: median(r.get(key) for r in mine) for key in MEDIAN_KEYS}
    ratios: dict[str, dict[str, float | None]] = {}
    ref = medians.get(REFERENCE)
    if ref is not None:
        for system in systems:
            if system == REFERENCE:
                continue
            other = medians[system]
            ratios[f"{REFERENCE}/{system}"] = {
                "sweep_wall": ratio(ref["sweep_wall_s"], other["sweep_wall_s"]),
                "end_to_end": ratio(ref["end_to_end_s"], other["end_to_end_s"]),
            }
            if other.get("progress_clock_s") is not None:  # caviar against caviar
                ratios[f"{REFERENCE}/{system}"]["progress_clock"] = ratio(
                    ref["progress_clock_s"], other["progress_clock_s"]
                )
        ratios[f"{REFERENCE}/floor"] = {"sweep_wall": ratio(ref["sweep_wall_s"], ref["floor_s"])}
    baseline = medians.get("caviar_baseline")
    if baseline is not None:  # the older code against the same peers, in the same runs
        for system in systems:
            if system in (REFERENCE, "caviar_baseline"):
                continue
            ratios[f"caviar_baseline/{system}"] = {
                "sweep_wall": ratio(baseline["sweep_wall_s"], medians[system]["sweep_wall_s"]),
                "end_to_end": ratio(baseline["end_to_end_s"], medians[system]["end_to_end_s"]),
            }
        if "caviar_untracked" in medians:  # both spans from the journal: like for like
            mine = [r for r in runs if r["system"] == REFERENCE]
            tracked = median(r.get("sweep_wall_journal_s") for r in mine)
            ratios["logging (caviar/caviar_untracked)"] = {
                "sweep_wall": ratio(tracked, medians["caviar_untracked"]["sweep_wall_s"])
            }
    return {"medians": medians, "ratios": ratios}


def format_table(result: dict[str, Any]) -> str:
    """The printed summary: one row per system, the floor, then caviar's ratios."""
    settings = result["settings"]
    medians = result["medians"]
    lines = [
        f"sweep benchmark: {settings['trials']} trials, ASHA to {settings['max_epochs']} epochs "
        f"(grace {settings['grace_period']}, reduction {settings['reduction_factor']}), "
        f"{settings['slots']} slots; medians of {settings['reps']} repetition(s)",
        f"{'system':<16}{'sweep wall':>12}{'end-to-end':>12}{'trials/min':>12}{'epochs':>8}"
        f"{'best val acc':>14}{'in training':>13}{'x own floor':>13}",
    ]
    for system, m in medians.items():
        lines.append(
            f"{system:<16}{_num(m['sweep_wall_s'], ' s'):>12}{_num(m['end_to_end_s'], ' s'):>12}"
            f"{_num(m['trials_per_min'], '', 1):>12}{_num(m['epochs_trained'], '', 0):>8}"
            f"{_num(m['best_val_accuracy'], '', 4):>14}"
            f"{_pct(m['training_fraction']):>13}{_num(m['sweep_over_floor'], 'x', 2):>13}"
        )
    if REFERENCE in medians:
        floor = medians[REFERENCE]["floor_s"]
        lines.append(
            f"{'compute floor':<16}{_num(floor, ' s'):>12}   (the epochs {REFERENCE} trained x "
            f"each config's isolated epoch time / {settings['slots']} slots)"
        )
    lines.append("")
    for name, values in result["ratios"].items():
        line = f"{name:<24} sweep wall {_num(values['sweep_wall'], '', 3):>7}"
        if "end_to_end" in values:
            line += f"   end-to-end {_num(values['end_to_end'], '', 3):>7}"
        if values.get("progress_clock") is not None:
            line += f"   progress clock {_num(values['progress_clock'], '', 3):>7}"
        lines.append(line)
    return "\n".join(lines)


def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise BenchError(f"unknown systems {unknown}; valid: {', '.join(SYSTEMS)}")
    spec = effective_spec(load_yaml(args.spec), trials=args.trials, max_epochs=args.max_epochs)
    ctx = Context(
        spec=spec, slots=slots(), timeout_s=args.timeout, baseline_tree=args.baseline_tree
    )
    base = fresh_workdir(args.workdir, "caviar-sweep-bench-")
    scheduler = spec.get("scheduler") or {}
    result: dict[str, Any] = {
        "benchmark": "sweep",
        "machine": machine_info(),
        "settings": {
            "spec": str(args.spec),
            "effective_spec": spec,
            "trials": int(spec["search"]["num_trials"]),
            "max_epochs": ctx.max_epochs,
            "grace_period": scheduler.get("grace_period"),
            "reduction_factor": scheduler.get("reduction_factor"),
            "seed": (spec.get("search") or {}).get("seed", 0),
            "reps": args.reps,
            "slots": ctx.slots,
            "systems": systems,
            "baseline_tree": str(args.baseline_tree) if args.baseline_tree else None,
            "floor_timed_epochs": args.timed_epochs,
            "workdir": str(base),
        },
        "runs": [],
        "floors": [],
    }
    ok = False
    try:
        for rep in range(args.reps):
            trained: dict[str, list[TrialRow]] = {}
            rep_runs: list[dict[str, Any]] = []
            for system in systems:
                workdir = base / f"rep{rep}-{system}"
                workdir.mkdir()
                write_yaml(spec, workdir / SPEC_FILE)
                timed, read = SYSTEMS[system](ctx, workdir)
                run = {"system": system, "rep": rep, **summarize(read, timed, ctx.slots)}
                trained[system] = read.trials
                rep_runs.append(run)
                _progress(f"[rep {rep + 1}/{args.reps}] {_describe(run)}")
            floor_dir = base / f"rep{rep}-floor"
            floor_dir.mkdir()
            write_yaml(spec, floor_dir / SPEC_FILE)
            floors = measure_floor(ctx, floor_dir, trained, args.timed_epochs)
            result["floors"].append({"rep": rep, **floors})
            for run in rep_runs:
                floor = floors.get(run["system"], {}).get("floor_s")
                run["floor_s"] = floor
                run["sweep_over_floor"] = ratio(run["sweep_wall_s"], floor)
            _progress(
                f"[rep {rep + 1}/{args.reps}] compute floor of each system's epochs: "
                + ", ".join(f"{s} {_num(floors[s]['floor_s'], ' s', 2)}" for s in systems)
            )
            result["runs"].extend(rep_runs)
            write_json(result, args.out)  # a long run that fails later keeps what it measured
        result.update(aggregate(result["runs"], systems))
        ok = True
    finally:
        if ok and not args.keep and args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
        else:
            _progress(f"run folders kept in {base}")
    return result


def _describe(run: dict[str, Any]) -> str:
    return (
        f"{run['system']}: sweep {run['sweep_wall_s']:.2f} s, end-to-end "
        f"{run['end_to_end_s']:.2f} s, {run['trials']} trials, {run['epochs_trained']} epochs, "
        f"best {_num(run['best_val_accuracy'], '', 4)}"
        + (f", progress clock {clock:.1f} s" if (clock := run.get("progress_clock_s")) else "")
    )


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sweep_bench",
        description="caviar vs the Ray Tune docs' pattern vs Optuna on one sweep, interleaved.",
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--trials", type=int, default=None, help="override the spec's 64")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the spec's 30")
    parser.add_argument("--spec", type=Path, default=SPECS_DIR / "digits64.yaml")
    parser.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated, in run order (default {','.join(DEFAULT_SYSTEMS)}; "
        f"also: ray_tune_reuse, caviar_untracked, caviar_cold_cache, caviar_baseline)",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help="caviar_baseline's checkout: the code a change is measured against",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR / "sweep_bench.json", help="the JSON results"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep run folders here")
    parser.add_argument("--keep", action="store_true", help="keep the temp run folders")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per command")
    parser.add_argument(
        "--timed-epochs", type=int, default=2, help="epochs timed per config for the floor"
    )
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run_benchmark(args)
    except BenchError as error:
        print(f"sweep_bench: error: {error}", file=sys.stderr)
        return 1
    write_json(result, args.out)
    print(format_table(result))
    print(f"\nraw numbers: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
