"""Tune's view of caviar's successive halving: trials known by caviar index, every call journaled.

Ray Tune does not restore schedulers, and a resumed sweep runs its unfinished trials under new
Ray trial ids. A scheduler that forgot its rungs, or met a continued trial as a stranger, would
promote trials an uninterrupted sweep would have stopped. The decisions are made by
:class:`orchestrator.search.halving.SuccessiveHalving`, keyed by the trial's index (stable across
resumes); fed the journaled calls again in their order, it holds exactly the rungs it held when
the sweep was killed. The journal lines are those ``JournaledASHA`` wrote (``sched`` events
with ``op``, ``k``, ``r``, ``d``), so journals written by either replay in either.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, Literal

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from orchestrator.engine.trial_choice import NewestPendingFirst
from orchestrator.search.halving import Decision, SuccessiveHalving
from orchestrator.store.journal import Journal


class HalvingScheduler(NewestPendingFirst, TrialScheduler):
    """Asynchronous successive halving whose bookkeeping survives a resume (and which starts
    the newest waiting trial first: see ``trial_choice.py``)."""

    def __init__(
        self,
        index_of: Mapping[str, int],
        seed: int = 0,
        *,
        metric: str,
        mode: Literal["min", "max"],
        time_attr: str = "training_iteration",
        max_t: int = 100,
        grace_period: int = 1,
        reduction_factor: float = 4,
        brackets: int = 1,
        stop_last_trials: bool = True,
    ) -> None:
        super().__init__()
        self.index_of = index_of  # the searcher's live map: Ray trial id -> caviar index
        self.journal: Journal | None = None
        self.halving = SuccessiveHalving(
            max_t, grace_period, reduction_factor, brackets, mode, seed, stop_last_trials
        )
        self._objective = metric
        self._mode = mode
        self._time_attr = time_attr
        self._stopped = 0

    @property
    def metric(self) -> str:
        return self._objective

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Tune passes the sweep's objective again; this scheduler was built with it (its
        rungs are rebuilt before Tune starts): only the same objective is accepted."""
        return metric in (None, self._objective) and mode in (None, self._mode)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._handle("add", trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        return self._handle("result", trial, result) or TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._handle("complete", trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._handle("remove", trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        """An errored trial sends no more results; ASHA keeps its bracket and scores."""

    def debug_string(self) -> str:
        lines = [f"Using successive halving: num_stopped={self._stopped}"]
        for bracket in self.halving.rungs:
            rungs = " | ".join(f"Iter {r.epoch:.3f}: {r.cutoff}" for r in bracket)
            lines.append(f"Bracket: {rungs}")
        return "\n".join(lines)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the journal rebuilds this scheduler (``replay``)."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: the journal rebuilds this scheduler (``replay``)."""

    def replay(self, calls: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """Receive again, in order, the calls a killed sweep's scheduler received.

        Returns (journaled, replayed) decision pairs: equal when the rebuild is exact.
        """
        decisions = []
        for call in calls:
            decision = self._receive(call["op"], str(call["k"]), call.get("r") or {})
            if decision is not None:
                decisions.append((str(call.get("d", decision)), decision))
        return decisions

    def _handle(self, op: str, trial: Trial, result: dict | None = None) -> str | None:
        """A live call: apply it, then journal it with its decision. Journaled after
        deciding: a kill in between loses the in-memory effect too, and Tune re-presents
        the epoch to the rebuilt scheduler, which decides alike."""
        index = self.index_of.get(trial.trial_id)
        key = str(index) if index is not None else trial.trial_id
        decision = self._receive(op, key, result or {})
        self._log(op, key, result, decision)
        return decision

    def _receive(self, op: str, key: str, result: dict) -> str | None:
        """What a call does, live or replayed; returns the decision for a result."""
        # A trial the searcher never named (none in a caviar sweep) is known by its id's CRC.
        index = int(key) if key.isdigit() else zlib.crc32(key.encode())
        if op == "add":
            self.halving.add(index)
            return None
        if op == "remove":
            self.halving.remove(index)
            return None
        if self._time_attr not in result or self._objective not in result:
            return TrialScheduler.CONTINUE if op == "result" else None  # nothing to judge
        epoch, value = result[self._time_attr], result[self._objective]
        if op == "complete":
            self.halving.complete(index, epoch, value)
            return None
        if self.halving.decide(index, epoch, value) is Decision.STOP:
            self._stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _log(
        self, op: str, key: str, result: dict | None = None, decision: str | None = None
    ) -> None:
        if self.journal is None:
            return
        fields: dict[str, Any] = {"op": op, "k": key}
        if result is not None:
            fields["r"] = {k: result[k] for k in (self._time_attr, self._objective) if k in result}
        if decision is not None:
            fields["d"] = decision
        self.journal.append("sched", **fields)
