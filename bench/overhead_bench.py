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
    .venv/bin/python -m bench.overhead_bench --trials 1024 --reports 1   # driver CPU per trial

Every run also measures the driver's CPU (the ``caviar run`` process: Tune's controller loop,
caviar's callbacks, the MLflow writer thread, Ray's client threads; not Ray's own processes):
the driver samples its own user+sys CPU time a few times a second and leaves the samples in
``driver_cpu.json``, and the harness reads off the CPU spent between the first trial's start
and the last trial's end, per trial (``driver_cpu_per_trial_ms``), as well as the whole
process's (imports, Ray's start, the best model's test included) per trial.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import shutil
import sys
import threading
import time
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
DRIVER_CPU_FILE = "driver_cpu.json"
CPU_SAMPLE_S = 0.05  # between two samples of the driver's CPU time
THREAD_SAMPLE_EVERY = 10  # samples between two readings of every thread's CPU time
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
    "driver_cpu_per_trial_ms",
    "driver_cpu_total_per_trial_ms",
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


def driver_cpu_numbers(
    samples: list[list[float]],
    total_cpu_s: float,
    first_start_s: float,
    last_end_s: float,
    trials: int,
) -> dict[str, Any]:
    """The driver's CPU during the sweep (first trial start to last trial end) and in all,
    per trial. ``samples`` are ``[wall clock s, process CPU s]`` in time order; the CPU at
    the sweep's two ends is interpolated between the samples around each."""
    sweep_cpu = _cpu_at(samples, last_end_s) - _cpu_at(samples, first_start_s)
    return {
        "driver_cpu_sweep_s": sweep_cpu,
        "driver_cpu_total_s": total_cpu_s,
        "driver_cpu_per_trial_ms": 1000.0 * sweep_cpu / trials if trials else None,
        "driver_cpu_total_per_trial_ms": 1000.0 * total_cpu_s / trials if trials else None,
    }


def threads_in_window(
    thread_samples: list[list[Any]], first_start_s: float, last_end_s: float
) -> dict[str, float]:
    """Each thread's CPU seconds between the sweep's two ends (by thread name; linear
    between the samples around each end, a thread absent from a sample counting 0)."""
    names = {name for _, by_name in thread_samples for name in by_name}
    spent = {}
    for name in names:
        series = [[t, by_name.get(name, 0.0)] for t, by_name in thread_samples]
        spent[name] = _cpu_at(series, last_end_s) - _cpu_at(series, first_start_s)
    return dict(sorted(spent.items(), key=lambda item: -item[1]))


def _cpu_at(samples: list[list[float]], at: float) -> float:
    """The process CPU time at wall-clock ``at``, linear between the samples around it."""
    if not samples:
        raise BenchError("the driver left no CPU samples")
    times = [t for t, _ in samples]
    i = bisect.bisect_left(times, at)
    if i == 0:
        return samples[0][1]
    if i == len(samples):
        return samples[-1][1]
    (t0, c0), (t1, c1) = samples[i - 1], samples[i]
    return c0 + (c1 - c0) * ((at - t0) / (t1 - t0) if t1 > t0 else 1.0)


class _CpuSampler:
    """Samples this process's user+sys CPU time (all its threads) every CPU_SAMPLE_S, and
    each thread's (Linux: /proc) every THREAD_SAMPLE_EVERY samples, for the breakdown by
    thread name (a thread that ended keeps its last sample)."""

    def __init__(self) -> None:
        self.samples: list[list[float]] = []
        self.threads: dict[str, tuple[str, float]] = {}  # tid -> (name, CPU seconds)
        self.thread_samples: list[list[Any]] = []  # [wall clock s, {name: CPU seconds}]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu", daemon=True)

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def _sample(self) -> None:
        self.samples.append([time.time(), time.process_time()])

    def _sample_threads(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        try:
            tids = os.listdir("/proc/self/task")
        except OSError:
            return  # not Linux: no breakdown
        python_names = {str(t.native_id): t.name for t in threading.enumerate()}
        for tid in tids:
            try:
                stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            except OSError:
                continue
            name = python_names.get(tid) or stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            self.threads[tid] = (name, (int(fields[11]) + int(fields[12])) / tick)
        self.thread_samples.append([time.time(), self._by_name()])

    def _by_name(self) -> dict[str, float]:
        by_name: dict[str, float] = {}
        for name, seconds in self.threads.values():
            by_name[name] = by_name.get(name, 0.0) + seconds
        return by_name

    def _run(self) -> None:
        count = 0
        while not self._stop.wait(CPU_SAMPLE_S):
            self._sample()
            count += 1
            if count % THREAD_SAMPLE_EVERY == 0:
                self._sample_threads()

    def stop(self, path: Path) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self._sample_threads()
        by_name = self._by_name()
        times = os.times()
        record = {
            "samples": self.samples,
            "total_s": times.user + times.system,
            "threads": dict(sorted(by_name.items(), key=lambda item: -item[1])),
            "thread_samples": self.thread_samples,
        }
        path.write_text(json.dumps(record))


def inner(spec_path: Path) -> int:
    """The driver process: Ray with the worker setup hook, then ``caviar run`` in-process."""
    from orchestrator.environment import apply_environment_defaults

    apply_environment_defaults()  # before Ray starts: its processes inherit it
    import ray

    import bench.noop_trainable  # noqa: F401  # registers bench_noop in the driver
    from orchestrator.cli import main as caviar_main

    if os.environ.get("RAY_AUTH_MODE") != "token" or not os.environ.get("RAY_AUTH_TOKEN"):
        raise SystemExit("run by the harness: it puts a fresh Ray auth token in the environment")
    sampler = _CpuSampler()
    sampler.start()
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
        sampler.stop(spec_path.parent / DRIVER_CPU_FILE)


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
            command = [sys.executable, "-m", "bench.overhead_bench", "--inner", SPEC_FILE]
            if args.py_spy:  # the driver's own stacks, sampled by py-spy (its CPU: not counted)
                command = [*py_spy_command(workdir), *command]
            timed: Timed = run_timed(
                command,
                cwd=workdir,
                env=clean_env(PYTHONPATH=pythonpath, **ray_token_env()),
                log_name="caviar.log",
                timeout_s=args.timeout,
            )
            read = read_caviar(workdir / "mlflow.db", EXPERIMENT)
            summary = summarize(read, timed, n_slots)
            cpu = json.loads((workdir / DRIVER_CPU_FILE).read_text())
            run = {
                "rep": rep,
                **summary,
                **overhead_numbers(summary, args.trials, args.reports, step_seconds, n_slots),
                **driver_cpu_numbers(
                    cpu["samples"],
                    cpu["total_s"],
                    min(t.start_s for t in read.trials),
                    max(t.end_s for t in read.trials),
                    len(read.trials),
                ),
                "driver_cpu_threads_s": cpu.get("threads", {}),
                "driver_cpu_sweep_threads_s": threads_in_window(
                    cpu.get("thread_samples", []),
                    min(t.start_s for t in read.trials),
                    max(t.end_s for t in read.trials),
                ),
            }
            result["runs"].append(run)
            write_json(result, args.out)  # a long run that fails later keeps what it measured
            print(
                f"[rep {rep + 1}/{args.reps}] sweep {run['sweep_wall_s']:.2f} s "
                f"(minimum {run['minimum_s']:.2f} s), end-to-end {run['end_to_end_s']:.2f} s, "
                f"{run['reports']} reports, driver CPU "
                f"{run['driver_cpu_per_trial_ms']:.1f} ms per trial in the sweep "
                f"({run['driver_cpu_total_per_trial_ms']:.1f} ms in all)",
                file=sys.stderr,
                flush=True,
            )
        result["medians"] = {key: median(r.get(key) for r in result["runs"]) for key in MEDIAN_KEYS}
        ok = True
    finally:
        if ok and not args.keep and not args.py_spy and args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"run folders kept in {base}", file=sys.stderr)
    return result


def py_spy_command(workdir: Path) -> list[str]:
    """py-spy sampling the driver's Python threads into ``workdir/profile.txt`` (collapsed
    stacks: a line per stack, its sample count last; idle threads left out)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise BenchError("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    out = workdir / "profile.txt"
    return [
        spy,
        "record",
        "--rate",
        "100",
        "--nonblocking",
        "--threads",
        "--format",
        "raw",
        "-o",
        str(out),
        "--",
    ]


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
            f"  driver CPU per trial  {m['driver_cpu_per_trial_ms']:.1f} ms in the sweep, "
            f"{m['driver_cpu_total_per_trial_ms']:.1f} ms in all (imports, Ray start, end)",
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
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="profile each run's driver with py-spy into its folder's profile.txt (kept)",
    )
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
