"""One panda session: train one model epoch by epoch, and change it at epoch boundaries.

The loop, at each boundary (before each epoch):

1. commands from other shells (``control.Inbox``), oldest first: adjust, rewind, pause,
   resume, stop. A paused session stays at the boundary, answering commands as they come
   (an adjustment or a rewind made while paused is what trains on resume), until a resume or
   a stop; ``panda.min_epoch_time`` keeps it there the same way until that much time has
   passed since the last epoch began;
2. the babysitting rules (``rules.decide``) on the current branch;
3. one epoch; its result is journaled, its checkpoint saved (then those outside
   ``panda.keep``/``keep_for`` pruned), its metrics queued for MLflow on the session's epoch
   axis, and the live view redrawn.

Every change, a person's or a rule's, goes through :meth:`PandaSession.apply`: it ends the
current segment and starts a new one (its own journal line and MLflow run), so what happened
and why is recorded the same way whoever asked. Changes happen only between epochs and a
rewind loads the exact checkpoint, so the same changes at the same epochs give bit-identical
curves.

Order of writes per epoch (a kill may stop between any two): checkpoint file, journal result,
journal checkpoint, MLflow. The journal is the truth on resume: the branch continues from the
newest journaled checkpoint, and MLflow is sent what it lacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.panda.changes import PandaError, check_changes
from orchestrator.panda.checkpoints import CheckpointStore, rewind_origin
from orchestrator.panda.control import Command, Inbox
from orchestrator.panda.lineage import Lineage, Pause, Segment
from orchestrator.panda.rules import Action, decide
from orchestrator.panda.session_layout import epoch_metrics, pauses_tag, segment_tags
from orchestrator.spec import SweepSpec
from orchestrator.store import layout
from orchestrator.store.journal import Journal
from orchestrator.trials import Trial, TrialState, with_epoch

if TYPE_CHECKING:  # neither torch nor MLflow to read a session back (`caviar panda adjust`)
    from orchestrator.panda.trainer import Trainer
    from orchestrator.store.tracking import SweepTracker

POLL_S = 0.2  # how often a paused (or pacing) session reads its commands


@dataclass
class SessionEvent:
    """Something the live view and the summary show besides epochs."""

    epoch: int
    text: str


@dataclass
class PandaOutcome:
    """How the session ended and what it trained."""

    status: str  # budget | stopped | rule:stop | diverged
    lineage: Lineage
    events: list[SessionEvent] = field(default_factory=list)
    pauses: list[Pause] = field(default_factory=list)
    test_loss: float | None = None
    test_accuracy: float | None = None


class PandaSession:
    """The session's loop over a trainer; Ray-free (the trainer may be a Ray actor's proxy)."""

    def __init__(
        self,
        spec: SweepSpec,
        folder: Path,
        trainer: Trainer,
        journal: Journal,
        tracker: SweepTracker | None,
        lineage: Lineage | None = None,
        answered: set[str] | None = None,
        on_epoch: Callable[[PandaSession, dict[str, Any]], None] | None = None,
        on_event: Callable[[PandaSession, SessionEvent], None] | None = None,
        pauses: list[Pause] | None = None,
        schedule: Mapping[int, Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self.folder = folder
        self.trainer = trainer
        self.journal = journal
        self.tracker = tracker
        self.lineage = lineage or Lineage()
        self.store = CheckpointStore.for_spec(folder / "checkpoints", spec.panda)
        self.inbox = Inbox(folder, answered or ())
        self.metric = spec.objective.metric
        self.mode = spec.mode
        self.events: list[SessionEvent] = []
        self.pauses: list[Pause] = list(pauses or [])
        # A replay's changes by epoch (``panda/replay.py``): made at those epochs, no rules.
        self.schedule = {int(e): dict(c) for e, c in (schedule or {}).items()}
        self.replaying = schedule is not None
        self._on_epoch = on_epoch
        self._on_event = on_event
        self._clock = clock
        self._sleep = sleep
        self._paused_since: float | None = None  # on the clock; None while training
        self._paused_total = 0.0
        self._epoch_began: float | None = None
        # When each checkpoint was saved, in training time (the budget of panda.keep_for).
        self._saved_at: dict[tuple[int, int], float] = {}
        from trainables import get_trainable

        self._config_model = get_trainable(spec.trainable).config_model

    # --- starting ---------------------------------------------------------------------------

    def start(
        self, config: dict[str, Any], checkpoint: bytes | None = None, start_epoch: int = 0
    ) -> None:
        """A new session: its first segment (from ``checkpoint`` at ``start_epoch`` if given)."""
        reason = "continue" if checkpoint is not None else "start"
        self.trainer.start(config, checkpoint)
        segment = self._open_segment(None, start_epoch, config, reason, "caviar", {})
        self.store.save(segment.index, start_epoch, self.trainer.snapshot())
        self._saved_at[(segment.index, start_epoch)] = self.training_time()
        if self.spec.panda.start_paused:
            self._pause("panda.start_paused")

    def resume(self) -> None:
        """Continue a killed or interrupted session: its branch from the newest checkpoint it
        journaled (epochs after it are trained again, with the same values)."""
        current = self.lineage.current
        keys = [k for k in self.lineage.checkpoint_keys() if self.store.has(*k)]
        if not keys:
            raise PandaError(f"session in {self.folder} has no checkpoint left to resume from")
        segment_index, epoch = keys[-1]
        current.trial.history = [e for e in current.trial.history if int(e["epoch"]) <= epoch]
        # Saved before the kill: their age starts now (kept a full keep_for, never less).
        self._saved_at.update(dict.fromkeys(keys, self.training_time()))
        if self.pauses and self.pauses[-1].seconds is None:  # killed while paused
            self.pauses[-1].seconds = 0.0
        self.trainer.start(current.config, self.store.load(segment_index, epoch))
        if self.tracker is not None:
            self._replay_to_tracker(self.tracker)
        self._event(f"resumed at epoch {epoch} (segment {current.index})")

    def _replay_to_tracker(self, tracker: SweepTracker) -> None:
        """Send MLflow what the killed session journaled but had not delivered: runs, epochs
        (the tracker skips those a run holds), ends. Open segments' runs are reopened."""
        for segment in sorted(self.lineage.segments.values(), key=lambda s: s.index):
            key = str(segment.index)
            if tracker.child_run_id(key) is None or not segment.trial.state.ended:
                tracker.trial_started(
                    key,
                    run_name=f"segment-{segment.index:02d}",
                    params=segment.config,
                    tags=segment_tags(segment, tracker, self.lineage),
                    started_at=segment.trial.started_at,
                )
            for entry in segment.trial.history:
                tracker.trial_metrics(
                    key, epoch_metrics(entry), int(entry["epoch"]), entry.get("ended_at")
                )
            if segment.trial.state.ended:
                self._tracker_end(segment)

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> PandaOutcome:
        """Train until the budget, a stop (person or rule) or an unrescued divergence."""
        while True:
            status = self._boundary()
            if status is not None:
                break
            self._train_epoch()
        self._resume("the end", quiet=True)  # stopped while paused: the pause ends with it
        self._end_segment(self.lineage.current, status)
        outcome = PandaOutcome(status, self.lineage, self.events, self.pauses)
        if status != "diverged":
            outcome.test_loss, outcome.test_accuracy = self.trainer.test()
        return outcome

    def _boundary(self) -> str | None:
        """Commands (while paused or pacing: as they come), then rules; the session's end
        status if it ends here."""
        while True:
            for command in self.inbox.read():
                stopped = self._answer(command)
                if stopped:
                    return "stopped"
            wait = POLL_S if self.paused else 0.0 if self._at_budget() else self._pace_left()
            if wait <= 0:
                break
            self._sleep(min(POLL_S, wait))
        if self.replaying:
            self._follow_schedule()
            return self._ended_on_its_own()
        branch = self.lineage.branch()
        current = self.lineage.current
        action = decide(
            self.spec.panda.rules,
            branch,
            self.metric,
            self.mode,
            current.config,
            current.start_epoch,
            self._rule_rewinds(),
        )
        if action is not None:
            if action.kind == "stop":
                self._event(f"{action.reason} ({action.by})")
                return action.by
            try:
                self.apply(action)
            except PandaError as error:  # e.g. a trainable whose learning rate is fixed
                self._event(f"{action.by} could not act: {error}")
        return self._ended_on_its_own()

    def _follow_schedule(self) -> None:
        """A replay: the changes scheduled for this epoch, made once (a resumed session that
        trains the epoch again finds its segment already started there)."""
        epoch = self.lineage.epoch
        changes = self.schedule.get(epoch)
        current = self.lineage.current
        if changes and not (current.start_epoch == epoch and current.by == "replay"):
            self.apply(Action("adjust", "replay", "the PBT line's next values", changes))

    def _ended_on_its_own(self) -> str | None:
        branch = self.lineage.branch()
        if branch and branch[-1].get("diverged"):
            return "diverged"
        if self._at_budget():
            return "budget"
        return None

    def _at_budget(self) -> bool:
        return self.lineage.epoch >= int(self.lineage.current.config.get("epochs", 0))

    def _answer(self, command: Command) -> bool:
        """Apply a person's command or journal why not; True if it stops the session."""
        try:
            return self._apply_command(command)
        finally:
            self.store.unpin(command.id)

    def _apply_command(self, command: Command) -> bool:
        epoch = self.lineage.epoch
        if command.kind == "stop":
            self.journal.append("command", id=command.id, status="applied", epoch=epoch)
            self._event("stopped by a person")
            return True
        if command.kind in ("pause", "resume", "toggle"):
            kind = command.kind
            if kind == "toggle":  # the session's own terminal: p
                kind = "resume" if self.paused else "pause"
            changed = self._pause(command.by) if kind == "pause" else self._resume(command.by)
            self.journal.append(
                "command", id=command.id, status="applied", epoch=epoch, kind=kind, changed=changed
            )
            return False
        if command.kind != "adjust":
            reason = f"no command {command.kind!r} (adjust, pause, resume, stop)"
            self.journal.append(
                "command", id=command.id, status="refused", epoch=epoch, reason=reason
            )
            self._event(f"refused a command: {reason}")
            return False
        try:
            action = Action(
                "rewind" if command.rewind_to is not None else "adjust",
                command.by,
                "",
                dict(command.changes),
                command.rewind_to,
            )
            segment = self.apply(action)
        except PandaError as error:
            self.journal.append(
                "command", id=command.id, status="refused", epoch=epoch, reason=str(error)
            )
            self._event(f"refused a command: {error}")
            return False
        self.journal.append(
            "command",
            id=command.id,
            status="applied",
            epoch=segment.start_epoch,
            segment=segment.index,
        )
        return False

    def apply(self, action: Action) -> Segment:
        """Start the segment ``action`` asks for (checked first: a refusal changes nothing)."""
        current = self.lineage.current
        at = self.lineage.epoch
        if action.kind == "rewind":
            assert action.rewind_to is not None
            origin = rewind_origin(self.lineage, self.store, action.rewind_to)
            config = check_changes(
                self.spec.trainable, self._config_model, origin.config, action.changes
            )
            data = self.store.load(origin.index, action.rewind_to)
            self._end_segment(current, "rewind")
            self.trainer.start(config, data)
            segment = self._open_segment(
                origin.index, action.rewind_to, config, "rewind", action.by, action.changes
            )
        else:
            config = check_changes(
                self.spec.trainable, self._config_model, current.config, action.changes
            )
            self.trainer.adjust(action.changes)
            self._end_segment(current, "adjust")
            segment = self._open_segment(
                current.index, current.last_epoch, config, "adjust", action.by, action.changes
            )
        shown = " ".join(f"{k}={_short(v)}" for k, v in action.changes.items())
        where = f"back to epoch {action.rewind_to}, " if action.kind == "rewind" else ""
        why = f": {action.reason}" if action.reason else ""
        self._event(
            f"{where}{shown or 'no change'} by {action.by}{why} -> segment {segment.index}", at
        )
        return segment

    # --- pauses -----------------------------------------------------------------------------

    def training_time(self) -> float:
        """The session's clock less the time it spent paused (what ages a checkpoint)."""
        now = self._clock()
        paused = self._paused_total
        if self._paused_since is not None:
            paused += now - self._paused_since
        return now - paused

    def _pace_left(self) -> float:
        pace = self.spec.panda.min_epoch_time
        if pace <= 0 or self._epoch_began is None:
            return 0.0
        return pace - (self._clock() - self._epoch_began)

    def _pause(self, by: str) -> bool:
        """Hold the session at this boundary; False if it already was."""
        if self.paused:
            return False
        self._paused_since = self._clock()
        epoch = self.lineage.epoch
        self.pauses.append(Pause(epoch, by))
        self.journal.append("pause", epoch=epoch, by=by)
        self._tag_pauses()
        run_id = self.tracker.parent_run_id if self.tracker is not None else None
        how = f"caviar panda resume {run_id}" if run_id else "caviar panda resume RUN_ID"
        self._event(f"paused by {by}; {how} to go on")
        return True

    def _resume(self, by: str, quiet: bool = False) -> bool:
        """Train on from this boundary; False if the session was not paused."""
        if self._paused_since is None:
            return False
        seconds = self._clock() - self._paused_since
        self._paused_total += seconds
        self._paused_since = None
        self.pauses[-1].seconds = round(seconds, 3)
        self.journal.append(
            "resume", epoch=self.lineage.epoch, by=by, paused_s=self.pauses[-1].seconds
        )
        self._tag_pauses()
        if not quiet:
            self._event(f"resumed by {by} after {seconds:.1f} s paused")
        return True

    @property
    def paused(self) -> bool:
        return self._paused_since is not None

    def _tag_pauses(self) -> None:
        """The pauses on the session's parent run (tag ``caviar.panda.pauses``, JSON)."""
        if self.tracker is None:
            return
        shown = pauses_tag(self.pauses)
        self.tracker.parent_update(tags={layout.PANDA_PAUSES: shown})

    def _rule_rewinds(self) -> int:
        return sum(1 for s in self.lineage.segments.values() if s.by == "rule:divergence")

    def _train_epoch(self) -> None:
        segment = self.lineage.current
        self._epoch_began = self._clock()
        result = self.trainer.step()
        epoch = int(result["epoch"])
        result.setdefault("ended_at", time.time())
        segment.trial.history = with_epoch(segment.trial.history, result)
        path = self.store.save(segment.index, epoch, self.trainer.snapshot())
        now = self.training_time()
        self._saved_at[(segment.index, epoch)] = now
        self.journal.append("result", i=segment.index, r=result)
        self.journal.append("checkpoint", i=segment.index, path=str(path))
        segment.trial.checkpoint = str(path)
        branch_keys = self.lineage.checkpoint_keys()
        self.store.prune(branch_keys, self._saved_at, now)
        self._saved_at = {k: self._saved_at[k] for k in branch_keys if k in self._saved_at}
        if self.tracker is not None:
            metrics = epoch_metrics(result)
            self.tracker.trial_metrics(str(segment.index), metrics, epoch, result["ended_at"])
        if self._on_epoch is not None:
            self._on_epoch(self, result)

    # --- segments ---------------------------------------------------------------------------

    def _open_segment(
        self,
        parent: int | None,
        start_epoch: int,
        config: dict[str, Any],
        reason: str,
        by: str,
        changes: dict[str, Any],
    ) -> Segment:
        index = max(self.lineage.segments, default=-1) + 1
        trial = Trial(index, dict(config), trial_id=f"segment-{index}", started_at=time.time())
        segment = Segment(trial, parent, start_epoch, reason, by, dict(changes))
        self.lineage.add(segment)
        self.journal.append(
            "trial",
            i=index,
            round=1,
            id=trial.trial_id,
            config=config,
            parent=parent,
            start=start_epoch,
            reason=reason,
            by=by,
            changes=changes,
        )
        if self.tracker is not None:
            if parent is not None:
                self.tracker.flush()  # the parent segment's run id, for the new one's tags
            self.tracker.trial_started(
                str(index),
                run_name=f"segment-{index:02d}",
                params=config,
                tags=segment_tags(segment, self.tracker, self.lineage),
                started_at=trial.started_at,
            )
        return segment

    def _end_segment(self, segment: Segment, ended_by: str) -> None:
        if segment.trial.state.ended:
            return
        diverged = bool(segment.trial.last.get("diverged"))
        segment.trial.state = (
            TrialState.DIVERGED
            if diverged
            else TrialState.COMPLETED
            if ended_by in ("budget", "adjust", "rewind")
            else TrialState.STOPPED_EARLY
        )
        segment.ended_by = ended_by
        segment.trial.ended_at = time.time()
        self.journal.append(
            "end", i=segment.index, outcome=str(segment.trial.state), ended_by=ended_by
        )
        self._tracker_end(segment)

    def _tracker_end(self, segment: Segment) -> None:
        if self.tracker is None:
            return
        tags = {
            layout.OUTCOME: str(segment.trial.state),
            layout.LAST_EPOCH: str(segment.last_epoch),
            layout.PANDA_ENDED_BY: str(segment.ended_by),
        }
        status = "FAILED" if segment.trial.state is TrialState.DIVERGED else "FINISHED"
        self.tracker.trial_ended(str(segment.index), tags, status, segment.trial.ended_at)

    def _event(self, text: str, epoch: int | None = None) -> None:
        if epoch is None:
            epoch = self.lineage.epoch if self.lineage.segments else 0
        event = SessionEvent(epoch, text)
        self.events.append(event)
        if self._on_event is not None:
            self._on_event(self, event)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
