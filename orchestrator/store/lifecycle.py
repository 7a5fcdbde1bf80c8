"""One caviar run's MLflow parent, from its opening to its end: :class:`RunLifecycle`.

A sweep (``engine/run.py``), a panda session (``panda/command.py``) and a revisit
(``panda/revisit.py``) are each one parent run with nested children. They share this path,
as Optuna's trials share ``_run_trial`` and MLflow's runs share ``start_run``:

1. open the parent (new: stamped with its kind, id and spec hash, the spec and params logged)
   or reopen an interrupted one. A new run's folder is marked ``starting`` before its parent
   is created, so a kill between the two leaves a marker that finds the orphan parent, and
   :func:`discard_unstarted` deletes it before the name is run again;
2. mark the run ``running`` on disk (its folder's marker, ``store/markers.py``), where the
   run keeps a folder;
3. run the work inside :meth:`RunLifecycle.running`, which maps how the block exits to the
   run's status: FINISHED when it returns, KILLED on an interruption (Ctrl-C, or what the
   caller names: a halted sweep), FAILED on anything else;
4. end the run however the block exited: deliver what the batched writer holds, end the
   children (KILLED ones on an interruption), log the caller's summary, end the parent with
   the status, and mark the folder ``finished``, ``interrupted`` or ``failed``.

Invariants: a run opened here is never left RUNNING by a block that exits, and its marker
always says how it ended, even when MLflow cannot be written (a full disk) on a run that did
not finish. A parent run created for a folder is always named by that folder's marker (as
``starting`` or with its id), whatever moment a kill lands: no orphan parent survives a rerun.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from orchestrator.store import layout
from orchestrator.store.markers import STARTING, SweepMarker, unfinished, write_marker
from orchestrator.store.tracking import SweepTracker, model_code_paths

FINISHED, KILLED, FAILED = "FINISHED", "KILLED", "FAILED"  # MLflow's run statuses
# The marker's word for each status; any other status is "failed".
STATUS_ON_DISK = {FINISHED: "finished", KILLED: "interrupted"}


def discard_unstarted(storage_root: Path) -> list[str]:
    """Discard the runs under ``storage_root`` that were stopped while starting (their marker
    still ``starting``): the parent run MLflow may hold for each is deleted (it has no child
    and no result: nothing ran), then the run's folder. Returns their ids. Safe to repeat: a
    kill inside it leaves a run that is discarded the next time."""
    discarded = []
    for folder, marker in unfinished(storage_root):
        if marker.status != STARTING:
            continue
        SweepTracker(marker.tracking_uri, marker.experiment).discard_parent(marker.sweep_id)
        shutil.rmtree(folder)
        discarded.append(marker.sweep_id)
    return discarded


def new_run_id() -> str:
    """The id a new sweep, panda session or revisit is stamped with: sortable by start."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


@dataclass(frozen=True)
class NewParent:
    """What a new parent run is opened with, beyond the stamp :meth:`RunLifecycle.start` adds
    (``caviar.kind``, ``caviar.sweep_id``, ``caviar.spec_hash``)."""

    kind: str  # layout.SWEEP, layout.PANDA or layout.REVISIT
    run_id: str  # new_run_id(): the sweep's, session's or revisit's id
    run_name: str
    spec_hash: str
    spec_text: str  # logged as the parent's artifact, as the user wrote it
    spec_filename: str
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    results_fields: dict[str, Any] | None = None  # the marker's spec (SweepSpec.results_fields)


@dataclass
class Ending:
    """What a run logs as it ends, decided by its caller once the status is known."""

    # Metrics and tags for the parent; None logs none (a run that did not finish, say).
    summary: tuple[Mapping[str, float], Mapping[str, str]] | None = None
    # Each child's outcome by trial key, to repair what MLflow missed (on FINISHED only).
    child_outcomes: Mapping[str, str] | None = None
    # Runs after the summary, before the parent ends (the sweep's report).
    before_end: Callable[[], None] | None = None


class RunLifecycle:
    """One parent run and its folder's marker; :meth:`running` ends both.

    Build one with :meth:`start` (a new run) or :meth:`reopen` (an interrupted one); either
    marks the run's folder (where it keeps one) ``running`` before it returns, so a kill from
    then on leaves a run that ``--resume`` finds."""

    def __init__(
        self,
        tracker: SweepTracker,
        folder: Path | None,
        marker: SweepMarker,
        stream: TextIO,
        noun: str = "sweep",
    ) -> None:
        self.noun = noun  # what the run is called in warnings: sweep, session
        self.tracker = tracker
        self.folder = folder  # None: the run keeps no folder (a revisit), so no marker
        self.marker = marker
        self.stream = stream  # where a warning at the end is told
        self.status = FAILED  # until the block of running() says otherwise
        self.interruption: BaseException | None = None  # what ended the block as KILLED
        if folder is not None:
            write_marker(folder, dataclasses.replace(marker, status="running"))

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment: str,
        parent: NewParent,
        stream: TextIO,
        folder: Path | None = None,
        noun: str = "sweep",
    ) -> RunLifecycle:
        """A new parent run, stamped; raises TrackingError before any compute if the store
        does not answer or refuses."""
        tracker = SweepTracker(tracking_uri, experiment)
        marker = SweepMarker(
            parent.run_id,
            STARTING,
            "",
            tracker.uri,
            tracker.experiment,
            parent.spec_hash,
            parent.results_fields,
        )
        if folder is not None:
            write_marker(folder, marker)  # before the parent: see discard_unstarted
        stamp = {
            layout.KIND: parent.kind,
            layout.SWEEP_ID: parent.run_id,
            layout.SPEC_HASH: parent.spec_hash,
        }
        parent_run_id = tracker.start_sweep(
            run_name=parent.run_name,
            tags={**stamp, **parent.tags},
            params=parent.params,
            spec_text=parent.spec_text,
            spec_filename=parent.spec_filename,
        )
        marker = dataclasses.replace(marker, parent_run_id=parent_run_id)
        return cls(tracker, folder, marker, stream, noun)

    @classmethod
    def reopen(
        cls, folder: Path, marker: SweepMarker, stream: TextIO, noun: str = "sweep"
    ) -> RunLifecycle:
        """The interrupted run ``marker`` names, written to again where it stopped."""
        tracker = SweepTracker(marker.tracking_uri, marker.experiment)
        tracker.resume_sweep(marker.parent_run_id)
        return cls(tracker, folder, marker, stream, noun)

    @property
    def run_id(self) -> str:
        """The sweep's, session's or revisit's id (not MLflow's)."""
        return self.marker.sweep_id

    @property
    def parent_run_id(self) -> str:
        return self.marker.parent_run_id

    def log_model(self, model: Any, input_example: Any) -> str:
        """The run's final (or best) model on the parent, loadable with
        ``mlflow.pytorch.load_model``; returns its URI."""
        return self.tracker.log_model(model, input_example, model_code_paths(model))

    @contextmanager
    def running(
        self,
        ending: Callable[[str], Ending],
        interruptions: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
    ) -> Iterator[RunLifecycle]:
        """The run's work; ends the run however the block exits.

        An exception in ``interruptions`` ends it KILLED and is not raised again (it is kept
        in :attr:`interruption`: the caller says what it means to the user); any other ends it
        FAILED and is raised. ``ending`` is called with the status first, before anything is
        delivered: the caller releases what it holds and says what to log."""
        try:
            yield self
            self.status = FINISHED
        except interruptions as error:
            self.status = KILLED
            self.interruption = error
        finally:
            self._end(ending)

    def _end(self, ending: Callable[[str], Ending]) -> None:
        status = self.status
        try:
            closing = ending(status)
            self.tracker.close()
            if status == FINISHED and closing.child_outcomes is not None:
                self.tracker.finalize_children(closing.child_outcomes)
            if status == KILLED:
                self.tracker.interrupt_children()
            if closing.summary is not None:
                self.tracker.log_summary(*closing.summary)
            if closing.before_end is not None:
                closing.before_end()
            self.tracker.end_sweep(status)
        except Exception as error:
            if status == FINISHED:
                raise
            # Interrupted or failed: the store may be what failed (a full disk); the marker
            # below must still say so, and a resume delivers what MLflow missed.
            print(f"caviar: warning: MLflow could not be updated ({error})", file=self.stream)
        finally:
            self._mark(STATUS_ON_DISK.get(status, "failed"))

    def _mark(self, status_on_disk: str) -> None:
        if self.folder is None:
            return
        try:
            write_marker(self.folder, dataclasses.replace(self.marker, status=status_on_disk))
        except OSError as error:  # a full disk: the lock shows the driver gone all the same
            note = f"caviar: warning: the {self.noun}'s marker was not updated ({error})"
            print(note, file=self.stream)
