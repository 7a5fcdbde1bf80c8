"""Builds and runs one sweep: data, MLflow parent run, Ray Tune, the best model's test.

The order is deliberate. Data and the tracking store are checked before Ray starts, so a bad
path or an unreachable server costs seconds, not a sweep. Everything the trials report is
recorded as it arrives (MLflow, progress), so an interrupted sweep loses nothing it finished.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import ray
from ray import tune
from ray.tune.schedulers import TrialScheduler

from orchestrator.engine import live, raystart
from orchestrator.engine.capacity import refuse_on_this_machine, waiting_note
from orchestrator.engine.observer import SweepObserver
from orchestrator.engine.packs import packer_for, start_mailbox, stop_mailbox
from orchestrator.engine.progress import ProgressLine
from orchestrator.engine.scheduler import HalvingScheduler
from orchestrator.engine.search_setup import build_searcher, concurrent_slots
from orchestrator.engine.trial_actor import MEMBER_FILE, CaviarTrainable, load_trial_state
from orchestrator.engine.trial_choice import NewestFirstFIFO
from orchestrator.environment import apply_environment_defaults
from orchestrator.errors import SweepHalted, SweepInterrupted
from orchestrator.resume import resume_command
from orchestrator.search.ranking import asha_rung_epochs, ranked, rung_milestones
from orchestrator.search.space import SearchSpace
from orchestrator.search.zoom import region_as_dict
from orchestrator.spec import AshaScheduler, SweepSpec
from orchestrator.spec.data import class_names_param, load_data
from orchestrator.store import layout
from orchestrator.store.journal import JOURNAL, Journal, read_journal
from orchestrator.store.lifecycle import (
    FINISHED,
    KILLED,
    Ending,
    NewParent,
    RunLifecycle,
    new_run_id,
)
from orchestrator.store.markers import SweepMarker, pick_for_resume, refuse_if_unfinished
from orchestrator.store.sweep_lock import sweep_lock
from orchestrator.store.tracking import SweepTracker
from orchestrator.sweep_result import SweepResult
from orchestrator.trials import FINAL_STATES, Trial, trial_key
from trainables import DataSplits, TensorSplits, get_trainable

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


TOP_TRIALS_COMPARED = 5  # the summary's compare link shows this many of the best trials
MEMBERS_DIR = "members"  # a stopped pack member's state, saved as it leaves its pack
TIMEOUTS_DIR = "timeouts"  # notes of the trials whose epoch ran past epoch_timeout_s


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
        place = _choose_sweep(spec, shown_spec, resume)
        return _run_locked(
            spec,
            place,
            data,
            spec_text,
            spec_filename,
            stream or sys.stdout,
            spec_dir,
            resume,
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
                _ending(sweep, run, result, started, draw_later),
                interruptions=(KeyboardInterrupt, SweepHalted),
            ):
                with _ray_session(background):  # its shutdown overlaps the summary and report
                    _fit(sweep)
                    result.records = _records(sweep.sweep_id)
                    _rank_and_test(sweep, run, result)
        finally:
            live.unregister(sweep.sweep_id)
    result.undelivered = run.tracker.undelivered
    if isinstance(run.interruption, SweepHalted):
        resume_hint = f"caviar: then finish it with:  {resume_command(shown_spec)}"
        raise SweepHalted(f"{run.interruption}\n{resume_hint}")
    if result.status == KILLED:
        raise SweepInterrupted(_interrupted_message(spec, result, shown_spec))
    return result


INTERRUPTED_NOTE = (
    "\ncaviar: interrupted: stopping the trials and saving what finished "
    "(Ctrl-C again stops at once; nothing already journaled is lost)"
)


@dataclass(frozen=True)
class Sweep:
    """What every step of one sweep's run works from."""

    spec: SweepSpec
    data: DataSplits
    tracker: SweepTracker
    run_dir: Path
    sweep_id: str
    stream: TextIO
    resume: bool
    spec_dir: Path | None = None


@dataclass
class SweepPlace:
    """Where a sweep lives on disk, and its marker (the interrupted one's, on resume)."""

    run_dir: Path
    sweep_id: str
    marker: SweepMarker | None = None


def _storage_root(spec: SweepSpec) -> Path:
    """The folder of every sweep of this spec's name (and of their lock)."""
    return (Path(spec.storage_path()) / spec.name).resolve()


def _choose_sweep(spec: SweepSpec, shown_spec: str, resume: bool) -> SweepPlace:
    """A new sweep (never beside an unfinished one), or the interrupted one to finish."""
    storage_root = _storage_root(spec)
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


def _rank_and_test(sweep: Sweep, run: RunLifecycle, result: SweepResult) -> None:
    """The best trial, ranked ASHA-aware, evaluated once on the held-out test split."""
    spec, tracker = sweep.spec, sweep.tracker
    best = ranked(result.records, spec.objective.metric, spec.mode, _milestones(spec))
    if not best:
        return
    result.best = best[0]
    tracker.flush()
    result.best_run_id = tracker.child_run_id(str(result.best.index))
    top = (tracker.child_run_id(str(r.index)) for r in best[:TOP_TRIALS_COMPARED])
    result.ranked_run_ids = [run_id for run_id in top if run_id is not None]
    model = _score_best(spec, sweep.data, result, sweep.stream)
    result.model_uri = run.log_model(model, sweep.data.x_test[:5])


def _ending(
    sweep: Sweep, run: RunLifecycle, result: SweepResult, started: float, draw_later: bool
) -> Callable[[str], Ending]:
    """What the sweep logs as it ends, by how it ended.

    An interrupted sweep's children end KILLED and it gets no totals or report: those come
    when ``--resume`` finishes it."""

    def ending(status: str) -> Ending:
        result.status = status
        if isinstance(run.interruption, KeyboardInterrupt):
            print(INTERRUPTED_NOTE, file=sweep.stream, flush=True)
        if not result.records:
            result.records = _records(sweep.sweep_id)
        result.wall_seconds = time.monotonic() - started

        def report() -> None:
            draw = _report(result, sweep.tracker, sweep.stream) if status == FINISHED else None
            if draw is not None and not draw_later:
                draw()
                draw = None
            result.draw_report = draw

        return Ending(
            summary=None if status == KILLED else (_summary_metrics(result), _summary_tags(result)),
            child_outcomes={str(r.index): r.state for r in result.records},
            before_end=report,
        )

    return ending


def _records(sweep_id: str) -> list[Trial]:
    """The live observer's trials, by index (none if the sweep never reached Tune)."""
    found = live.lookup(sweep_id)
    if found is None or found.observer is None:
        return []
    return sorted(found.observer.records.values(), key=lambda r: r.index)


def _shown_spec(spec_filename: str, spec_dir: Path | None) -> str:
    """The spec's path as the user gave it (for the commands caviar suggests)."""
    return spec_filename if spec_dir is None else str(Path(spec_dir) / spec_filename)


def _interrupted_message(spec: SweepSpec, result: SweepResult, shown_spec: str) -> str:
    ended = sum(1 for r in result.records if r.state in FINAL_STATES)
    remaining = spec.num_trials() - ended
    return (
        f"sweep {result.name} ({result.sweep_id}) interrupted after "
        f"{result.wall_seconds:.1f} s: {ended} of {spec.num_trials()} trials ended, "
        f"{remaining} remain (MLflow parent run {result.parent_run_id} marked KILLED).\n"
        f"caviar: finish it with:  {resume_command(shown_spec)}"
    )


def _report(
    result: SweepResult, tracker: SweepTracker, stream: TextIO
) -> Callable[..., None] | None:
    """Importance, each round's best and median on the parent run (and in ``result``, for
    the summary); returns what draws the report's plots and page onto the parent run.

    Built from what MLflow now holds (the same path as ``caviar report``), so what the UI
    shows and what the command writes cannot disagree. A failure here costs the report, never
    the sweep: everything it would summarise is already logged.
    """
    from orchestrator.report.page import analyse
    from orchestrator.store.tracking import read_sweep

    try:
        history = read_sweep(tracker.uri, result.parent_run_id)
        report = analyse(history)
        metrics = {f"importance.{k}": v for k, v in report.importance.items()}
        tags: dict[str, str] = {}
        for round_number, best in report.best_by_round.items():
            value = best.metric(history.metric)
            if value is not None:
                metrics[f"round{round_number}.best_{history.metric}"] = value
            tags[layout.round_best_run_id(round_number)] = best.run_id
        for round_number, median in report.median_by_round.items():
            metrics[f"round{round_number}.median_completed_{history.metric}"] = median
        for round_number, importance in report.importance_by_round.items():
            for name, share in importance.items():
                metrics[f"round{round_number}.importance.{name}"] = share
        tracker.log_summary(metrics, tags)
        result.importance = report.importance
        result.best_by_round = {
            r: (b.index, b.metric(history.metric)) for r, b in report.best_by_round.items()
        }
        result.median_by_round = report.median_by_round
    except Exception as error:  # the sweep is logged; a broken report must not fail it
        print(f"caviar: warning: the report could not be built ({error})", file=stream)
        return None

    def draw(warn: Callable[[str], None] | None = None) -> None:
        """``warn``: where a failure is told (default: the sweep's stream)."""
        import tempfile

        from orchestrator.report.page import write_report
        from orchestrator.store.tracking import ui_base

        try:
            with tempfile.TemporaryDirectory() as tmp:
                files = write_report(history, Path(tmp), ui_base(tracker.uri), analysed=report)
                for path in files.files:
                    tracker.log_parent_file(path, "report")
        except Exception as error:  # a broken plot costs the plots, never the sweep
            note = f"caviar: warning: the report's plots could not be drawn ({error})"
            if warn is not None:
                warn(note)
            else:
                print(note, file=stream)

    return draw


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
        spec.num_trials(), spec.objective.metric, spec.mode, _milestones(spec), sweep.stream
    )
    # Registered before the searcher exists: it announces round 1 as it is built.
    registered = live.LiveSweep(sweep.tracker, progress, _round_listener(sweep))
    live.register(sweep.sweep_id, registered)
    packer = packer_for(
        spec,
        n_features=sweep.data.n_features,
        n_classes=sweep.data.n_classes,
        slots=slots,
        search_path=_trainable_path(sweep),
    )
    search_alg, searcher = build_searcher(spec, slots, _milestones(spec), sweep.sweep_id, packer)
    # Packs whose members the scheduler may stop need its stops delivered between steps.
    mailbox = start_mailbox(sweep.sweep_id) if packer is not None and _uses_halving(spec) else None
    scheduler = _scheduler(spec, searcher.index_of, searcher.members_of, mailbox)
    observer = SweepObserver(
        sweep.sweep_id,
        searcher,
        spec.max_epochs,
        set(spec.search_space().fixed),
        metrics=tuple(get_trainable(spec.trainable, _trainable_path(sweep)).metrics),
        left_at=scheduler.left_at if isinstance(scheduler, HalvingScheduler) else None,
        epoch_timeout_s=spec.resources.epoch_timeout_s,
        timeouts_dir=sweep.run_dir / TIMEOUTS_DIR,
        storage_dir=sweep.run_dir,
    )
    registered.observer = observer
    journal = Journal(sweep.run_dir / JOURNAL)
    try:
        if sweep.resume:  # resuming is loading the journal
            state = read_journal(journal.path)
            searcher.replay(state.trials)
            if isinstance(scheduler, HalvingScheduler):
                scheduler.replay(state.scheduler_calls)
            observer.replay(state.trials)
        observer.journal = journal
        if isinstance(scheduler, HalvingScheduler):
            scheduler.journal = journal
        if searcher.remaining > 0:
            tuner = _tuner(sweep, search_alg, scheduler, observer, searcher.remaining, mailbox)
            tuner.fit()  # outcomes come from the observer; Ray's ResultGrid is not needed
        live_observer = registered.observer or observer  # Tune's setup() may swap in a copy
        halted = live_observer.halted()
        if halted is not None:
            raise halted
    finally:
        stop_mailbox(mailbox)
        journal.close()
        progress.close(_records(sweep.sweep_id))


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


def _tuner(
    sweep: Sweep,
    search_alg: Any,
    scheduler: TrialScheduler,
    observer: SweepObserver,
    num_samples: int,
    mailbox: Any = None,
) -> tune.Tuner:
    spec = sweep.spec
    trainable = tune.with_resources(
        tune.with_parameters(
            CaviarTrainable,
            data=sweep.data,
            trainable_name=spec.trainable,
            trainable_path=_trainable_path(sweep),
            checkpoint_every_s=spec.storage.checkpoint_every_s,
            report_every_s=spec.storage.report_every_s,
            report_at=_report_at(spec),
            mailbox=mailbox,
            member_dir=str(sweep.run_dir / MEMBERS_DIR),
            epoch_timeout_s=spec.resources.epoch_timeout_s,
            timeout_dir=str(sweep.run_dir / TIMEOUTS_DIR),
        ),
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial},
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=spec.objective.metric,
            mode=spec.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=_tune_session_name(sweep.run_dir),
            storage_path=str(sweep.run_dir),
            callbacks=[observer],
            stop=_HaltStopper(sweep.sweep_id),
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=0,  # the trial asks for one by time
                checkpoint_at_end=True,
                # 2, not 1: Tune forces an experiment snapshot whenever a trial has
                # saved num_to_keep checkpoints since the last one; at 1, one per trial.
                # The journal names the newest, which is never the one removed.
                num_to_keep=2,
            ),
            failure_config=tune.FailureConfig(max_failures=spec.storage.max_failures),
        ),
    )


class _HaltStopper(tune.Stopper):
    """Ends every trial once the live observer says the sweep must halt (a full disk, a
    journal it cannot write). Found by the sweep's id: Tune keeps a pickled copy of this."""

    def __init__(self, sweep_id: str) -> None:
        self.sweep_id = sweep_id

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        found = live.lookup(self.sweep_id)
        return bool(found and found.observer and found.observer.halted() is not None)


def _trial_dirname(trial: Any) -> str:
    """Short and free of configuration values (which may hold paths): the trial's id."""
    return f"trial_{trial.trial_id}"


def _tune_session_name(run_dir: Path) -> str:
    """Each run of the sweep (the first, then one per resume) gets its own Tune folder."""
    taken = {p.name for p in run_dir.glob("tune-*")}
    number = 1
    while f"tune-{number}" in taken:
        number += 1
    return f"tune-{number}"


def _uses_halving(spec: SweepSpec) -> bool:
    return isinstance(spec.scheduler, AshaScheduler)


def _scheduler(
    spec: SweepSpec,
    index_of: Mapping[str, int],
    members_of: Mapping[str, Sequence[int]] | None = None,
    mailbox: Any = None,
) -> TrialScheduler:
    if isinstance(spec.scheduler, AshaScheduler):
        return HalvingScheduler(
            index_of,
            members_of=members_of,
            mailbox=mailbox,
            seed=spec.search.seed,
            metric=spec.objective.metric,
            mode=spec.mode,
            time_attr="epoch",
            max_t=spec.max_epochs,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
            brackets=spec.scheduler.brackets,
        )
    return NewestFirstFIFO()


def _report_at(spec: SweepSpec) -> tuple[int, ...]:
    """The epochs a trial reports at once, whatever ``report_every_s``: ASHA's rungs."""
    if isinstance(spec.scheduler, AshaScheduler):
        return asha_rung_epochs(
            spec.scheduler.grace_period, spec.scheduler.reduction_factor, spec.max_epochs
        )
    return ()


def _milestones(spec: SweepSpec) -> list[int]:
    if isinstance(spec.scheduler, AshaScheduler):
        return rung_milestones(
            spec.scheduler.grace_period, spec.scheduler.reduction_factor, spec.max_epochs
        )
    return [spec.max_epochs]


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
    if isinstance(spec.scheduler, AshaScheduler):
        params[layout.GRACE_PERIOD_PARAM] = spec.scheduler.grace_period
        params[layout.REDUCTION_FACTOR_PARAM] = spec.scheduler.reduction_factor
        params["scheduler.brackets"] = spec.scheduler.brackets
    for domain in spec.search_space().domains:
        params[f"space.{domain.name}"] = domain.describe()
    for name, value in spec.fixed.items():
        params[f"fixed.{name}"] = value
    return params


def _summary_metrics(result: SweepResult) -> dict[str, float]:
    metrics: dict[str, float] = {
        f"trials_{outcome}": float(count) for outcome, count in result.counts.items()
    }
    metrics["epochs_trained"] = float(result.epochs_trained)
    metrics["fused_packs"] = float(len({r.pack for r in result.records if r.pack is not None}))
    metrics["wall_seconds"] = result.wall_seconds
    if result.best is not None:
        value = result.best.metric(result.metric)
        if value is not None:
            metrics[f"best_{result.metric}"] = value
    if result.test_accuracy is not None:
        metrics["test_accuracy"] = result.test_accuracy
    if result.test_loss is not None:
        metrics["test_loss"] = result.test_loss
    return metrics


def _summary_tags(result: SweepResult) -> dict[str, str]:
    tags: dict[str, str] = {}
    if result.best is not None:
        tags[layout.BEST_TRIAL_ID] = trial_key(result.sweep_id, result.best.index)
        tags[layout.BEST_TRIAL_INDEX] = str(result.best.index)
        if result.best_run_id:
            tags[layout.BEST_RUN_ID] = result.best_run_id
    if result.model_uri:
        tags[layout.MODEL_URI] = result.model_uri
    return tags


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


def _readable_state(checkpoint: str | None, index: int) -> dict[str, Any] | None:
    """The trial's state from its checkpoint; None when there is none or it cannot be read."""
    if checkpoint is None:
        return None
    try:
        with tune.Checkpoint.from_directory(checkpoint).as_directory() as directory:
            return load_trial_state(directory, index)
    except (OSError, RuntimeError, EOFError, KeyError) as error:
        logging.getLogger("caviar").warning("checkpoint %s unreadable: %s", checkpoint, error)
        return None


def _trainable_path(sweep: Sweep) -> tuple[str, ...]:
    """Where trial workers look for a trainable named by import path: the spec's folder (on
    this machine; a job's workers also find it in their working directory)."""
    return (str(sweep.spec_dir.resolve()),) if sweep.spec_dir is not None else ()


def _score_best(
    spec: SweepSpec, data: DataSplits, result: SweepResult, stream: TextIO | None = None
) -> Any:
    """The best trial rebuilt from its last checkpoint and scored once on the test split
    (``result.test_loss``, ``result.test_accuracy``); returns its network, in eval mode.

    A best trial with no readable checkpoint (lost to a kill or a full disk) is trained
    again from its configuration for the epochs it trained: the sweep still ends with a
    tested model, and the summary says so."""
    assert result.best is not None
    best = result.best
    checkpoint = best.checkpoint
    saved_on_leaving = result.storage_dir / MEMBERS_DIR
    if best.pack is not None and (saved_on_leaving / MEMBER_FILE.format(index=best.index)).exists():
        checkpoint = str(saved_on_leaving)  # a killed driver may not have journaled it
    tensors = TensorSplits.from_splits(data, "cpu")
    definition = get_trainable(spec.trainable)
    state = _readable_state(checkpoint, best.index)
    if state is not None:
        session = definition.make_session(state["config"], tensors, "cpu")
        session.load_state_dict(state["session"])
    else:
        print(
            f"caviar: the best trial #{best.index} left no readable checkpoint; training it "
            f"again from its configuration ({best.epochs} epochs) to test it",
            file=stream or sys.stdout,
            flush=True,
        )
        session = definition.make_session(best.config, tensors, "cpu")
        for _ in range(best.epochs):
            session.step()
    result.test_loss, result.test_accuracy = session.evaluate(tensors.x_test, tensors.y_test)
    return session.model.eval()
