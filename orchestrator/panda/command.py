"""``caviar panda``: start (or resume) a session, and ``adjust``/``pause``/``resume``/``stop``
one from another shell.

A session lives in ``<storage>/<spec name>/panda/<session id>/``: the sweep marker (its MLflow
parent run, status), the journal, the command file and the checkpoints. The MLflow parent run
(tags ``caviar.kind = caviar.mode = panda``) holds one nested run per segment.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from orchestrator.environment import apply_environment_defaults
from orchestrator.errors import SweepInterrupted
from orchestrator.panda.changes import PandaError, check_changes
from orchestrator.panda.checkpoints import CheckpointStore
from orchestrator.panda.control import (
    Command,
    find_session,
    send,
    session_roots,
    storage_root,
)
from orchestrator.panda.control import wait_for_answer as _wait
from orchestrator.panda.record import read_session
from orchestrator.panda.start import initial_config
from orchestrator.spec import SweepSpec
from orchestrator.store import layout
from orchestrator.store.journal import JOURNAL, Journal
from orchestrator.store.markers import SweepMarker, read_marker, unfinished

if TYPE_CHECKING:  # the session, torch and MLflow load only where a session runs
    from orchestrator.panda.origin import Origin
    from orchestrator.panda.session import PandaOutcome
    from orchestrator.panda.trainer import Trainer
    from orchestrator.store.lifecycle import NewParent, RunLifecycle

TrainerFactory = Callable[[SweepSpec, Any, "Path | None"], "Trainer"]


@dataclass
class PandaResult:
    """What the summary prints."""

    name: str
    session_id: str
    folder: Path
    parent_run_id: str
    experiment: str
    tracking_uri: str
    outcome: PandaOutcome
    metric: str
    mode: str
    wall_seconds: float
    model_uri: str | None = None  # the final model, logged on the session's parent run
    replay_of: int | None = None  # --replay: the PBT trial replayed
    target: float | None = None  # and its final objective


def ray_trainer(spec: SweepSpec, data: Any, spec_dir: Path | None) -> Trainer:
    from orchestrator.engine.panda_actor import RayTrainer
    from orchestrator.panda.trainer import LocalTrainer

    path = (str(spec_dir.resolve()),) if spec_dir is not None else ()
    return RayTrainer(
        LocalTrainer,
        data,
        spec.trainable,
        path,
        spec.resources.cpus_per_trial,
        spec.resources.gpus_per_trial,
    )


def run_panda(
    spec: SweepSpec,
    spec_text: str,
    spec_filename: str,
    spec_dir: Path | None = None,
    sets: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    resume: bool = False,
    stream: TextIO | None = None,
    make_trainer: TrainerFactory = ray_trainer,
    tty: bool | None = None,
    origin: Origin | None = None,
    keys: bool | None = None,
) -> PandaResult:
    """Run one panda session to its end; raises SweepInterrupted on Ctrl-C (resumable).

    ``origin``: a sweep trial to continue (``caviar panda --from``) instead of a new model;
    ``keys``: read changes typed in this terminal (default: when stdin and the view are one)."""
    from orchestrator.panda.live_view import LiveView
    from orchestrator.panda.session import PandaSession
    from orchestrator.spec.data import load_data
    from orchestrator.store.lifecycle import FINISHED, KILLED, Ending, RunLifecycle, new_run_id

    apply_environment_defaults()
    stream = stream or sys.stdout
    started = time.monotonic()
    root = storage_root(spec)
    if resume:
        folder, marker = _pick_for_resume(root, spec)
        config: dict[str, Any] = {}
    else:
        config = origin.config if origin else initial_config(spec, sets or {}, epochs)
        session_id = new_run_id()
        folder = root / session_id
        folder.mkdir(parents=True)
        # What `caviar panda adjust` checks changes against, from any shell.
        (folder / "spec.yaml").write_text(spec_text, encoding="utf-8")
        (folder / "spec_dir").write_text(str((spec_dir or Path.cwd()).resolve()), "utf-8")
        if origin is not None and origin.replay_of is not None:
            save_schedule(folder, origin.schedule)
    data = load_data(spec.data, spec_dir)
    if resume:
        run = RunLifecycle.reopen(folder, marker, stream, noun="session")
    else:
        parent = _new_parent(spec, session_id, folder, origin, data, config)
        parent = replace(parent, spec_text=spec_text, spec_filename=spec_filename)
        run = RunLifecycle.start(
            spec.tracking_uri(), spec.experiment_name, parent, stream, folder, noun="session"
        )
    view = LiveView(stream, tty)
    journal = Journal(folder / JOURNAL)
    record = read_session(folder) if resume else None
    trainer: Trainer | None = None
    outcome: PandaOutcome | None = None
    model_uri: str | None = None
    if keys if keys is not None else (sys.stdin.isatty() and view.tty):
        from orchestrator.panda.keys import HELP, listen

        listen(folder)
        print(f"caviar: changes from here: {HELP}", file=stream, flush=True)

    def ending(status: str) -> Ending:
        """The view, journal and trainer released; a finished session's totals logged."""
        view.close()
        journal.close()
        if trainer is not None:
            trainer.close()
        if status != FINISHED or outcome is None:
            return Ending()
        metrics, tags = _summary(outcome, spec.objective.metric, spec.mode)
        if model_uri:
            tags[layout.MODEL_URI] = model_uri
        return Ending(summary=(metrics, tags))

    with run.running(ending):
        _announce(spec, run, stream, resume)  # the run id, before Ray's start
        trainer = make_trainer(spec, data, spec_dir)
        session = PandaSession(
            spec,
            folder,
            trainer,
            journal,
            run.tracker,
            lineage=record.lineage if record else None,
            answered=set(record.answers) if record else None,
            on_epoch=view.on_epoch,
            on_event=view.on_event,
            pauses=record.pauses if record else None,
            schedule=load_schedule(folder),
        )
        if record is not None:
            session.resume()
        elif origin is not None:
            session.start(config, origin.checkpoint, origin.start_epoch)
        else:
            session.start(config)
        outcome = session.run()
        if outcome.status != "diverged":
            model_uri = _log_final_model(spec, data, trainer.snapshot(), run, stream)
    if run.status == KILLED or outcome is None:
        shown = spec_filename if spec_dir is None else str(spec_dir / spec_filename)
        raise SweepInterrupted(
            f"panda session {run.run_id} interrupted (MLflow run {run.parent_run_id} "
            f"marked KILLED).\ncaviar: continue it with:  caviar panda {shown} --resume"
        )
    return PandaResult(
        spec.name,
        run.run_id,
        folder,
        run.parent_run_id,
        run.tracker.experiment,
        run.tracker.uri,
        outcome,
        spec.objective.metric,
        spec.mode,
        time.monotonic() - started,
        model_uri,
        origin.replay_of if origin else None,
        origin.target if origin else None,
    )


SCHEDULE_FILE = "replay.json"  # --replay: {epoch: changes}, for a resumed session too


def save_schedule(folder: Path, schedule: Mapping[int, Mapping[str, Any]]) -> None:
    body = {str(epoch): dict(changes) for epoch, changes in sorted(schedule.items())}
    (folder / SCHEDULE_FILE).write_text(json.dumps(body, indent=1), encoding="utf-8")


def load_schedule(folder: Path) -> dict[int, dict[str, Any]] | None:
    """A replay's schedule; None for a session that is not a replay."""
    path = folder / SCHEDULE_FILE
    if not path.is_file():
        return None
    return {int(epoch): dict(changes) for epoch, changes in json.loads(path.read_text()).items()}


def _log_final_model(
    spec: SweepSpec, data: Any, snapshot: bytes, run: RunLifecycle, stream: TextIO
) -> str | None:
    """The session's final model on its parent run, as a sweep logs its best one (loadable
    with ``mlflow.pytorch.load_model``). A failure costs the model, never the session."""
    from orchestrator.panda.trainer import decode
    from trainables import TensorSplits, get_trainable

    try:
        state = decode(snapshot)
        tensors = TensorSplits.from_splits(data, "cpu")
        session = get_trainable(spec.trainable).make_session(state["config"], tensors, "cpu")
        session.load_state_dict(state["session"])
        return run.log_model(session.model.eval(), data.x_test[:5])
    except Exception as error:  # everything trained is logged; the model is the extra
        print(f"caviar: warning: the final model could not be logged ({error})", file=stream)
        return None


def _pick_for_resume(root: Path, spec: SweepSpec) -> tuple[Path, SweepMarker]:
    from orchestrator.store.lifecycle import discard_unstarted

    discarded = discard_unstarted(root)
    pending = unfinished(root)
    if not pending:
        never = f" (session {discarded[0]} was stopped before it began)" if discarded else ""
        raise PandaError(
            f"nothing to resume: no unfinished panda session under {root}{never}; start one "
            "without --resume"
        )
    folder, marker = pending[0]
    if marker.spec_hash != spec.spec_hash():
        raise PandaError(
            f"the spec changed since panda session {marker.sweep_id} started; a resumed "
            "session must run the same spec"
        )
    return folder, marker


def _announce(spec: SweepSpec, run: RunLifecycle, stream: TextIO, resume: bool) -> None:
    verb = "resuming" if resume else "panda"
    run_id = run.parent_run_id
    print(
        f"caviar: {verb} {spec.name} ({run.run_id}): MLflow run {run_id} in experiment "
        f"{run.tracker.experiment!r} at {run.tracker.uri}\n"
        f"caviar: from another shell:  caviar panda adjust {run_id} learning_rate=...  "
        f"[--rewind-to EPOCH]\n"
        f"caviar:                      caviar panda pause|resume|stop {run_id}",
        file=stream,
        flush=True,
    )


def _new_parent(
    spec: SweepSpec,
    session_id: str,
    folder: Path,
    origin: Origin | None,
    data: Any,
    config: Mapping[str, Any],
) -> NewParent:
    """A new session's parent run, but for its spec's text and file name (the caller's)."""
    from orchestrator.spec.data import class_names_param
    from orchestrator.store.lifecycle import NewParent

    from_run = {layout.PANDA_FROM_RUN: origin.from_run} if origin else {}
    if origin is not None and origin.replay_of is not None:
        from_run = {layout.PANDA_REPLAY_OF: origin.from_run}
    return NewParent(
        kind=layout.PANDA,
        run_id=session_id,
        run_name=f"{spec.name}-panda-{session_id}",
        spec_hash=spec.spec_hash(),
        spec_text="",
        spec_filename="",
        tags={
            **from_run,
            layout.MODE: layout.PANDA,
            layout.TRAINABLE: spec.trainable,
            layout.PANDA_DIR: str(folder),
        },
        params=_session_params(spec, data, config, class_names_param(data)),
    )


def _session_params(
    spec: SweepSpec, data: Any, config: Mapping[str, Any], classes: str
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "data.source": spec.data.source,
        "data.sizes": data.sizes(),
        "data.classes": classes,
        "trainable": spec.trainable,
        "objective": f"{spec.mode} {spec.objective.metric}",
        "panda.keep": spec.panda.keep,
        "panda.keep_for": spec.panda.keep_for,
        "resources.cpus_per_trial": spec.resources.cpus_per_trial,
        "resources.gpus_per_trial": spec.resources.gpus_per_trial,
    }
    for name, rule in spec.panda.rules.model_dump(exclude_none=True).items():
        params[f"panda.rules.{name}"] = rule
    for name, value in config.items():
        params[f"start.{name}"] = value
    return params


def _summary(outcome: PandaOutcome, metric: str, mode: str) -> tuple[dict[str, float], dict]:
    branch = outcome.lineage.branch()
    metrics: dict[str, float] = {
        "segments": float(len(outcome.lineage.segments)),
        "epochs_trained": float(
            sum(len(s.trial.history) for s in outcome.lineage.segments.values())
        ),
        "final_epoch": float(outcome.lineage.epoch),
    }
    best = best_epoch(branch, metric, mode)
    if best is not None:
        metrics[f"best_{metric}"] = float(best[metric])
        metrics["best_epoch"] = float(best["epoch"])
    if outcome.test_accuracy is not None:
        metrics["test_accuracy"] = outcome.test_accuracy
    if outcome.test_loss is not None:
        metrics["test_loss"] = outcome.test_loss
    tags = {layout.PANDA_STATUS: outcome.status}
    if outcome.pauses:
        from orchestrator.panda.session_layout import pauses_tag

        metrics["pauses"] = float(len(outcome.pauses))
        metrics["paused_seconds"] = float(sum(p.seconds or 0.0 for p in outcome.pauses))
        tags[layout.PANDA_PAUSES] = pauses_tag(outcome.pauses)
    return metrics, tags


def best_epoch(branch: Sequence[Mapping[str, Any]], metric: str, mode: str) -> Mapping | None:
    scored = [e for e in branch if not e.get("diverged") and e.get(metric) is not None]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda e: float(e[metric]))


# --- another shell: adjust, pause, resume and stop -----------------------------------------


def locate(run_id: str, tracking_uri: str | None = None) -> tuple[Path, SweepMarker]:
    """The folder and marker of the panda session whose MLflow parent run is ``run_id``:
    under ./caviar_runs or $CAVIAR_STORAGE_PATH, else where the run's tag says."""
    found = find_session(run_id, session_roots())
    if found is not None:
        return found
    from orchestrator.store.panda_runs import panda_folder

    folder = panda_folder(run_id, tracking_uri)
    marker = read_marker(folder) if folder is not None else None
    if folder is None or marker is None:
        raise PandaError(
            f"no panda session with MLflow run id {run_id!r} (looked under "
            f"{', '.join(str(r) for r in session_roots())} and in the MLflow store); "
            "pass the run id `caviar panda` printed when it started"
        )
    return folder, marker


def adjust_command(
    run_id: str,
    changes: Mapping[str, Any],
    rewind_to: int | None,
    wait_s: float = 120.0,
    tracking_uri: str | None = None,
    stream: TextIO | None = None,
) -> int:
    """Check the changes against the session as it stands, send them, wait for the answer."""
    from orchestrator.panda.checkpoints import rewind_origin
    from orchestrator.spec import parse_spec_text
    from trainables import get_trainable

    if not changes and rewind_to is None:
        raise PandaError("nothing to change: give NAME=VALUE pairs and/or --rewind-to EPOCH")

    command = Command("adjust", dict(changes), rewind_to)

    def check(folder: Path, marker: SweepMarker) -> None:
        lineage = read_session(folder).lineage
        if not lineage.segments:
            raise PandaError(f"panda session {marker.sweep_id} has not started training yet")
        spec = _session_spec(folder, marker, parse_spec_text)
        base = lineage.current.config
        if rewind_to is None:
            check_changes(spec.trainable, get_trainable(spec.trainable).config_model, base, changes)
            return
        # pinned from here until the session answers: it may train epochs before reading this
        store = CheckpointStore.for_spec(folder / "checkpoints", spec.panda)
        base = rewind_origin(lineage, store, rewind_to, pin=command.id).config
        try:
            check_changes(spec.trainable, get_trainable(spec.trainable).config_model, base, changes)
        except PandaError:
            store.unpin(command.id)
            raise

    return _deliver(run_id, command, check, wait_s, tracking_uri, stream or sys.stdout)


def stop_command(
    run_id: str,
    wait_s: float = 120.0,
    tracking_uri: str | None = None,
    stream: TextIO | None = None,
    kind: str = "stop",
) -> int:
    """``stop``, ``pause`` or ``resume`` (``kind``): nothing to check before sending."""
    return _deliver(run_id, Command(kind), None, wait_s, tracking_uri, stream or sys.stdout)


def _deliver(
    run_id: str,
    command: Command,
    check: Callable[[Path, SweepMarker], None] | None,
    wait_s: float,
    tracking_uri: str | None,
    stream: TextIO,
) -> int:
    """Find the running session, check the command against it, send it, print the answer."""
    folder, marker = locate(run_id, tracking_uri)
    _require_running(marker)
    if check is not None:
        check(folder, marker)
    send(folder, command)
    return _report_answer(folder, command, wait_s, stream, run_id)


def _require_running(marker: SweepMarker) -> None:
    if marker.status != "running":
        raise PandaError(
            f"panda session {marker.sweep_id} is {marker.status}; nothing to change "
            "(an interrupted one continues with `caviar panda SPEC --resume`)"
        )


def _session_spec(folder: Path, marker: SweepMarker, parse: Callable[..., SweepSpec]) -> SweepSpec:
    """The spec the session runs (kept in its folder when it started)."""
    path = folder / "spec.yaml"
    if not path.is_file():
        raise PandaError(f"panda session {marker.sweep_id} keeps no spec in {folder}")
    spec_dir = Path((folder / "spec_dir").read_text("utf-8").strip())
    return parse(path.read_text(encoding="utf-8"), str(path), spec_dir=spec_dir)


def _report_answer(
    folder: Path, command: Command, wait_s: float, stream: TextIO, run_id: str
) -> int:
    answer = _wait(folder / JOURNAL, command.id, wait_s)
    if answer is None:
        print(
            f"caviar: sent; the session applies it at its next epoch boundary (no answer "
            f"within {wait_s:g} s)",
            file=stream,
        )
        return 0
    if answer.get("status") == "refused":
        raise PandaError(f"the session refused it: {answer.get('reason')}")
    epoch = answer.get("epoch")
    if command.kind == "stop":
        print(f"caviar: stopped at epoch {epoch}", file=stream)
    elif command.kind == "pause":
        was = "" if answer.get("changed") else "already "
        print(
            f"caviar: {was}paused at epoch {epoch}; caviar panda resume {run_id} to go on",
            file=stream,
        )
    elif command.kind == "resume":
        if answer.get("changed"):
            print(f"caviar: resumed at epoch {epoch}", file=stream)
        else:
            print(f"caviar: not paused (training, at epoch {epoch}); nothing to do", file=stream)
    else:
        print(
            f"caviar: applied: segment {answer.get('segment')} trains from epoch "
            f"{answer.get('epoch')}",
            file=stream,
        )
    return 0
