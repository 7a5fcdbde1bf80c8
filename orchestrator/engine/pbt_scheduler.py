"""Tune's view of population-based training: synchronous generations, decided once.

Every trial reports at each boundary epoch (``PbtPlan.boundaries``; the trial actor stops its
step there and saves its state first, ``pbt_files.py``). The scheduler pauses it (Tune saves
a checkpoint and frees the slot) until every trial of the population has reached that epoch or
ended before it; then it decides the generation (``orchestrator.search.pbt.decide``), writes
the decisions, and lets the paused trials run again, each first reading its own decision.

Decided from the scores at one epoch with a generator seeded by that epoch, a generation does
not depend on the order results arrive in. A resumed sweep rebuilds nothing here: the
decisions already written stand, and a trial continued from a checkpoint at an undecided
boundary reports that epoch again (the actor does so when its decision is missing), so the
generation is decided from the same scores as the killed run would have.

A trial that ends before a boundary (diverged, or failed for good) no longer holds its
generation back. One Tune restarts after a failure counts again from its re-add.

A fused pack (one Tune trial, several caviar trials: ``pack_run.py``) is judged member by
member: its members reach each boundary in one step, each is scored there, and the pack waits
paused until the generation is decided, as a lone trial does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from orchestrator.engine.pbt_files import PbtFiles
from orchestrator.engine.trial_choice import NewestPendingFirst
from orchestrator.search.pbt import Exploit, PbtPlan, decide
from orchestrator.trials import MEMBER_LAST, MEMBER_RESULTS, PBT_VALUES

GenerationListener = Callable[[int, list[Exploit]], None]


class PbtTrialScheduler(NewestPendingFirst, TrialScheduler):
    """Synchronous population-based training over Tune's pause and resume."""

    def __init__(
        self,
        index_of: Mapping[str, int],
        plan: PbtPlan,
        population: int,
        files: PbtFiles,
        *,
        metric: str,
        mode: Literal["min", "max"],
        ended: Mapping[int, int] | None = None,
        members_of: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        self.index_of = index_of  # the searcher's live map: Ray trial id -> caviar index
        # The searcher's live map of packs: Ray trial id -> its members' indices.
        self.members_of: Mapping[str, Sequence[int]] = members_of if members_of is not None else {}
        self.plan = plan
        self.population = population
        self.files = files
        self.ended: dict[int, int] = dict(ended or {})  # index -> the epoch it ended at
        self.decided: set[int] = set(files.decided_epochs())
        self._scores: dict[int, dict[int, float]] = {}  # boundary -> index -> objective
        self._values: dict[int, dict[int, dict[str, Any]]] = {}  # boundary -> index -> values
        self._paused_at: dict[str, int] = {}  # Ray trial id -> the boundary it waits at
        self._done: set[int] = set()  # trials seen to diverge or train their last epoch
        self._objective = metric
        self._mode = mode
        # Told of each generation as it is decided (the observer: journal, MLflow), and of
        # each trial paused (its silence is not a stall).
        self.on_generation: GenerationListener | None = None
        self.on_pause: Callable[[int], None] | None = None

    @property
    def metric(self) -> str:
        return self._objective

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return metric in (None, self._objective) and mode in (None, self._mode)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # Tune pickles its scheduler: the listeners stay here
        state["on_generation"] = state["on_pause"] = None
        return state

    # --- Tune's calls ------------------------------------------------------------------

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        for index in self._indices(trial):
            if index not in self._done:
                self.ended.pop(index, None)  # restarted after a failure: it counts again

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if trial.trial_id in self.members_of:
            members = [(int(i), epochs[-1]) for i, epochs in result.get(MEMBER_RESULTS) or ()]
            values = {int(i): v for i, v in result.get(PBT_VALUES) or ()}
        else:
            index = self.index_of.get(trial.trial_id)
            members = [] if index is None else [(index, result)]
            values = {index: result.get(PBT_VALUES)} if index is not None else {}
        waiting = [
            (index, epoch)
            for index, entry in members
            if (epoch := self._scored(index, entry, values.get(index))) is not None
        ]
        self._decide_ready()
        if not waiting or waiting[0][1] in self.decided:  # the last of its generation
            return TrialScheduler.CONTINUE
        self._paused_at[trial.trial_id] = waiting[0][1]
        if self.on_pause is not None:
            for index, _ in waiting:
                self.on_pause(index)
        return TrialScheduler.PAUSE

    def _scored(self, index: int, entry: Mapping[str, Any], values: Any) -> int | None:
        """Take trial ``index``'s newest epoch: the undecided boundary it now waits at, if any.
        A trial that diverged or trained its last epoch has ended there (a pack member ends
        while its pack goes on)."""
        epoch = int(entry.get("epoch", 0))
        if entry.get("diverged") or epoch >= self.plan.max_epochs:
            self.ended[index] = epoch
            self._done.add(index)
            return None
        if not self.plan.is_boundary(epoch) or epoch in self.decided:
            return None
        score = entry.get(self._objective)
        self._scores.setdefault(epoch, {})[index] = (
            float(score) if isinstance(score, (int, float)) else math.nan
        )
        self._values.setdefault(epoch, {})[index] = dict(values or {})
        return epoch

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._ended(trial, result)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._ended(trial, trial.last_result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._ended(trial, trial.last_result)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """A waiting trial (the newest first: ``trial_choice.py``), else a paused trial whose
        generation is decided, the furthest behind first; never one that must still wait."""
        choice = super().choose_trial_to_run(tune_controller)
        if choice is None or choice.status != Trial.PAUSED or self._released(choice):
            return choice
        paused = [
            t
            for t in tune_controller.get_trials()
            if t.status == Trial.PAUSED and self._released(t)
        ]
        return min(paused, key=lambda t: self._paused_at.get(t.trial_id, 0), default=None)

    def debug_string(self) -> str:
        return f"Using synchronous PBT: decided generations at epochs {sorted(self.decided)}"

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the decisions are files, the scores come again on resume."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore (see ``save``)."""

    # --- the generations ---------------------------------------------------------------

    def _released(self, trial: Trial) -> bool:
        waiting_at = self._paused_at.get(trial.trial_id)
        return waiting_at is None or waiting_at in self.decided

    def _indices(self, trial: Trial) -> list[int]:
        members = self.members_of.get(trial.trial_id)
        if members is not None:
            return [int(i) for i in members]
        index = self.index_of.get(trial.trial_id)
        return [] if index is None else [index]

    def _ended(self, trial: Trial, result: dict | None) -> None:
        newest = {int(i): entry for i, entry in (result or {}).get(MEMBER_LAST) or ()}
        for index in self._indices(trial):
            if index not in self._done:  # one that ended earlier (a pack member) keeps its epoch
                self.ended[index] = int(newest.get(index, result or {}).get("epoch", 0))
        self._decide_ready()

    def _decide_ready(self) -> None:
        """Decide every generation whose population is all in."""
        for epoch in sorted(self._scores):
            if epoch not in self.decided and self._complete(epoch):
                self._decide(epoch)

    def _complete(self, epoch: int) -> bool:
        """Every trial of the population reported ``epoch`` or ended without reporting it
        (before it, or at it: a trial that diverged there reports no score to rank)."""
        reached = self._scores.get(epoch, {})
        return all(
            index in reached or (index in self.ended and self.ended[index] <= epoch)
            for index in range(self.population)
        )

    def _decide(self, epoch: int) -> None:
        scores = self._scores.pop(epoch)
        values = self._values.pop(epoch)
        exploits = decide(self.plan, epoch, scores, values)
        self.files.write_decision(epoch, exploits, scores)
        self.decided.add(epoch)
        if self.on_generation is not None:
            self.on_generation(epoch, exploits)
