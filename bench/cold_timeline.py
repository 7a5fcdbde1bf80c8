"""Where a cold ``caviar run`` spends its seconds: a timeline of one run, split into phases.

Each run is a fresh process in a fresh folder (``caviar run spec.yaml`` on the benchmark spec,
its own SQLite store, its own Ray), as in ``bench/sweep_bench.py``. The child is caviar's own
``main`` with timestamps taken around the functions that mark the phases; nothing in caviar
changes for it. The wrappers go in from an import hook, as each module is imported, so the
imports happen when and where they always do (a wrapper script that imported the engine up
front would move torch's import before Ray's start). The trials' start and end come from the
sweep's journal; the process's start from ``/proc``; its exit from this harness's clock.

    .venv/bin/python -m bench.cold_timeline --runs 3
    .venv/bin/python -m bench.cold_timeline --runs 3 --tree /path/to/other/checkout

Every event is a wall-clock time (``time.time``, the clock the journal uses) relative to the
command's start; the table gives each phase's median over the runs.
"""

from __future__ import annotations

import argparse
import functools
import importlib.abc
import importlib.machinery
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SPEC = Path(__file__).parent / "specs" / "digits64.yaml"
EVENTS_ENV = "CAVIAR_BENCH_TIMELINE"  # the child appends its events to this file

# (module, attribute path): each call's start and end become events "<name>+" / "<name>-".
# Module-level functions are wrapped before any other module binds them by name.
TIMED: tuple[tuple[str, str], ...] = (
    ("orchestrator.spec", "load_spec"),
    ("orchestrator.spec.data", "check_data_files"),
    ("orchestrator.spec.data", "load_data"),
    ("orchestrator.store.uri", "check_store"),
    ("orchestrator.engine.raystart", "start_in_background"),
    ("orchestrator.engine.raystart", "init_ray"),
    ("orchestrator.engine.raystart", "claim"),
    ("orchestrator.engine.on_ray", "run_on_ray"),
    ("orchestrator.engine.run", "run_sweep"),
    ("orchestrator.engine.run", "_open_run"),
    ("orchestrator.engine.run", "_fit"),
    ("orchestrator.engine.run", "rank_and_test"),
    ("orchestrator.engine.run", "_shutdown_quietly"),
    ("orchestrator.engine.best_model", "_score_best"),
    ("orchestrator.store.lifecycle", "RunLifecycle.log_model"),
    ("orchestrator.store.lifecycle", "RunLifecycle._end"),
    ("orchestrator.store.tracking", "SweepTracker.close"),
    ("orchestrator.store.tracking", "SweepTracker.end_sweep"),
    ("orchestrator.store.tracking", "SweepTracker.flush"),
    ("orchestrator.engine.sweep_end", "_report"),
    ("orchestrator.report.summary", "format_summary"),
    ("orchestrator.report.page", "write_report"),
)
# Modules whose import is timed ("import:<name>+/-"): the heavy ones, in the order caviar
# reaches them.
IMPORTS = ("ray", "torch", "mlflow", "orchestrator.engine.run", "sklearn", "matplotlib.pyplot")


# --- the child: events from inside caviar's process ----------------------------------------


class _Recorder:
    def __init__(self, path: str) -> None:
        self.file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (process-long)

    def event(self, name: str) -> None:
        self.file.write(json.dumps([name, time.time()]) + "\n")


def _timed(recorder: _Recorder, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        recorder.event(name + "+")
        try:
            return function(*args, **kwargs)
        finally:
            recorder.event(name + "-")

    return wrapper


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, after: Callable[[Any], None]) -> None:
        self.inner, self.after = inner, after

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.inner.exec_module(module)
        self.after(module)


class _Hook(importlib.abc.MetaPathFinder):
    """Wraps a timed module's functions right after it executes; times the heavy imports."""

    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder
        self.busy: set[str] = set()

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        wanted = any(module == name for module, _ in TIMED) or name in IMPORTS
        if not wanted or name in self.busy:
            return None
        self.busy.add(name)
        try:
            spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        finally:
            self.busy.discard(name)
        if spec is None or spec.loader is None:
            return spec
        if name in IMPORTS:
            self.recorder.event(f"import:{name}+")
        spec.loader = _PatchingLoader(spec.loader, functools.partial(self._patch, name))
        return spec

    def _patch(self, name: str, module: Any) -> None:
        if name in IMPORTS:
            self.recorder.event(f"import:{name}-")
        for module_name, attribute in TIMED:
            if module_name != name:
                continue
            owner: Any = module
            *parents, leaf = attribute.split(".")
            for part in parents:
                owner = getattr(owner, part)
            setattr(owner, leaf, _timed(self.recorder, attribute, getattr(owner, leaf)))


def child(argv: Sequence[str]) -> int:
    """``caviar`` itself, timed: the hook first, then caviar's ``main``."""
    import atexit

    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        del sys.path[0]  # run as a script: bench/'s modules must not shadow top-level names
    recorder = _Recorder(os.environ[EVENTS_ENV])
    recorder.event("child")
    sys.meta_path.insert(0, _Hook(recorder))
    atexit.register(recorder.event, "atexit")  # first registered: runs last
    from orchestrator import cli

    recorder.event("main")
    try:
        return cli.main(list(argv))
    finally:
        recorder.event("main-")


# --- the harness: runs, phases, the table ---------------------------------------------------


def _process_start(pid: int) -> float:
    """When ``pid`` started (epoch seconds), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat", encoding="ascii") as proc:
        boot = next(float(line.split()[1]) for line in proc if line.startswith("btime"))
    return boot + start_ticks / ticks


def run_once(tree: Path, spec: Path, keep: Path | None) -> dict[str, float]:
    """One timed ``caviar run``; returns every event's time from the command's start."""
    from bench.common import clean_env
    from bench.readers import read_caviar_journal

    tmp = Path(tempfile.mkdtemp(prefix="cv-cold-", dir="/tmp"))
    try:
        shutil.copy(spec, tmp / "spec.yaml")
        events_path = tmp / "events.jsonl"
        env = clean_env(PYTHONPATH=str(tree.resolve()))
        env[EVENTS_ENV] = str(events_path)
        # As a script, so a tree without this file (an older commit) is timed all the same.
        command = [sys.executable, str(Path(__file__).resolve()), "--child", "run", "spec.yaml"]
        with (tmp / "caviar.log").open("w", encoding="utf-8") as log:
            started = time.time()
            clock = time.perf_counter()
            process = subprocess.Popen(
                command, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                spawned = _process_start(process.pid) - started
            except OSError:
                spawned = float("nan")
            code = process.wait()
            seconds = time.perf_counter() - clock
        if code != 0:
            raise RuntimeError(f"caviar run exited {code}: {(tmp / 'caviar.log').read_text()}")
        events: dict[str, float] = {"process": spawned, "exit": seconds}
        summary_at: float | None = None
        for line in events_path.read_text(encoding="utf-8").splitlines():
            name, at = json.loads(line)
            events.setdefault(name, at - started)  # the first call of each
            if name == "format_summary-":
                summary_at = at - started
        journal = read_caviar_journal(tmp / "caviar_runs")
        events["first_trial"] = min(t.start_s for t in journal.trials) - started
        events["last_trial"] = max(t.end_s for t in journal.trials) - started
        if summary_at is not None:
            events["summary_printed"] = summary_at
        return events
    finally:
        if keep is not None:
            shutil.copytree(tmp, keep / tmp.name)
        shutil.rmtree(tmp, ignore_errors=True)


# (phase, from event, to event): the rows of the breakdown, in the order they happen.
# Spans on the main thread unless said; Ray's start runs on its own thread alongside.
PHASES: tuple[tuple[str, str, str], ...] = (
    ("interpreter start to caviar's main", "process", "main"),
    ("spec parse (load_spec)", "load_spec+", "load_spec-"),
    ("data files checked, store checked", "check_data_files+", "check_store-"),
    ("[thread] Ray's start (init_ray)", "init_ray+", "init_ray-"),
    (
        "import of the engine (torch, Tune, MLflow...)",
        "import:orchestrator.engine.run+",
        "import:orchestrator.engine.run-",
    ),
    ("data load and split (load_data)", "load_data+", "load_data-"),
    ("MLflow store open + parent run (_open_run)", "_open_run+", "_open_run-"),
    ("waiting for Ray's start (claim)", "claim+", "claim-"),
    ("claimed Ray to first trial start", "claim-", "first_trial"),
    ("sweep: first trial start to last trial end", "first_trial", "last_trial"),
    ("last trial end to Tune's return (_fit)", "last_trial", "_fit-"),
    (
        "best model: ranked, rebuilt, tested, logged (rank_and_test)",
        "rank_and_test+",
        "rank_and_test-",
    ),
    ("  of which rebuilt and tested (_score_best)", "_score_best+", "_score_best-"),
    ("  of which the writer's flush", "SweepTracker.flush+", "SweepTracker.flush-"),
    (
        "  of which log_model",
        "RunLifecycle.log_model+",
        "RunLifecycle.log_model-",
    ),
    (
        "block's end to the run's end (gc, Ray's shutdown handed off)",
        "rank_and_test-",
        "RunLifecycle._end+",
    ),
    ("run's end: writer close", "SweepTracker.close+", "SweepTracker.close-"),
    ("report analysis (read back, importance)", "_report+", "_report-"),
    ("parent ended to summary printed", "SweepTracker.end_sweep-", "summary_printed"),
    ("[thread] Ray's shutdown", "_shutdown_quietly+", "_shutdown_quietly-"),
    ("report plots (after the summary)", "write_report+", "write_report-"),
    ("plots done to process exit", "write_report-", "exit"),
)
MARKS = ("main", "first_trial", "last_trial", "summary_printed", "exit")


def phases(events: dict[str, float]) -> dict[str, float]:
    spans = {}
    for phase, start, end in PHASES:
        if start in events and end in events:
            spans[phase] = events[end] - events[start]
    return spans


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--keep", type=Path, help="copy every run's folder here")
    parser.add_argument("--out", type=Path, help="every run's events as JSON")
    parser.add_argument(
        "--wait-quiet",
        action="store_true",
        help="before each run, wait (up to 10 min) until the machine is quiet",
    )
    args = parser.parse_args(argv)
    runs = []
    for number in range(args.runs):
        if args.wait_quiet:
            from bench.common import wait_for_quiet

            wait_for_quiet()
        events = run_once(args.tree, args.spec, args.keep)
        runs.append(events)
        marks = ", ".join(f"{m} {events[m]:.2f}" for m in MARKS if m in events)
        print(f"[run {number + 1}/{args.runs}] {marks}", flush=True)
    print(f"\n{args.tree}: {args.runs} runs, medians (seconds)")
    print("| phase | median | runs |\n| --- | --- | --- |")
    split = [phases(r) for r in runs]
    for phase, _, _ in PHASES:
        values = [s[phase] for s in split if phase in s]
        if values:
            shown = ", ".join(f"{v:.2f}" for v in values)
            print(f"| {phase} | {statistics.median(values):.2f} | {shown} |")
    for mark in MARKS:
        values = [r[mark] for r in runs if mark in r]
        if values:
            shown = ", ".join(f"{v:.2f}" for v in values)
            print(f"| at: {mark} | {statistics.median(values):.2f} | {shown} |")
    if args.out:
        args.out.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
