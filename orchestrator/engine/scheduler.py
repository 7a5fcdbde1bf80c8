"""Tune's view of caviar's successive halving: trials known by caviar index, every call journaled.

Ray Tune does not restore schedulers, and a resumed sweep runs its unfinished trials under new
Ray trial ids. A scheduler that forgot its rungs, or met a continued trial as a stranger, would
promote trials an uninterrupted sweep would have stopped. The decisions are made by
:class:`orchestrator.search.halving.SuccessiveHalving`, keyed by the trial's index (stable across
resumes); fed the journaled calls again in their order, it holds exactly the rungs it held when
the sweep was killed. The journal lines are those ``JournaledASHA`` wrote (``sched`` events
with ``op``, ``k``, ``r``, ``d``), so journals written by either replay in either.

A fused pack (one Tune trial, several caviar trials) is judged through the same calls keyed by
each member's index, its members of one step together (one ``results`` call: their scores are
recorded at the rung before any is judged, ``SuccessiveHalving.decide_together``): a member the
scheduler stops leaves its pack (the stop is posted to the sweep's pack mailbox, which the pack
reads before its next step), and the pack's Tune trial stops only when no member is left to
train.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from orchestrator.engine.trial_choice import NewestPendingFirst
from orchestrator.search.halving import Decision, SuccessiveHalving
from orchestrator.store.journal import Journal, JournalWriteError
from orchestrator.trials import MEMBER_LAST, MEMBER_RESULTS


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
        members_of: Mapping[str, Sequence[int]] | None = None,
        mailbox: Any = None,
    ) -> None:
        super().__init__()
        self.index_of = index_of  # the searcher's live map: Ray trial id -> caviar index
        # The searcher's live map of packs: Ray trial id -> its members' indices.
        self.members_of: Mapping[str, Sequence[int]] = members_of if members_of is not None else {}
        self.mailbox = mailbox
        # Pack members that left their pack (stopped here, finished or diverged), with the
        # epoch they left at: their later epochs, if a pack trained on, are not theirs.
        self.left_at: dict[int, int] = {}
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
        if self._is_pack(trial):
            for index in self.members_of[trial.trial_id]:
                self._handle_key("add", str(index))
            return
        self._handle("add", trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if self._is_pack(trial):
            return self._pack_result(trial, result)
        return self._handle("result", trial, result) or TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        if self._is_pack(trial):
            newest = {int(i): entry for i, entry in (result or {}).get(MEMBER_LAST) or ()}
            for index in self.members_of[trial.trial_id]:
                if index not in self.left_at:
                    entry = newest.get(index, {})
                    self._handle_key("complete", str(index), self._judged(entry))
                    self.left_at[index] = int(entry.get("epoch", 0))
            return
        self._handle("complete", trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        if self._is_pack(trial):
            for index in self.members_of[trial.trial_id]:
                self._handle_key("remove", str(index))
            return
        self._handle("remove", trial)

    def _is_pack(self, trial: Trial) -> bool:
        return trial.trial_id in self.members_of

    def _pack_result(self, trial: Trial, result: dict) -> str:
        """Judge the members at their newest epoch of the step, together (``decide_together``:
        they reached it at once); post the stops to the pack."""
        members = self.members_of[trial.trial_id]
        keys: list[str] = []
        judged_results: list[dict] = []
        for index, epochs in result.get(MEMBER_RESULTS) or ():
            index = int(index)
            if index in self.left_at or not epochs:
                continue
            newest = epochs[-1]
            epoch = int(newest.get(self._time_attr, 0))
            judged = self._judged(newest)
            if newest.get("diverged") or epoch >= self.halving.max_epochs:
                self._handle_key("complete", str(index), judged)  # it ended on its own
                self.left_at[index] = epoch
                continue
            keys.append(str(index))
            judged_results.append(judged)
        stopped: list[int] = []
        decisions = self._handle_together(keys, judged_results)
        for key, judged, decision in zip(keys, judged_results, decisions, strict=True):
            if decision == TrialScheduler.STOP:
                self._handle_key("complete", key, judged)  # as Tune ends a stopped trial
                self.left_at[int(key)] = int(judged.get(self._time_attr, 0))
                stopped.append(int(key))
        if self.mailbox is not None:
            self.mailbox.post(members[0], int(result["training_iteration"]), stopped)
        if all(index in self.left_at for index in members):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _handle_together(self, keys: list[str], results: list[dict]) -> list[str]:
        """Results that arrived together: one ``results`` call (a single one is a ``result``
        call, as for a lone trial), journaled after deciding like every call."""
        if len(keys) == 1:
            return [self._handle_key("result", keys[0], results[0]) or TrialScheduler.CONTINUE]
        if not keys:
            return []
        decisions = self._receive_together(keys, results)
        self._append({"op": "results", "k": keys, "r": results, "d": decisions})
        return decisions

    def _receive_together(self, keys: Sequence[str], results: Sequence[dict]) -> list[str]:
        """What a ``results`` call does, live or replayed; a result without the epoch or the
        objective is not judged and goes on."""
        judged = [
            (position, (int(key), r[self._time_attr], r[self._objective]))
            for position, (key, r) in enumerate(zip(keys, results, strict=True))
            if self._time_attr in r and self._objective in r
        ]
        decisions = [TrialScheduler.CONTINUE] * len(keys)
        verdicts = self.halving.decide_together([call for _, call in judged])
        for (position, _), verdict in zip(judged, verdicts, strict=True):
            if verdict is Decision.STOP:
                self._stopped += 1
                decisions[position] = TrialScheduler.STOP
        return decisions

    def _judged(self, entry: dict) -> dict:
        return {k: entry[k] for k in (self._time_attr, self._objective) if k in entry}

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
        decisions: list[tuple[str, str]] = []
        for call in calls:
            if call["op"] == "results":
                keys = [str(k) for k in call["k"]]
                replayed = self._receive_together(keys, call.get("r") or [{}] * len(keys))
                journaled = call.get("d") or replayed
                decisions.extend(zip((str(d) for d in journaled), replayed, strict=True))
                continue
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
        return self._handle_key(op, key, result)

    def _handle_key(self, op: str, key: str, result: dict | None = None) -> str | None:
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
        self._append(fields)

    def _append(self, fields: dict[str, Any]) -> None:
        if self.journal is None:
            return
        try:
            self.journal.append("sched", **fields)
        except JournalWriteError:
            pass  # kept as the journal's failure: the sweep's stopper halts it
