"""ASHA that knows trials by their caviar index and journals every call it receives.

Ray Tune does not restore schedulers, and a resumed sweep runs its unfinished trials under
new Ray trial ids. An ASHA that forgot its rungs, or that met a continued trial as a stranger,
would promote trials an uninterrupted sweep would have stopped. Keyed by the trial's index
(stable across resumes) and fed the journaled calls again in their order, the rebuilt
scheduler holds exactly the rungs it held when the sweep was killed.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from orchestrator.journal import Journal
from orchestrator.trial_choice import NewestPendingFirst


@dataclass(frozen=True)
class _Key:
    """What ASHA looks at in a trial: only its id, here the caviar index."""

    trial_id: str


class JournaledASHA(NewestPendingFirst, ASHAScheduler):
    """``ASHAScheduler`` whose bookkeeping survives a resume (and which starts the newest
    waiting trial first: see ``trial_choice.py``)."""

    def __init__(self, index_of: Mapping[str, int], seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index_of = index_of  # the searcher's live map: Ray trial id -> caviar index
        self.seed = seed
        self.journal: Journal | None = None

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Tune passes the sweep's objective again; this scheduler was built with it (its
        rungs are rebuilt before Tune starts), so the same objective is accepted."""
        if metric in (None, self._metric) and mode in (None, self._mode):
            return True
        return bool(super().set_search_properties(metric, mode, **spec))

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._handle("add", trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._handle("result", trial, result) or TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._handle("complete", trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._handle("remove", trial)

    def replay(self, calls: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """Receive again, in order, the calls a killed sweep's scheduler received.

        Returns (journaled, replayed) decision pairs: equal when the rebuild is exact.
        """
        decisions = []
        for call in calls:
            decision = self._receive(call["op"], _Key(str(call["k"])), call.get("r") or {})
            if decision is not None:
                decisions.append((str(call.get("d", decision)), decision))
        return decisions

    def _handle(self, op: str, trial: Any, result: dict | None = None) -> str | None:
        """A live call: apply it, then journal it with its decision. Journaled after
        deciding: a kill in between loses the in-memory effect too, and Tune re-presents
        the epoch to the rebuilt scheduler, which decides alike."""
        key = self._key(trial)
        decision = self._receive(op, key, result or {})
        self._log(op, key, result, decision)
        return decision

    def _receive(self, op: str, key: _Key, result: dict) -> str | None:
        """What a call does to ASHA's bookkeeping, live or replayed (ASHA ignores the
        controller); returns the decision for a result."""
        if op == "add":
            if key.trial_id not in self._trial_info:  # a continued trial keeps its bracket
                self._trial_info[key.trial_id] = self._brackets[self._bracket_of(key)]
        elif op == "result":
            return str(super().on_trial_result(None, key, result))
        elif op == "complete":
            if key.trial_id in self._trial_info:
                super().on_trial_complete(None, key, result)
        elif op == "remove":
            self._trial_info.pop(key.trial_id, None)
        return None

    def _bracket_of(self, key: _Key) -> int:
        """The trial's bracket, with ASHA's probabilities (brackets with more rungs likelier),
        drawn from a generator seeded by the sweep seed and the trial's index: the same trial
        gets the same bracket live and replayed, whatever other trials drew before it."""
        sizes = np.array([len(bracket._rungs) for bracket in self._brackets])
        weights = np.e ** (sizes - sizes.max())
        trial = int(key.trial_id) if key.trial_id.isdigit() else zlib.crc32(key.trial_id.encode())
        rng = np.random.default_rng([self.seed, trial])
        return int(rng.choice(len(self._brackets), p=weights / weights.sum()))

    def _key(self, trial: Any) -> _Key:
        index = self.index_of.get(trial.trial_id)
        return _Key(str(index) if index is not None else trial.trial_id)

    def _log(
        self, op: str, key: _Key, result: dict | None = None, decision: str | None = None
    ) -> None:
        if self.journal is None:
            return
        fields: dict[str, Any] = {"op": op, "k": key.trial_id}
        if result is not None:
            fields["r"] = {k: result[k] for k in (self._time_attr, self._metric) if k in result}
        if decision is not None:
            fields["d"] = decision
        self.journal.append("sched", **fields)
