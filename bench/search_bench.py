"""The search benchmark: how good a model each search finds, for the same epochs spent.

The sweep benchmark (bench/sweep_bench.py) times orchestration on one fixed random search. This
one measures the search itself: on problems where the best model found varies from seed to seed
(bench/specs/search/*.yaml: a wide space over digits, a hard generated 10-class problem, breast
cancer by validation loss; opt-in with ``--problems``, the optimizer's values for one network,
``synthetic_optimizer``), each arm runs the same spec (trials, ASHA rungs, epoch budget) once
per seed:

- ``random``, ``zoom``, ``tpe``: ``caviar run`` with that ``search.strategy`` (zoom as 4 rounds
  of a quarter of the trials), packs as caviar chooses them;
- ``optuna_tpe``, ``optuna_random``: Optuna's ``TPESampler`` / ``RandomSampler`` with its
  ``SuccessiveHalvingPruner`` on the same rungs, driving caviar's own training step on caviar's
  splits (bench/baselines/optuna_sh.py), one worker per core, so only the search differs;
- ``ray_optuna``: Ray Tune's ``OptunaSearch`` under ``ASHAScheduler``, the Ray docs' way to TPE,
  with the same training step and splits (bench/baselines/ray_optuna.py), one trial per core.

Every trial is read back with when it ended, how many epochs it trained and its objective at
its last epoch. A run's *best so far* after some epochs is the best objective among the trials
that trained the full budget and had ended by the time that many epochs were spent (a trial's
epochs count when it ends): early-stopped trials never count as best, as in caviar's ranking.
The comparison is at equal epochs spent: ``B``, 15 full trials' worth of epochs (405 for
27-epoch trials), the same for every arm and every run of a problem. Reported per problem and
arm: the median and range over seeds of the best at ``B``; the epochs (and seconds, from the
first trial's start) each run needed to reach the *target*, the median over seeds of random's
best at ``B``; and a PNG of the median best against epochs spent.

    .venv/bin/python -m bench.search_bench                # 3 problems x 6 arms x 5 seeds
    .venv/bin/python -m bench.search_bench --smoke        # one problem, 6 trials, ~1-2 min

docs/performance.md has the table and the command; the raw runs go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python bench/search_bench.py): find `bench`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BENCH_DIR,
    RESULTS_DIR,
    SPECS_DIR,
    BenchError,
    caviar_command,
    clean_env,
    effective_spec,
    fresh_workdir,
    load_yaml,
    machine_info,
    max_epochs_of,
    median,
    ray_token_env,
    run_timed,
    slots,
    write_json,
    write_yaml,
)

PROBLEMS = ("digits_wide", "synthetic_hard", "cancer_loss")
ARMS = ("random", "zoom", "tpe", "optuna_tpe", "optuna_random", "ray_optuna")
# Opt-in ablations (--arms ...,tpe_bohb): a caviar arm with one setting changed, as
# (strategy, search settings, spec sections).
ABLATIONS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "tpe_bohb": ("tpe", {"tpe": {"ranking": "bohb"}}, {}),  # the default since 2026-12-07
    "tpe_asha": ("tpe", {"tpe": {"ranking": "asha"}}, {}),
    "tpe_unpacked": ("tpe", {}, {"resources": {"pack_size": 1}}),
    "random_unpacked": ("random", {}, {"resources": {"pack_size": 1}}),
    "tpe_univariate": ("tpe", {"tpe": {"multivariate": False}}, {}),
    "tpe_pack4": ("tpe", {}, {"resources": {"pack_size": 4}}),
    "tpe_lookahead2": ("tpe", {"max_concurrent": 2}, {}),
    "tpe_lookahead2_pack4": ("tpe", {"max_concurrent": 2}, {"resources": {"pack_size": 4}}),
    # tpe as it was before 2026-12-08: proposes whenever Tune asks, ahead of the results
    "tpe_nowait": ("tpe", {"tpe": {"wait_for_results": False}}, {}),
    # zoom as it was before 2026-12-07: the last round's best, no exploration share
    "zoom_round": ("zoom", {"keep_from": "round", "explore": 0.0}, {}),
    "zoom_noexplore": ("zoom", {"explore": 0.0}, {}),  # kept from the sweep, no exploration
    "zoom_roundexplore": ("zoom", {"keep_from": "round"}, {}),  # exploration, the round's best
    "zoom_tpe": ("zoom", {"sampler": "tpe"}, {}),  # TPE draws each later round's box share
    # a share of the packs' shapes drawn at random (TPE's model of shapes has few points)
    "tpe_shape25": ("tpe", {"tpe": {"shape_explore": 0.25}}, {}),
    "tpe_shape50": ("tpe", {"tpe": {"shape_explore": 0.5}}, {}),
    # the random start alone, a shape each: tpe as it was before 2026-12-08 (run 11)
    "tpe_lonestart": ("tpe", {"tpe": {"pack_random_start": False}}, {}),
    # as Optuna's own TPE arm searches: each parameter on its own, no packs
    "tpe_optuna_like": ("tpe", {"tpe": {"multivariate": False}}, {"resources": {"pack_size": 1}}),
}
# Population-based training (opt-in, --arms ...,pbt): a population of BUDGET_FULL_TRIALS
# trials, each trained to the budget, spends exactly B; every PBT_GENERATIONS-th of the
# budget the bottom quarter copies the top quarter (scheduler kind pbt). Its baseline of
# fixed configurations, random_fifo: as many random trials, each trained to the budget.
# `pbt` runs its trials unpacked (pack_size 1, as measured first); `pbt_packed` lets caviar
# pack them (pack_size auto: fused packs where the population has one shape).
PBT_ARMS = ("pbt", "pbt_packed")
FULL_BUDGET_ARMS = (*PBT_ARMS, "random_fifo")
PBT_GENERATIONS = 9
REFERENCE = "random"  # the target is the median of its best at the budget
# The epoch budget B every arm is compared at: this many full trials' worth of epochs. Fixed
# per problem (not the fewest any run spent), so runs of separate invocations compare alike
# (--include); every arm of the benchmark spends more than B on its 64 trials.
BUDGET_FULL_TRIALS = 15
SPEC_FILE = "spec.yaml"
ZOOM_ROUNDS = 4
SMOKE = {"problems": ("digits_wide",), "seeds": 1, "trials": 6, "max_epochs": 3}
RETRIES = 2  # a run killed by a signal from outside is run again, at most this often


@dataclass(frozen=True)
class TrialEnd:
    """One trial as the benchmark needs it: when it ended and what it reached."""

    start_s: float
    end_s: float
    epochs: int
    value: float | None  # the objective at its last epoch; None if diverged, failed or absent


@dataclass
class Run:
    problem: str
    arm: str
    seed: int
    command_s: float
    trials: list[TrialEnd]


# --- running the arms ----------------------------------------------------------------------


def run_arm(spec: dict[str, Any], arm: str, workdir: Path, timeout_s: float) -> Run:
    """One arm on one spec (its seed set) in a fresh folder; the trials read back."""
    workdir.mkdir(parents=True)
    spec = json.loads(json.dumps(spec))
    metric = spec["objective"]["metric"]
    if arm in FULL_BUDGET_ARMS:
        budget = max_epochs_of(spec)
        spec["scheduler"] = {"kind": "fifo", "max_epochs": budget}
        if arm in PBT_ARMS:
            spec["scheduler"] = {
                "kind": "pbt",
                "interval": max(1, budget // PBT_GENERATIONS),
                "quantile": 0.25,
                "max_epochs": budget,
            }
            pack_size = "auto" if arm == "pbt_packed" else 1
            spec["resources"] = {**(spec.get("resources") or {}), "pack_size": pack_size}
        spec["search"]["num_trials"] = BUDGET_FULL_TRIALS
    if arm in ("random", "zoom", "tpe", *ABLATIONS, *FULL_BUDGET_ARMS):
        trials = int(spec["search"]["num_trials"])
        strategy, settings, sections = ABLATIONS.get(arm, (arm, {}, {}))
        if arm in FULL_BUDGET_ARMS:
            strategy = "random"
        search: dict[str, Any] = {"strategy": strategy, "seed": spec["search"]["seed"]}
        search.update(settings)
        for section, values in sections.items():
            spec[section] = {**(spec.get(section) or {}), **values}
        if strategy == "zoom":  # 4 rounds of a quarter each (fewer, of 3 or more, when small)
            rounds = max(1, min(ZOOM_ROUNDS, trials // 3))
            search.update(rounds=rounds, trials_per_round=trials // rounds)
        else:
            search["num_trials"] = trials
        spec["search"] = search
        write_yaml(spec, workdir / SPEC_FILE)
        timed = run_timed(
            [*caviar_command(), "run", SPEC_FILE, "--no-service"],
            cwd=workdir,
            env=clean_env(),
            log_name="caviar.log",
            timeout_s=timeout_s,
        )
        found = read_caviar_trials(workdir / "caviar_runs", metric)
    elif arm == "ray_optuna":
        write_yaml(spec, workdir / SPEC_FILE)
        timed = run_timed(
            [
                sys.executable,
                str(BENCH_DIR / "baselines" / "ray_optuna.py"),
                "--spec",
                SPEC_FILE,
                "--workers",
                str(slots()),
                "--out",
                "trials.json",
            ],
            cwd=workdir,
            env=clean_env(**ray_token_env()),
            log_name="ray_optuna.log",
            timeout_s=timeout_s,
        )
        found = read_ray_optuna_trials(workdir / "trials.json")
    else:
        write_yaml(spec, workdir / SPEC_FILE)
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
                "search",
                "--sampler",
                arm.removeprefix("optuna_"),
                "--workers",
                str(slots()),
                "--out-dir",
                ".",
            ],
            cwd=workdir,
            env=clean_env(),
            log_name="optuna.log",
            timeout_s=timeout_s,
        )
        found = read_optuna_trials(storage, "search")
    return Run("", arm, int(spec["search"]["seed"]), timed.seconds, found)


def read_caviar_trials(storage_dir: Path, metric: str) -> list[TrialEnd]:
    """A caviar sweep's trials from its journal (every epoch, and when each trial ended)."""
    from orchestrator.store.journal import read_journal

    journals = sorted(storage_dir.glob("*/*/journal.jsonl"))
    if len(journals) != 1:
        raise BenchError(f"expected one caviar journal under {storage_dir}, found {len(journals)}")
    found = []
    for trial in read_journal(journals[0]).trials.values():
        if trial.ended_at is None:
            raise BenchError(f"journal trial {trial.index} never ended")
        last = trial.history[-1] if trial.history else {}
        value = None if last.get("diverged") else _finite(last.get(metric))
        start = trial.started_at if trial.started_at is not None else trial.ended_at
        found.append(TrialEnd(start, trial.ended_at, int(last.get("epoch", 0)), value))
    return found


def read_optuna_trials(storage: str, study_name: str) -> list[TrialEnd]:
    """The Optuna baseline's trials from its storage (a value per epoch: its intermediates)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage)
    found = []
    for trial in study.get_trials(deepcopy=False):
        if trial.datetime_start is None or trial.datetime_complete is None:
            raise BenchError(f"Optuna trial {trial.number} never finished ({trial.state.name})")
        steps = trial.intermediate_values
        value = _finite(steps[max(steps)]) if steps else None
        if trial.state.name == "FAIL":
            value = None
        found.append(
            TrialEnd(
                trial.datetime_start.timestamp(),
                trial.datetime_complete.timestamp(),
                max(steps) if steps else 0,
                value,
            )
        )
    return found


def read_ray_optuna_trials(path: Path) -> list[TrialEnd]:
    """The Ray Tune + OptunaSearch baseline's trials, as it wrote them (``ray_optuna.py``)."""
    if not path.exists():
        raise BenchError(f"the Ray Tune OptunaSearch baseline wrote no {path.name}")
    trials = json.loads(path.read_text(encoding="utf-8"))["trials"]
    return [
        TrialEnd(t["start_s"], t["end_s"], int(t["epochs"]), _finite(t["value"])) for t in trials
    ]


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


# --- what a run reached ----------------------------------------------------------------------


def curve(run: Run, budget_epochs: int, mode: str) -> list[tuple[int, float, float | None]]:
    """(epochs spent, seconds since the first start, best so far) at each trial's end, in the
    order trials ended; the best counts only trials that trained ``budget_epochs``.

    A trial's epochs count as spent when it ends; a PBT population trains side by side and
    ends together, so there every trial's epochs count as spent in proportion to its time
    trained by then (at the last end, all of them)."""
    if not run.trials:
        return []
    first = min(t.start_s for t in run.trials)
    spent, best = 0, None
    points = []
    for trial in sorted(run.trials, key=lambda t: t.end_s):
        spent += trial.epochs
        if run.arm in PBT_ARMS:
            spent = round(sum(t.epochs * _share(t, trial.end_s) for t in run.trials))
        if trial.epochs >= budget_epochs and trial.value is not None:
            if best is None or (trial.value > best if mode == "max" else trial.value < best):
                best = trial.value
        points.append((spent, trial.end_s - first, best))
    return points


def _share(trial: TrialEnd, at_s: float) -> float:
    """The share of ``trial``'s training done by ``at_s``."""
    if at_s >= trial.end_s:
        return 1.0
    length = trial.end_s - trial.start_s
    return max(0.0, (at_s - trial.start_s) / length) if length > 0 else 0.0


def best_at(
    points: Sequence[tuple[int, float, float | None]], epochs: float, axis: int = 0
) -> float | None:
    """The best so far once ``epochs`` had been spent (the last point at or under it); with
    ``axis=1``, once that many seconds had passed."""
    best = None
    for point in points:
        if point[axis] > epochs:
            break
        best = point[2]
    return best


def reached(
    points: Sequence[tuple[int, float, float | None]], target: float, mode: str, epochs: float
) -> tuple[int, float] | None:
    """(epochs, seconds) when the best so far first reached ``target`` within ``epochs``."""
    for spent, seconds, value in points:
        if spent > epochs:
            return None
        if value is not None and (value >= target if mode == "max" else value <= target):
            return spent, seconds
    return None


def budget_epochs(spec: dict[str, Any]) -> int:
    """B: the epochs every arm of a problem is compared at (``BUDGET_FULL_TRIALS``)."""
    return BUDGET_FULL_TRIALS * max_epochs_of(spec)


def summarize(runs: list[Run], spec: dict[str, Any], arms: Sequence[str]) -> dict[str, Any]:
    """One problem's table: the budget B, the target, and per arm the medians over seeds."""
    mode = spec["objective"].get("mode", "max")
    full = max_epochs_of(spec)
    curves = {id(r): curve(r, full, mode) for r in runs}
    budget = budget_epochs(spec)
    finals = {id(r): best_at(curves[id(r)], budget) for r in runs}
    reference = [finals[id(r)] for r in runs if r.arm == REFERENCE and finals[id(r)] is not None]
    target = statistics.median(reference) if reference else None
    table: dict[str, Any] = {}
    for arm in arms:
        mine = [r for r in runs if r.arm == arm]
        values = [finals[id(r)] for r in mine if finals[id(r)] is not None]
        hits = [
            reached(curves[id(r)], target, mode, budget) if target is not None else None
            for r in mine
        ]
        epochs_to = [h[0] if h else math.inf for h in hits]
        seconds_to = [h[1] if h else math.inf for h in hits]
        table[arm] = {
            "seeds": len(mine),
            "final_median": statistics.median(values) if values else None,
            "final_min": min(values) if values else None,
            "final_max": max(values) if values else None,
            "final_range": (max(values) - min(values)) if values else None,
            "no_full_trial_by_budget": len(mine) - len(values),
            "epochs_to_target_median": statistics.median(epochs_to) if mine else None,
            "seconds_to_target_median": statistics.median(seconds_to) if mine else None,
            "reached_target": sum(1 for h in hits if h),
            "epochs_spent_median": statistics.median(curves[id(r)][-1][0] for r in mine)
            if mine
            else None,
            # first trial's start to the last trial's end: the sweep wall a user waits for
            "wall_s_median": median(
                max(t.end_s for t in r.trials) - min(t.start_s for t in r.trials)
                for r in mine
                if r.trials
            ),
            # the best at the run's end, whatever it spent (context for the best at B)
            "end_median": median(curves[id(r)][-1][2] for r in mine if curves[id(r)]),
            "command_s_median": statistics.median(r.command_s for r in mine) if mine else None,
        }
    return {"mode": mode, "budget_epochs": budget, "target": target, "arms": table}


# --- output -----------------------------------------------------------------------------------


def markdown(summary: dict[str, Any], arms: Sequence[str]) -> str:
    lines = []
    for problem, result in summary.items():
        budget, target = result["budget_epochs"], result["target"]
        lines.append(
            f"**{problem}** ({result['mode']} {result['metric']}; compared at B = {budget} "
            f"epochs; target = random's median = {_fmt(target)})"
        )
        lines.append("")
        lines.append(
            "| arm | median best at B | min - max (range) | epochs to target (reached) "
            "| seconds to target | epochs spent | best at the end | sweep wall (s) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for arm in arms:
            row = result["arms"][arm]
            lines.append(
                f"| {arm} | {_fmt(row['final_median'])} | {_fmt(row['final_min'])} - "
                f"{_fmt(row['final_max'])} ({_fmt(row['final_range'])}) | "
                f"{_count(row['epochs_to_target_median'])} ({row['reached_target']}/"
                f"{row['seeds']}) | {_count(row['seconds_to_target_median'], 1)} | "
                f"{_count(row['epochs_spent_median'])} | {_fmt(row.get('end_median'))} | "
                f"{_count(row.get('wall_s_median'), 1)} |"
            )
        lines.append("")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _count(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "not reached"
    return f"{value:.{digits}f}"


def plot(runs_by_problem: dict[str, list[Run]], specs: dict[str, dict[str, Any]], out: Path,
         arms: Sequence[str]) -> None:  # fmt: skip
    """Median best so far against epochs spent (top) and seconds since the first trial started
    (bottom), one column per problem, a band from the seeds' min to max, the target dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(runs_by_problem)
    figure, axes = plt.subplots(2, len(problems), figsize=(5.5 * len(problems), 8), squeeze=False)
    for column, problem in enumerate(problems):
        spec = specs[problem]
        mode = spec["objective"].get("mode", "max")
        full = max_epochs_of(spec)
        runs = runs_by_problem[problem]
        curves = [curve(r, full, mode) for r in runs]
        budget = budget_epochs(spec)
        seconds = max((c[-1][1] for c in curves if c), default=0.0)
        target = summarize(runs, spec, [a for a in arms if any(r.arm == a for r in runs)])
        for row, (limit, label) in enumerate(
            ((budget, "epochs spent"), (seconds, "seconds since the first trial started"))
        ):
            _panel(axes[row][column], runs, curves, arms, limit, row)
            axes[row][column].set_xlabel(label)
            axes[row][column].set_ylabel(f"best {spec['objective']['metric']} (full budget)")
            axes[row][column].set_title(problem)
            if target["target"] is not None:
                axes[row][column].axhline(target["target"], color="grey", linestyle="--", lw=0.8)
            if mode == "min":  # a loss: the first trials' losses dwarf the rest on a linear axis
                axes[row][column].set_yscale("log")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)


def _panel(
    axis: Any, runs: list[Run], curves: list[Any], arms: Sequence[str], limit: float, along: int
) -> None:
    """One arm's median best so far, with its seeds' range, up to ``limit`` on ``along``; the
    value axis spans the medians of the later two thirds (the first trials' values would
    flatten the differences that matter)."""
    grid = [limit * i / 100 for i in range(101)]
    later: list[float] = []
    for arm in arms:
        mine = [c for r, c in zip(runs, curves, strict=True) if r.arm == arm]
        xs, mid, low, high = [], [], [], []
        for x in grid:
            values = [best_at(c, x, along) for c in mine]
            present = [v for v in values if v is not None]
            if present and len(present) * 2 > len(values):  # most seeds have a full trial
                xs.append(x)
                mid.append(statistics.median(present))
                low.append(min(present))
                high.append(max(present))
        if xs:
            (line,) = axis.plot(xs, mid, label=arm)
            axis.fill_between(xs, low, high, alpha=0.12, color=line.get_color())
            later += [m for x, m in zip(xs, mid, strict=True) if x >= limit / 3]
    if later and max(later) > min(later):
        pad = 0.15 * (max(later) - min(later))
        axis.set_ylim(min(later) - pad, max(later) + pad)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


# --- the command ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one problem, 1 seed, tiny sizes")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seeds", type=int, default=5, help="seeds per arm (1, 2, ...)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="the first search seed (seeds count from it)"
    )
    parser.add_argument("--trials", type=int, help="override num_trials of every problem")
    parser.add_argument("--max-epochs", type=int, help="override the epoch budget")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--workdir", type=Path, help="an empty folder for the runs (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary run folders")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "search_bench.json")
    parser.add_argument("--png", type=Path, help="the curves (default: --out with .png)")
    parser.add_argument(
        "--include",
        type=Path,
        action="append",
        default=[],
        help="an earlier --out of the same problems and specs: its arms join the tables "
        "without running again (repeatable)",
    )
    args = parser.parse_args(argv)
    problems = [p for p in args.problems.split(",") if p]
    arms = [a for a in args.arms.split(",") if a]
    included = [json.loads(path.read_text(encoding="utf-8")) for path in args.include]
    earlier_arms = [a for doc in included for a in doc["settings"]["arms"] if a not in arms]
    seeds, trials, max_epochs = args.seeds, args.trials, args.max_epochs
    if args.smoke:
        problems = list(SMOKE["problems"])
        seeds, trials, max_epochs = SMOKE["seeds"], SMOKE["trials"], SMOKE["max_epochs"]
    unknown = set(arms) - set(ARMS) - set(ABLATIONS) - set(FULL_BUDGET_ARMS)
    if unknown:
        known = ", ".join((*ARMS, *ABLATIONS, *FULL_BUDGET_ARMS))
        raise SystemExit(f"unknown arms {sorted(unknown)}; choose from {known}")
    if REFERENCE not in arms + earlier_arms:
        print(f"no {REFERENCE!r} arm: the tables have no target (its median)", file=sys.stderr)
    specs = {}
    for problem in problems:
        path = SPECS_DIR / "search" / f"{problem}.yaml"
        if not path.exists():
            raise SystemExit(f"no problem {problem!r}: {path} does not exist")
        specs[problem] = effective_spec(load_yaml(path), trials=trials, max_epochs=max_epochs)
    workdir = fresh_workdir(args.workdir, "caviar-search-bench-")
    info = machine_info()
    started = time.perf_counter()
    runs: dict[str, list[Run]] = {p: [] for p in problems}
    for path, doc in zip(args.include, included, strict=True):
        for problem in problems:
            if problem not in doc["runs"]:
                raise SystemExit(f"{path} has no runs of {problem!r}")
            if doc["specs"][problem] != specs[problem]:
                raise SystemExit(f"{path} ran another spec of {problem!r}: not comparable")
            for run in doc["runs"][problem]:
                if run["arm"] not in arms:  # an arm run now replaces the earlier one
                    trials = [TrialEnd(**t) for t in run.pop("trials")]
                    runs[problem].append(Run(**run, trials=trials))
    running, arms = arms, arms + earlier_arms
    try:
        summary = _run_all(
            args, specs, problems, running, arms, seeds, workdir, info, started, runs
        )
    except BaseException:
        print(f"run folders kept in {workdir}", file=sys.stderr)
        raise
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    png = args.png or args.out.with_suffix(".png")
    plot(runs, specs, png, arms)
    print()
    print(markdown(summary, arms))
    print(f"runs: {sum(len(r) for r in runs.values())}, {time.perf_counter() - started:.0f} s; "
          f"load average {info['load_average']} -> {machine_info()['load_average']}; "
          f"{args.out}, {png}")  # fmt: skip
    return 0


def _run_all(
    args: argparse.Namespace,
    specs: dict[str, dict[str, Any]],
    problems: Sequence[str],
    running: Sequence[str],
    arms: Sequence[str],
    seeds: int,
    workdir: Path,
    info: dict[str, Any],
    started: float,
    runs: dict[str, list[Run]],
) -> dict[str, Any]:
    """Every run of the ``running`` arms, saving the JSON after each (a long run that fails
    keeps what it measured); ``arms`` are all the tables show (some included from earlier)."""
    # Interleaved (every arm of a seed before the next seed, the arms' order rotating), so a
    # drift in the machine's speed or load hits every arm alike.
    for seed in range(args.first_seed, args.first_seed + seeds):
        for problem in problems:
            shift = seed % max(1, len(running))
            order = [*running[shift:], *running[:shift]]
            for arm in order:
                spec = effective_spec(specs[problem], seed=seed)
                folder = workdir / problem / f"{arm}-{seed}"
                began = time.perf_counter()
                run = _with_retries(spec, arm, folder, args.timeout)
                run.problem = problem
                runs[problem].append(run)
                print(
                    f"{problem} {arm} seed {seed}: {len(run.trials)} trials, "
                    f"{sum(t.epochs for t in run.trials)} epochs, "
                    f"{time.perf_counter() - began:.0f} s",
                    flush=True,
                )
                _save(args.out, info, runs, specs, problems, arms, seeds, started, partial=True)
    return _save(args.out, info, runs, specs, problems, arms, seeds, started, partial=False)


def _with_retries(spec: dict[str, Any], arm: str, folder: Path, timeout_s: float) -> Run:
    """``run_arm``, again (in a new folder) when a signal killed the run from outside: on a
    shared machine another job's clean-up can take a sweep with it. Anything else is raised."""
    for attempt in range(RETRIES + 1):
        where = folder if attempt == 0 else folder.with_name(f"{folder.name}-retry{attempt}")
        try:
            return run_arm(spec, arm, where, timeout_s)
        except BenchError as error:
            killed = "exited -" in str(error).split("\n", 1)[0]
            if not killed or attempt == RETRIES:
                raise
            print(
                f"{folder.name}: killed from outside ({error.args[0][:80]}...); again", flush=True
            )
    raise AssertionError("unreachable")


def _save(
    out: Path,
    info: dict[str, Any],
    runs: dict[str, list[Run]],
    specs: dict[str, dict[str, Any]],
    problems: Sequence[str],
    arms: Sequence[str],
    seeds: int,
    started: float,
    partial: bool,
) -> dict[str, Any]:
    summary = {}
    for problem in problems:
        if runs[problem]:
            done = [a for a in arms if any(r.arm == a for r in runs[problem])]
            result = summarize(runs[problem], specs[problem], done)
            result["metric"] = specs[problem]["objective"]["metric"]
            summary[problem] = result
    write_json(
        {
            "machine": info,
            "settings": {"problems": list(problems), "arms": list(arms), "seeds": seeds},
            "specs": specs,
            "partial": partial,
            "seconds": time.perf_counter() - started,
            "summary": summary,
            "runs": {p: [asdict(r) for r in rs] for p, rs in runs.items()},
        },
        out,
    )
    return summary


if __name__ == "__main__":
    sys.exit(main())
