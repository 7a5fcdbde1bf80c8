"""Builds and runs one sweep: data, MLflow parent run, Ray Tune, the best model's test.

The order is deliberate. Data and the tracking store are checked before Ray starts, so a bad
path or an unreachable server costs seconds, not a sweep. Everything the trials report is
recorded as it arrives (MLflow, progress), so an interrupted sweep loses nothing it finished.

The parent run's opening and end are ``store/lifecycle.py``'s (shared with panda and revisit);
the Tune pieces are ``tuner.py``'s, the best model's test ``best_model.py``'s, and what the
sweep logs as it ends ``sweep_end.py``'s.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import ray

from orchestrator.engine import live, raystart, registry_cache
from orchestrator.engine.best_model import rank_and_test
from orchestrator.engine.capacity import refuse_on_this_machine, waiting_note
from orchestrator.engine.mailbox import start_mailbox, stop_mailbox
from orchestrator.engine.observer import SweepObserver
from orchestrator.engine.packs import packer_for
from orchestrator.engine.pbt_files import PbtFiles
from orchestrator.engine.pbt_setup import (
    PbtSweep,
    ended_at,
    hp_metrics,
    pbt_plan,
    pbt_summary,
    uses_pbt,
)
from orchestrator.engine.progress import ProgressLine
from orchestrator.engine.scheduler import HalvingScheduler
from orchestrator.engine.search_setup import build_searcher, concurrent_slots
from orchestrator.engine.sweep import TIMEOUTS_DIR, Sweep, milestones, records, trainable_path
from orchestrator.engine.sweep_end import interrupted_message, sweep_ending
from orchestrator.engine.tuner import build_tuner, scheduler_for, uses_halving
from orchestrator.environment import apply_environment_defaults
from orchestrator.errors import SweepHalted, SweepInterrupted
from orchestrator.resume import resume_command
from orchestrator.search.space import SearchSpace
from orchestrator.search.zoom import region_as_dict
from orchestrator.spec import AshaScheduler, PbtScheduler, SweepSpec
from orchestrator.spec.data import class_names_param, load_data
from orchestrator.store import layout
from orchestrator.store.journal import JOURNAL, Journal, read_journal
from orchestrator.store.lifecycle import (
    KILLED,
    NewParent,
    RunLifecycle,
    discard_unstarted,
    new_run_id,
)
from orchestrator.store.markers import (
    SweepMarker,
    pick_for_resume,
    refuse_if_unfinished,
    unfinished,
)
from orchestrator.store.sweep_lock import sweep_lock
from orchestrator.sweep_result import SweepResult
from trainables import DataSplits, get_trainable

# Tune's per-trial result files are off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS): caviar keeps its
# own records and MLflow, so the analysis' "no result.json" warnings are noise.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
# A failed trial is told once, in one line, by the observer (its error in full stays in the
# trial's MLflow run and Ray's error file): Tune's own traceback per failure and its closing
# list of failed trials would bury the sweep's progress (a full disk printed thousands).
logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
# caviar resumes from its journal, never from Tune's experiment snapshot: a snapshot that
# cannot be synced (a full disk) is not the user's concern, and the journal's failure is told.
logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.CRITICAL)
logging.getLogger("ray.train._internal.syncer").setLevel(logging.CRITICAL)


def run_sweep(
    spec: SweepSpec,
    spec_text: str,
    spec_filename: str,
    stream: TextIO | None = None,
    spec_dir: Path | None = None,
    resume: bool = False,
    draw_later: bool = False,
) -> SweepResult:
    """Run (or, with ``resume``, finish) one sweep; raises :class:`SweepInterrupted` on Ctrl-C.

    Everything that can fail on the user's input (the data, the machine's size, the sweep's
    folder and lock, the tracking store) is checked before Ray starts, in that order. With
    ``draw_later`` the report's plots and page are left to ``result.draw_report``, for the
    caller to run once the summary is out (everything the summary shows is computed before).
    """
    apply_environment_defaults()  # before Ray starts: its processes inherit the environment
    started = time.monotonic()
    shown_spec = _shown_spec(spec_filename, spec_dir)
    data = load_data(spec.data, spec_dir)  # data paths are relative to the spec's folder
    if not os.environ.get("RAY_ADDRESS"):  # an embedded Ray cannot grow: it would wait forever
        refuse_on_this_machine(spec.resources.cpus_per_trial, spec.resources.gpus_per_trial)
    # One driver per sweep: held from choosing the sweep until its end is marked on disk.
    with sweep_lock(_storage_root(spec), spec.name, shown_spec):
        place = _choose_sweep(spec, shown_spec, resume, stream or sys.stdout)
        return _run_locked(
            spec,
            place,
            data,
            spec_text,
            spec_filename,
            stream or sys.stdout,
            spec_dir,
            place.marker is not None,  # resuming: a sweep stopped while starting starts anew
            draw_later,
            started,
        )


def _run_locked(
    spec: SweepSpec,
    place: SweepPlace,
    data: DataSplits,
    spec_text: str,
    spec_filename: str,
    stream: TextIO,
    spec_dir: Path | None,
    resume: bool,
    draw_later: bool,
    started: float,
) -> SweepResult:
    shown_spec = _shown_spec(spec_filename, spec_dir)
    run = _open_run(spec, place, data, spec_text, spec_filename, stream)
    sweep = Sweep(spec, data, run.tracker, place.run_dir, run.run_id, stream, resume, spec_dir)
    result = _announce(sweep, started)
    with ThreadPoolExecutor(1, thread_name_prefix="caviar-ray-shutdown") as background:
        try:
            # A full disk, say, halts the sweep: it ends KILLED, kept for --resume.
            with run.running(
                sweep_ending(sweep, run, result, started, draw_later),
                interruptions=(KeyboardInterrupt, SweepHalted),
            ):
                with _ray_session(background):  # its shutdown overlaps the summary and report
                    _fit(sweep)
                    result.records = records(sweep.sweep_id)
                    rank_and_test(sweep, run, result)
                    if uses_pbt(spec):
                        names = pbt_plan(spec, trainable_path(sweep)).names
                        files = PbtFiles(sweep.run_dir)
                        result.notes = pbt_summary(files, result.records, result.best, names)
        finally:
            live.unregister(sweep.sweep_id)
    result.undelivered = run.tracker.undelivered
    if isinstance(run.interruption, SweepHalted):
        resume_hint = f"caviar: then finish it with:  {resume_command(shown_spec)}"
        raise SweepHalted(f"{run.interruption}\n{resume_hint}")
    if result.status == KILLED:
        raise SweepInterrupted(interrupted_message(spec, result, shown_spec))
    return result


@dataclass
class SweepPlace:
    """Where a sweep lives on disk, and its marker (the interrupted one's, on resume)."""

    run_dir: Path
    sweep_id: str
    marker: SweepMarker | None = None


def _storage_root(spec: SweepSpec) -> Path:
    """The folder of every sweep of this spec's name (and of their lock)."""
    return (Path(spec.storage_path()) / spec.name).resolve()


def _choose_sweep(spec: SweepSpec, shown_spec: str, resume: bool, stream: TextIO) -> SweepPlace:
    """A new sweep (never beside an unfinished one), or the interrupted one to finish.

    A sweep stopped while starting (before its parent run was recorded) is discarded first; a
    ``--resume`` that finds only such a sweep starts the sweep anew, as nothing of it ran."""
    storage_root = _storage_root(spec)
    discarded = discard_unstarted(storage_root)
    if resume and discarded and not unfinished(storage_root):
        print(
            f"caviar: sweep {discarded[0]} was stopped before it began; starting it anew",
            file=stream,
            flush=True,
        )
        resume = False
    if resume:
        run_dir, marker = pick_for_resume(storage_root, spec.spec_hash(), spec.results_fields())
        return SweepPlace(run_dir, marker.sweep_id, marker)
    refuse_if_unfinished(storage_root, shown_spec)
    sweep_id = new_run_id()
    return SweepPlace(storage_root / sweep_id, sweep_id)


def _open_run(
    spec: SweepSpec,
    place: SweepPlace,
    data: DataSplits,
    spec_text: str,
    spec_filename: str,
    stream: TextIO,
) -> RunLifecycle:
    """The sweep's MLflow parent run, new or reopened; marks the sweep running on disk.

    An unreachable or refusing store stops the sweep here, before any compute."""
    if place.marker is not None:
        # The marker keeps the spec as this run runs it (pick_for_resume refused a change).
        marker = dataclasses.replace(place.marker, spec=spec.results_fields())
        return RunLifecycle.reopen(place.run_dir, marker, stream)
    parent = NewParent(
        kind=layout.SWEEP,
        run_id=place.sweep_id,
        run_name=f"{spec.name}-{place.sweep_id}",
        spec_hash=spec.spec_hash(),
        spec_text=spec_text,
        spec_filename=spec_filename,
        tags=_sweep_tags(spec),
        params=_sweep_params(spec, data),
        results_fields=spec.results_fields(),
    )
    return RunLifecycle.start(
        spec.tracking_uri(), spec.experiment_name, parent, stream, folder=place.run_dir
    )


def _announce(sweep: Sweep, started: float) -> SweepResult:
    """The sweep's first line, and the result it will fill in."""
    spec, tracker = sweep.spec, sweep.tracker
    parent_run_id = str(tracker.parent_run_id)
    verb = "resuming" if sweep.resume else "sweep"
    print(
        f"caviar: {verb} {spec.name} ({sweep.sweep_id}): {spec.num_trials()} trials, "
        f"data {spec.data.source} {sweep.data.sizes()}; MLflow run {parent_run_id} "
        f"in experiment {tracker.experiment!r} at {tracker.uri}",
        file=sweep.stream,
        flush=True,
    )
    return SweepResult(
        name=spec.name,
        sweep_id=sweep.sweep_id,
        experiment=tracker.experiment,
        tracking_uri=tracker.uri,
        parent_run_id=parent_run_id,
        storage_dir=sweep.run_dir,
        experiment_id=tracker.experiment_id,
        metric=spec.objective.metric,
        mode=spec.mode,
        records=[],
        wall_seconds=time.monotonic() - started,
    )


@contextmanager
def _ray_session(background: ThreadPoolExecutor) -> Iterator[None]:
    """Ray for the sweep's duration: joined, or started (and then owned) for it. An owned Ray
    is shut down on ``background`` when the block ends, however it ends: nothing after the
    block needs Ray (the best checkpoint is read inside it; the report reads MLflow)."""
    owned = raystart.ensure_ray()
    try:
        yield
    finally:
        if owned:
            # Whatever still refers to a Ray object and is already garbage is freed now,
            # while Ray is up: freed during the shutdown it would call into a core worker
            # being torn down, which ends the process (exit 1, no summary).
            gc.collect()
            background.submit(_shutdown_quietly)


def _shutdown_quietly() -> None:
    """Ray's shutdown with the collector paused: no Ray object is freed while it runs."""
    gc.disable()
    try:
        ray.shutdown()
    finally:
        gc.enable()


def _shown_spec(spec_filename: str, spec_dir: Path | None) -> str:
    """The spec's path as the user gave it (for the commands caviar suggests)."""
    return spec_filename if spec_dir is None else str(Path(spec_dir) / spec_filename)


def _fit(sweep: Sweep) -> None:
    """Run (or continue) the sweep's trials; the live observer ends up with every record.

    A resumed sweep does not use Tune's restore (see ``orchestrator/store/journal.py``): the
    searcher, the scheduler and the records are rebuilt from caviar's journal, trials that
    had not ended continue from their last journaled checkpoint, and a fresh Tuner (its own
    folder under the sweep's) runs what is left.
    """
    spec = sweep.spec
    slots = _announce_capacity(sweep)
    progress = ProgressLine(
        spec.num_trials(), spec.objective.metric, spec.mode, milestones(spec), sweep.stream
    )
    # Registered before the searcher exists: it announces round 1 as it is built.
    registered = live.LiveSweep(sweep.tracker, progress, _round_listener(sweep))
    live.register(sweep.sweep_id, registered)
    packer = packer_for(
        spec,
        n_features=sweep.data.n_features,
        n_classes=sweep.data.n_classes,
        slots=slots,
        search_path=trainable_path(sweep),
    )
    search_alg, searcher = build_searcher(spec, slots, milestones(spec), sweep.sweep_id, packer)
    # Packs whose members the scheduler may stop need its stops delivered between steps.
    mailbox = start_mailbox(sweep.sweep_id) if packer is not None and uses_halving(spec) else None
    scheduler = scheduler_for(spec, searcher.index_of, searcher.members_of, mailbox)
    metrics = tuple(get_trainable(spec.trainable, trainable_path(sweep)).metrics)
    pbt = PbtSweep(sweep) if uses_pbt(spec) else None
    if pbt is not None:
        metrics += hp_metrics(spec)
        registered.pbt = pbt.log
    observer = SweepObserver(
        sweep.sweep_id,
        searcher,
        spec.max_epochs,
        set(spec.search_space().fixed),
        metrics=metrics,
        left_at=scheduler.left_at if isinstance(scheduler, HalvingScheduler) else None,
        epoch_timeout_s=spec.resources.epoch_timeout_s,
        timeouts_dir=sweep.run_dir / TIMEOUTS_DIR,
        storage_dir=sweep.run_dir,
    )
    registered.observer = observer
    journal = Journal(sweep.run_dir / JOURNAL)
    try:
        ended: dict[int, int] = {}
        if sweep.resume:  # resuming is loading the journal
            state = read_journal(journal.path)
            searcher.replay(state.trials)
            if isinstance(scheduler, HalvingScheduler):
                scheduler.replay(state.scheduler_calls)
            ended = ended_at(state.trials)
            observer.replay(state.trials)
        observer.journal = journal
        if isinstance(scheduler, HalvingScheduler):
            scheduler.journal = journal
        if pbt is not None:
            scheduler = pbt.scheduler(
                searcher.index_of, ended, observer, journal, searcher.members_of
            )
        if searcher.remaining > 0:
            registry_cache.install()
            worker = pbt.worker if pbt is not None else None
            tuner = build_tuner(
                sweep, search_alg, scheduler, observer, searcher.remaining, mailbox, worker
            )
            tuner.fit()  # outcomes come from the observer; Ray's ResultGrid is not needed
        live_observer = registered.observer or observer  # Tune's setup() may swap in a copy
        halted = live_observer.halted()
        if halted is not None:
            raise halted
    finally:
        stop_mailbox(mailbox)
        journal.close()
        progress.close(records(sweep.sweep_id))


def _announce_capacity(sweep: Sweep) -> int:
    """How many trials run at once; a note when no node can hold a trial yet."""
    resources = sweep.spec.resources
    slots = concurrent_slots(
        ray.cluster_resources(), resources.cpus_per_trial, resources.gpus_per_trial
    )
    alive = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    note = waiting_note(alive, resources.cpus_per_trial, resources.gpus_per_trial)
    if note:
        print(note, file=sweep.stream, flush=True)
    return slots


def _round_listener(sweep: Sweep) -> Callable[[int, SearchSpace, tuple[str, ...]], None]:
    """Each round's region on the parent run (params, a JSON artifact) and in the terminal."""
    spec, tracker, stream = sweep.spec, sweep.tracker, sweep.stream

    def on_round(round_number: int, space: SearchSpace, notes: tuple[str, ...]) -> None:
        sampled = {f"round{round_number}.{d.name}": d.describe() for d in space.sampled}
        tracker.parent_update(
            params=sampled,
            json_artifacts={f"regions/round_{round_number}.json": region_as_dict(space)},
            tags={layout.round_notes(round_number): "; ".join(notes)} if notes else None,
        )
        if spec.search.rounds_count() > 1:
            text = ", ".join(f"{d.name} {d.describe()}" for d in space.sampled)
            print(f"\ncaviar: round {round_number}: {text}", file=stream, flush=True)
            for note in notes:
                print(f"caviar:   {note}", file=stream, flush=True)

    return on_round


def _sweep_tags(spec: SweepSpec) -> dict[str, str]:
    """The parent's tags beyond the lifecycle's stamp (kind, sweep id, spec hash)."""
    tags = {
        layout.VERSION: _version(),
        layout.TRAINABLE: spec.trainable,
    }
    commit = _git_commit()
    if commit:
        tags[layout.GIT_COMMIT] = commit
    if spec.description:
        tags[layout.NOTE] = spec.description
    return tags


def _sweep_params(spec: SweepSpec, data: DataSplits) -> dict[str, Any]:
    params: dict[str, Any] = {
        "data.source": spec.data.source,
        "data.sizes": data.sizes(),
        "data.classes": class_names_param(data),  # output k of the model is classes[k]
        "trainable": spec.trainable,
        "search.strategy": spec.search.strategy,
        "search.num_trials": spec.num_trials(),
        "search.seed": spec.search.seed,
        layout.SCHEDULER_KIND_PARAM: spec.scheduler.kind,
        layout.MAX_EPOCHS_PARAM: spec.max_epochs,
        layout.OBJECTIVE_PARAM: f"{spec.mode} {spec.objective.metric}",
        "resources.cpus_per_trial": spec.resources.cpus_per_trial,
        "resources.gpus_per_trial": spec.resources.gpus_per_trial,
        "resources.pack_size": spec.resources.pack_size,
    }
    if isinstance(spec.scheduler, PbtScheduler):
        params["scheduler.interval"] = spec.scheduler.interval
        params["scheduler.quantile"] = spec.scheduler.quantile
        params["scheduler.perturbation.factors"] = list(spec.scheduler.perturbation.factors)
        params["scheduler.perturbation.resample_probability"] = (
            spec.scheduler.perturbation.resample_probability
        )
    if isinstance(spec.scheduler, AshaScheduler):
        params[layout.GRACE_PERIOD_PARAM] = spec.scheduler.grace_period
        params[layout.REDUCTION_FACTOR_PARAM] = spec.scheduler.reduction_factor
        params["scheduler.brackets"] = spec.scheduler.brackets
    for domain in spec.search_space().domains:
        params[f"space.{domain.name}"] = domain.describe()
    for name, value in spec.fixed.items():
        params[f"fixed.{name}"] = value
    return params


def _version() -> str:
    try:
        return metadata.version("caviar")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
