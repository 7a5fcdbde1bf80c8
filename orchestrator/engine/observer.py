"""The Ray Tune callback that turns trial events into records, MLflow writes and progress.

It runs on the driver, in Tune's event loop, so everything it does must be cheap: it appends a
line to the sweep's journal, updates in-memory records, queues MLflow writes for the tracker's
background thread, and redraws the progress line at most a few times a second.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator.engine import live
from orchestrator.engine.disk_space import SpaceCheck, error_summary, failed_for_space
from orchestrator.engine.progress import ProgressLine
from orchestrator.engine.searcher import RoundSearcher
from orchestrator.engine.stalls import StallWatch
from orchestrator.errors import CaviarError
from orchestrator.search.best_so_far import BestSoFar
from orchestrator.store import layout
from orchestrator.store.journal import RESUME_FROM, Journal, JournalWriteError
from orchestrator.store.tracking import SweepTracker
from orchestrator.trials import (
    EPOCH_RESULTS,
    MEMBER_LAST,
    MEMBER_RESULTS,
    TRIAL_INDEX,
    Trial,
    TrialState,
    classify_finished,
    trial_key,
    with_epoch,
)
from trainables.train import RESULT_KEYS

# What a trial reports that is a per-epoch metric (everything numeric we own, nothing of Ray's).
EPOCH_METRICS = tuple(k for k in RESULT_KEYS if k not in ("epoch", "diverged"))
RECORDED_KEYS = (*EPOCH_METRICS, "epoch", "diverged", "node_id", "worker_pid", "ended_at")


class _Halted(Exception):
    """Raised inside a callback once the sweep is halted; :func:`_unless_halted` ends it."""


def _unless_halted(method: Any) -> Any:
    """A Tune event is ignored once the sweep is halted: what cannot be journaled must not
    reach MLflow or the records either."""

    def guarded(self: SweepObserver, *args: Any, **kwargs: Any) -> None:
        if self.halted() is not None:
            return
        try:
            method(self, *args, **kwargs)
        except _Halted:
            return

    guarded.__name__ = method.__name__
    guarded.__doc__ = method.__doc__
    return guarded


class SweepObserver(Callback):
    """Keeps a :class:`Trial` per trial and forwards events to journal, MLflow, progress.

    Records are keyed by the trial's caviar index, which a trial keeps when a resumed sweep
    runs it again under a new Ray trial id. Every event is journaled before it is queued for
    MLflow, so the journal always holds at least what MLflow holds.

    A fused pack's Tune trial is several records, one per member, each started, fed and
    ended as its own trial; a member ends when it leaves its pack (stopped by the scheduler
    or diverged), or, once it has trained its last epoch, with its pack: after the pack's
    final checkpoint is journaled. A state is journaled only after what it points to is
    durable, so a kill between two events never leaves an ended trial without its checkpoint.

    Something that stops the whole sweep (its journal cannot be written, a worker's disk is
    full) is kept in :attr:`fatal`; from then on no event is journaled or recorded (the
    trials still running stay unended, for ``--resume``), and the sweep's stopper ends Tune.
    """

    def __init__(
        self,
        sweep_id: str,
        searcher: RoundSearcher,
        budget: int,
        fixed_names: set[str],
        journal: Journal | None = None,
        metrics: tuple[str, ...] = (),
        left_at: Mapping[int, int] | None = None,
        epoch_timeout_s: float | None = None,
        timeouts_dir: Path | None = None,
        storage_dir: Path | None = None,
    ) -> None:
        self.sweep_id = sweep_id
        self.searcher = searcher
        self.budget = budget
        self.fixed_names = fixed_names
        self.journal = journal
        # Logged per epoch: caviar's own, and whatever else the trainable declares.
        self.epoch_metrics = (*EPOCH_METRICS, *(m for m in metrics if m not in EPOCH_METRICS))
        self.recorded_keys = (*RECORDED_KEYS, *(m for m in metrics if m not in RECORDED_KEYS))
        self.records: dict[int, Trial] = {}
        # The scheduler's pack members that left, with the epoch they left at.
        self.left_at: Mapping[int, int] = left_at if left_at is not None else {}
        self._pack_sizes: Counter[int] = Counter()  # members planned per pack
        self.stalls = StallWatch(epoch_timeout_s, timeouts_dir)
        # Where checkpoints and the journal go: a full one halts the sweep.
        self.space = SpaceCheck(storage_dir)
        self.fatal: CaviarError | None = None
        # The search converging, for the parent run (best_so_far.py); not logged while a
        # resumed sweep replays its journal (the killed sweep logged those points).
        self.best_so_far = BestSoFar(searcher.plan.mode, budget)
        self._rounds_logged = 0
        self._replaying = False

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the Tuner; the journal's open file stays here."""
        state = dict(self.__dict__)
        state["journal"] = None
        return state

    @property
    def tracker(self) -> SweepTracker:
        found = live.lookup(self.sweep_id)
        if found is None:
            raise RuntimeError(f"sweep {self.sweep_id} has no live tracker registered")
        return found.tracker

    @property
    def progress(self) -> ProgressLine:
        found = live.lookup(self.sweep_id)
        if found is None:
            raise RuntimeError(f"sweep {self.sweep_id} has no live progress line registered")
        return found.progress

    def setup(self, **info: Any) -> None:
        """Tune starts the experiment: make this copy the live observer."""
        found = live.lookup(self.sweep_id)
        if found is not None:
            found.observer = self

    # --- a resumed sweep: the journal's events, through the same paths as live ones ----

    def replay(self, trials: dict[int, Trial]) -> None:
        """Rebuild the records of a killed sweep, and give MLflow whatever it missed.

        MLflow skips epochs it already has and reopens runs that have not ended, so writes
        the killed process still had queued are delivered now, and nothing is written twice.
        """
        self._replaying = True
        try:
            self._replay(trials)
        finally:
            self._replaying = False
        self._rounds_logged = max((t.round for t in trials.values()), default=0)
        if self.best_so_far.points:  # where the killed sweep's curve stands now
            step, best = self.best_so_far.points[-1]
            self.tracker.parent_metric(layout.BEST_SO_FAR_METRIC, best, step=self.best_so_far.spent)

    def _replay(self, trials: dict[int, Trial]) -> None:
        for trial in sorted(trials.values(), key=lambda t: t.index):
            record = self._start_record(
                trial.index,
                trial.trial_id,
                trial.config,
                trial.round,
                trial.started_at,
                trial.pack,
                self._pack_size(trials, trial.pack),
            )
            for entry in trial.history:
                self._record_result(record, entry)
            record.checkpoint = trial.checkpoint
            if trial.state.ended:
                record.state = trial.state
                record.error = trial.error
                status = "FAILED" if trial.state is TrialState.FAILED else "FINISHED"
                self._end(record, status, trial.ended_at)

    # --- Tune's events -----------------------------------------------------------------

    @_unless_halted
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        members = self.searcher.members_of.get(trial.trial_id)
        if members is not None:
            for index in members:
                self._start_member(index, trial.trial_id)
            return
        index = self.searcher.index_of.get(trial.trial_id)
        if index is None:
            return
        known = self.records.get(index)
        if known is not None:  # restarted, continued after a resume, or unpaused (PBT)
            known.trial_id = trial.trial_id
            self.stalls.restarted(index)
            return
        config = {k: v for k, v in trial.config.items() if k not in (RESUME_FROM, TRIAL_INDEX)}
        planned = self.searcher.trials.get(index)
        round_number = planned.round if planned is not None else 1
        self._journal("trial", i=index, id=trial.trial_id, round=round_number, config=config)
        self._start_record(index, trial.trial_id, config, round_number, time.time())

    def _start_member(self, index: int, trial_id: str) -> None:
        """A pack member starts with its pack (or continues, after a restart or resume)."""
        known = self.records.get(index)
        if known is not None:
            known.trial_id = trial_id
            return
        planned = self.searcher.trials[index]
        pack = planned.pack
        self._journal(
            "trial", i=index, id=trial_id, round=planned.round, config=planned.config, pack=pack
        )
        size = self._pack_size(self.searcher.trials, pack)
        self._start_record(index, trial_id, planned.config, planned.round, time.time(), pack, size)

    def _pack_size(self, trials: Mapping[int, Trial], pack: int | None) -> int:
        """Members planned for ``pack`` (counted again only when a new pack appears)."""
        if pack is None:
            return 1
        sizes = self._pack_sizes
        if pack not in sizes:
            sizes.clear()
            sizes.update(t.pack for t in trials.values() if t.pack is not None)
        return sizes[pack]

    @_unless_halted
    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if MEMBER_RESULTS in result:
            self._pack_result(result)
            return
        record = self._record_of(trial)
        if record is None:
            return
        for epoch in result.get(EPOCH_RESULTS) or [result]:
            entry = {k: epoch[k] for k in self.recorded_keys if k in epoch}
            self._journal("result", i=record.index, r=entry)
            self._record_result(record, entry)

    def _pack_result(self, result: dict) -> None:
        for index, last in result.get(MEMBER_LAST) or ():
            # A member the scheduler stopped: its state was saved when it left the pack.
            record = self.records.get(int(index))
            path = last.get("checkpoint")
            if record is not None and path and record.checkpoint != path:
                record.checkpoint = str(path)
                self._journal("checkpoint", i=record.index, path=record.checkpoint)
        for index, epochs in result[MEMBER_RESULTS]:
            record = self.records.get(int(index))
            if record is None or record.state.ended:
                continue  # a member that left its pack: epochs trained after are not its own
            left_at = self.left_at.get(record.index)
            for epoch in epochs:
                if left_at is not None and int(epoch.get("epoch", 0)) > left_at:
                    break
                entry = {k: epoch[k] for k in self.recorded_keys if k in epoch}
                self._journal("result", i=record.index, r=entry)
                self._record_result(record, entry)
            # A member at its last epoch ends with its pack, after the pack's final
            # checkpoint (on_checkpoint, then on_trial_complete): ending it here would
            # journal its end before the checkpoint that a resume tests it from.
            if left_at is not None or record.last.get("diverged"):
                self._end_member(record)

    def _end_member(self, record: Trial) -> None:
        record.state = classify_finished(record, self.budget)
        self._journal("end", i=record.index, outcome=record.state)
        self._end(record, "FINISHED", time.time())

    def _members(self, trial: Any) -> list[Trial]:
        """The records of a pack's members (none for a trial that is not a pack)."""
        members = self.searcher.members_of.get(trial.trial_id, ())
        return [self.records[i] for i in members if i in self.records]

    @_unless_halted
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        members = self._members(trial)
        if members:
            for member in members:
                if not member.state.ended:
                    self._end_member(member)
            return
        record = self._record_of(trial)
        if record is None:
            return
        record.state = classify_finished(record, self.budget)
        self._journal("end", i=record.index, outcome=record.state)
        self._end(record, "FINISHED", time.time())

    @_unless_halted
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = error_summary(trial)
        if failed_for_space(trial):
            # Not the trial's fault: it stays unended (KILLED in MLflow), for --resume.
            self.halt(self.space.disk_full(error))
            return
        members = self._members(trial)
        if members or trial.trial_id in self.searcher.members_of:
            if not members:  # the pack failed before it started: its members still count
                self.on_trial_start(iteration, trials, trial)
                members = self._members(trial)
            for member in members:
                if not member.state.ended:
                    self._fail(member, self._timed_out(trial, member) or error)
            return
        record = self._record_of(trial)
        if record is None:
            # It failed before it started: its reused actor died while being reset for it.
            # It still counts, and still gets its MLflow run, as a failed trial.
            self.on_trial_start(iteration, trials, trial)
            record = self._record_of(trial)
            if record is None:
                return
        self._fail(record, self._timed_out(trial, record) or error)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune restarts a trial whose worker died (or whose save failed): its silence starts
        over; a failure for lack of space halts the sweep instead of retrying into it."""
        if failed_for_space(trial):
            self.halt(self.space.disk_full(error_summary(trial)))
            return
        for record in self._members(trial) or [self._record_of(trial)]:
            if record is not None:
                self.stalls.restarted(record.index)

    def _timed_out(self, trial: Any, record: Trial) -> str | None:
        return self.stalls.timed_out(trial.trial_id, record.index, record.epochs)

    def _fail(self, record: Trial, error: str) -> None:
        record.state = TrialState.FAILED
        record.error = error
        self._journal("end", i=record.index, outcome=record.state, error=record.error)
        self._end(record, "FAILED", time.time())
        self.progress.note(f"caviar: trial {record.index} failed: {error}")

    @_unless_halted
    def on_checkpoint(
        self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        for record in self._members(trial) or [self._record_of(trial)]:
            if record is not None and not (record.index in self.left_at and record.checkpoint):
                record.checkpoint = str(checkpoint.path)
                self._journal("checkpoint", i=record.index, path=record.checkpoint)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.progress.update(self.records.values())
        for notice in self.stalls.notices():
            self.progress.note(notice)
        full = self.space.full()
        if full is not None:
            self.halt(full)

    # --- shared by live events and replay ----------------------------------------------

    def _record_of(self, trial: Any) -> Trial | None:
        index = self.searcher.index_of.get(trial.trial_id)
        return self.records.get(index) if index is not None else None

    def _start_record(
        self,
        index: int,
        trial_id: str,
        config: dict[str, Any],
        round_number: int,
        started_at: float | None,
        pack: int | None = None,
        pack_size: int = 1,
    ) -> Trial:
        record = Trial(
            index, config, round_number, trial_id=trial_id, started_at=started_at, pack=pack
        )
        self.records[index] = record
        self.stalls.started(index)
        self._note_round(round_number)
        tags = {
            layout.TRIAL_ID: trial_key(self.sweep_id, index),
            layout.RAY_TRIAL_ID: trial_id,  # a pack member's: its pack's
            layout.TRIAL_INDEX: str(index),
            layout.ROUND: str(round_number),
            layout.SAMPLED: ",".join(sorted(k for k in config if k not in self.fixed_names)),
        }
        if pack is not None:
            tags[layout.PACK] = str(pack)
            tags[layout.PACK_SIZE] = str(pack_size)
        self.tracker.trial_started(
            str(index),
            run_name=f"trial-{index:03d}",
            params=config,
            tags=tags,
            started_at=started_at,
        )
        self.progress.update(self.records.values())
        return record

    def _record_result(self, record: Trial, entry: dict[str, Any]) -> None:
        self.stalls.heard(record.index)
        epoch = int(entry.get("epoch", 0))
        known = len(record.history)
        record.history = with_epoch(record.history, entry)
        self.best_so_far.trained(len(record.history) - known)
        record.node_id = entry.get("node_id", record.node_id)
        metrics = {
            k: float(v)
            for k, v in entry.items()
            if k in self.epoch_metrics
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(float(v))
        }
        ended_at = entry.get("ended_at")
        self.tracker.trial_metrics(
            str(record.index), metrics, step=epoch, timestamp=float(ended_at) if ended_at else None
        )
        self.progress.update(self.records.values())

    def _end(self, record: Trial, status: str, ended_at: float | None) -> None:
        self.stalls.ended(record.index)
        record.ended_at = ended_at
        tags = {layout.OUTCOME: str(record.state), layout.LAST_EPOCH: str(record.epochs)}
        if record.node_id:
            tags[layout.NODE_ID] = record.node_id
        if record.error:
            tags[layout.ERROR] = record.error
        found = live.lookup(self.sweep_id)
        if found is not None and found.pbt is not None:  # its copies, in a PBT sweep
            tags.update(found.pbt.end_tags(record))
        self.tracker.trial_ended(str(record.index), tags=tags, status=status, ended_at=ended_at)
        self.progress.update(self.records.values())
        best = self.best_so_far.ended(
            record.epochs,
            record.metric(self.searcher.plan.metric),
            diverged=bool(record.last.get("diverged")) or record.state is TrialState.FAILED,
        )
        if best is not None and not self._replaying:
            self.tracker.parent_metric(
                layout.BEST_SO_FAR_METRIC, best, step=self.best_so_far.spent, timestamp=ended_at
            )

    def _note_round(self, round_number: int) -> None:
        """The first trial of a new round started: mark where on the epochs-spent axis."""
        if round_number > self._rounds_logged and not self._replaying:
            self._rounds_logged = round_number
            self.tracker.parent_metric(
                layout.ROUND_STARTED_METRIC, round_number, step=self.best_so_far.spent
            )

    def _journal(self, event: str, **fields: Any) -> None:
        if self.halted() is not None:
            raise _Halted
        if self.journal is not None:
            try:
                self.journal.append(event, **fields)
            except JournalWriteError as error:
                self.halt(error)
                raise _Halted from None

    def halted(self) -> CaviarError | None:
        """Why the sweep must stop, if it must: what halted it here, or its journal's failed
        write (the scheduler journals too)."""
        if self.fatal is None and self.journal is not None and self.journal.failure is not None:
            self.fatal = self.journal.failure
        return self.fatal

    def halt(self, error: CaviarError) -> None:
        """Stop the sweep for ``error`` (the first one is kept): nothing more is recorded."""
        if self.fatal is None:
            self.fatal = error
