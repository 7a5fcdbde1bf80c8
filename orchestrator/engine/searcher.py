"""The Ray Tune searcher built from a spec: rounds of planned configurations.

caviar decides every trial's configuration itself (see ``space.py`` for why) and hands Ray the
finished dicts. A sweep is a sequence of rounds: random and grid search are one round; a
``zoom`` sweep runs several inside one Tuner, so trial actors are reused across rounds. When a
round's configurations are all handed out, the searcher answers "not yet" until every trial
of the round has ended, then narrows the region around the round's best trials
(``zoom.next_region``) and plans the next round.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ray.tune.search import ConcurrencyLimiter, Searcher

from orchestrator.engine import live
from orchestrator.errors import CaviarError
from orchestrator.search.packing import Packer, pack_round
from orchestrator.search.ranking import ranked
from orchestrator.search.space import SearchSpace, sample_configs
from orchestrator.search.zoom import keep_count, next_region
from orchestrator.spec.models import SweepSpec
from orchestrator.store.journal import RESUME_FROM
from orchestrator.trials import (
    MEMBER_LAST,
    PACK_MEMBERS,
    Trial,
    TrialState,
    classify_last,
)

# Called when a round starts: (round number from 1, its region, notes on how it was derived).
RoundListener = Callable[[int, SearchSpace, tuple[str, ...]], None]


@dataclass(frozen=True)
class RoundPlan:
    """How the rounds of a sweep are sized and narrowed."""

    rounds: int
    samples_per_point: int
    seed: int
    keep_top: float
    margin: float
    metric: str
    mode: Literal["max", "min"]
    milestones: tuple[int, ...]
    budget: int


class ReplayError(CaviarError):
    """The journal does not match what the spec plans: resuming would mix two sweeps."""

    exit_code = 2


class RoundSearcher(Searcher):
    """Serves each round's configurations in order; narrows the region between rounds."""

    def __init__(
        self,
        space: SearchSpace,
        plan: RoundPlan,
        on_round: RoundListener | None = None,
        sweep_id: str | None = None,
        packer: Packer | None = None,
    ) -> None:
        super().__init__(metric=plan.metric, mode=plan.mode)
        self.sweep_id = (
            sweep_id  # a pickled copy finds its listener through orchestrator.engine.live
        )
        self.plan = plan
        self.original = space
        self.space = space
        self.on_round = on_round
        self.round = 0  # 1-based once started
        self.regions: list[SearchSpace] = []
        self.notes: list[tuple[str, ...]] = []
        self.packer = packer  # None: one trial per Tune trial, as planned
        self.index_of: dict[str, int] = {}  # Ray trial id -> caviar index (its first member's)
        # Ray trial id -> the caviar indices a fused pack trains (only packs are here; a
        # continued pack may be down to one member).
        self.members_of: dict[str, tuple[int, ...]] = {}
        self._member_last: dict[int, dict[str, Any]] = {}  # a pack member's newest epoch
        # The trials handed out, by index: config and round; once ended, the state and the
        # last result Tune passed on completion (all that planning the next round needs).
        self.trials: dict[int, Trial] = {}
        self.next_index = 0
        # Unended trials of a killed sweep, run first: each a Tune trial's worth (one trial,
        # or the unended members of one pack).
        self.continuations: list[list[Trial]] = []
        self._queue: list[list[dict[str, Any]]] = []  # the round's Tune trials still to hand out
        # Round 1 starts at the first suggestion (so building a searcher writes nothing).

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its search algorithm; the listener (MLflow, terminal) stays behind."""
        state = dict(self.__dict__)
        state["on_round"] = None
        return state

    @property
    def total(self) -> int:
        return self.plan.rounds * self._round_size

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.continuations:
            return self._continue(trial_id, self.continuations.pop(0))
        if self.round == 0:
            self._start_round(())
        if not self._queue:
            if self.round >= self.plan.rounds:
                return Searcher.FINISHED
            if not self._round_has_ended():
                return None  # Tune asks again after the next trial event
            step = next_region(self.space, self.original, self._kept_configs(), self.plan.margin)
            self.space = step.space
            self._start_round(step.notes)
        unit = self._queue.pop(0)
        indices = tuple(range(self.next_index, self.next_index + len(unit)))
        pack = indices[0] if len(unit) > 1 else None
        for index, config in zip(indices, unit, strict=True):
            self.trials[index] = Trial(index, config, self.round, trial_id=trial_id, pack=pack)
        self.next_index += len(unit)
        self._assign(trial_id, indices, packed=pack is not None)
        return tune_config(list(zip(indices, unit, strict=True)), packed=pack is not None)

    def _assign(self, trial_id: str, indices: tuple[int, ...], packed: bool) -> None:
        self.index_of[trial_id] = indices[0]
        if packed:
            self.members_of[trial_id] = indices

    @property
    def remaining(self) -> int:
        """Trials still to run: continuations, this round's rest and the rounds to come."""
        per_round = self._round_size
        continued = sum(len(unit) for unit in self.continuations)
        return continued + self.plan.rounds * per_round - self.next_index

    def replay(self, trials: dict[int, Trial]) -> None:
        """Become the searcher of a killed sweep: same rounds, same regions, same indices.

        The journal's trials are suggested again in index order (packs formed again alike),
        and each round's ended trials are reported before the next round is planned, exactly
        as they were; a configuration that differs from the journal's means the plan changed,
        and stops the resume. Trials that had not ended become continuations, served before
        anything new: a pack's unended members continue together.
        """
        top = max(trials, default=-1)
        fed: set[int] = set()

        def feed_ended(round_number: int) -> None:
            for trial in trials.values():
                if trial.round == round_number and trial.state.ended and trial.index not in fed:
                    last = trial.history[-1] if trial.history else None
                    self._complete(trial.index, last, trial.state)
                    fed.add(trial.index)

        planned: list[tuple[int, ...]] = []
        while self.next_index <= top:
            first = self.next_index
            journaled = trials.get(first)
            trial_id = journaled.trial_id if journaled else f"unstarted-{first}"
            if not self._queue:
                feed_ended(self.round)
            suggested = self.suggest(trial_id)
            if not isinstance(suggested, dict):
                raise ReplayError(
                    f"trial {first} of the journal has no place in the spec's plan (round "
                    f"{self.round} has not ended); the sweep cannot be resumed"
                )
            indices = self.members_of.pop(trial_id, None) or (self.index_of[trial_id],)
            del self.index_of[trial_id]
            planned.append(indices)
            for index in indices:
                known = trials.get(index)
                config = self.trials[index].config
                if known is not None and _plain(config) != known.config:
                    raise ReplayError(
                        f"trial {index} ran {known.config}, but the spec now plans {config}; "
                        "a resumed sweep must run the same plan"
                    )
        feed_ended(self.round)
        for indices in planned:
            unit = []
            for index in indices:
                known = trials.get(index)
                if known is not None and known.state.ended:
                    continue
                continued = self.trials[index]
                continued.checkpoint = known.checkpoint if known else None
                unit.append(continued)
            if unit:
                self.continuations.append(unit)

    def _continue(self, trial_id: str, unit: list[Trial]) -> dict[str, Any]:
        packed = unit[0].pack is not None
        self._assign(trial_id, tuple(trial.index for trial in unit), packed)
        for trial in unit:
            trial.trial_id = trial_id
        config = tune_config([(t.index, t.config) for t in unit], packed=packed)
        checkpoints = {str(t.index): t.checkpoint for t in unit if t.checkpoint}
        if packed and checkpoints:
            config[RESUME_FROM] = checkpoints
        elif not packed and unit[0].checkpoint:
            config[RESUME_FROM] = unit[0].checkpoint
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        for index, entry in result.get(MEMBER_LAST) or ():
            self._member_last[int(index)] = entry

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        indices = self.members_of.get(trial_id)
        if indices is None:  # one trial, not a pack
            index = self.index_of.get(trial_id)
            if index is not None:
                failed = TrialState.FAILED
                state = failed if error else classify_last(result or {}, self.plan.budget)
                self._complete(index, result, state)
            return
        self.on_trial_result(trial_id, result or {})
        for index in indices:
            trial = self.trials[index]
            if trial.state.ended:
                continue
            last = self._member_last.get(index)
            ended_before = last is not None and (last.get("left") or _member_done(last, self))
            if error and not ended_before:
                self._complete(index, last, TrialState.FAILED)
            else:
                self._complete(index, last, classify_last(last or {}, self.plan.budget))

    def _complete(self, index: int, last: dict[str, Any] | None, state: TrialState) -> None:
        """A trial ended with ``last`` as its newest epoch (all planning the next round needs)."""
        trial = self.trials.get(index)
        if trial is None:
            return
        trial.history = [dict(last)] if last else []
        trial.state = state

    def round_trials(self, round_number: int) -> list[Trial]:
        """The ended trials of a round, from what Tune passed on completion."""
        return [t for t in self.trials.values() if t.round == round_number and t.state.ended]

    def _start_round(self, notes: tuple[str, ...]) -> None:
        self.round += 1
        self.regions.append(self.space)
        self.notes.append(notes)
        self._queue = pack_round(self._round_configs(self.space), self.packer)
        listener = self.on_round
        if listener is None:
            found = live.lookup(self.sweep_id)
            listener = found.on_round if found is not None else None
        if listener is not None:
            listener(self.round, self.space, notes)

    @property
    def _round_size(self) -> int:
        """Trials per round: every grid point, ``samples_per_point`` times (any region)."""
        return self.original.grid_size() * self.plan.samples_per_point

    def _round_configs(self, space: SearchSpace) -> list[dict[str, Any]]:
        # Round 1 uses the sweep seed itself, so a one-round sweep is plain seeded random search.
        seed = self.plan.seed + (self.round - 1) * 7919
        return sample_configs(space, self.plan.samples_per_point, seed)

    def _round_has_ended(self) -> bool:
        return all(t.state.ended for t in self.trials.values() if t.round == self.round)

    def _kept_configs(self) -> list[dict[str, Any]]:
        best = ranked(
            self.round_trials(self.round),
            self.plan.metric,
            self.plan.mode,
            list(self.plan.milestones),
        )
        return [r.config for r in best[: keep_count(self.plan.keep_top, len(best))]]

    def save(self, checkpoint_path: str) -> None:
        """Nothing: a resumed sweep rebuilds the searcher from caviar's journal (``replay``),
        never from Tune's snapshot, so pickling it at every snapshot would be wasted time."""


def tune_config(members: list[tuple[int, dict[str, Any]]], packed: bool) -> dict[str, Any]:
    """What Tune hands the trial actor: a trial's own config, or a pack's members."""
    if not packed:
        return dict(members[0][1])
    return {PACK_MEMBERS: [[index, dict(config)] for index, config in members]}


def _member_done(last: dict[str, Any], searcher: RoundSearcher) -> bool:
    """A member that finished its epochs or diverged (it left its pack on its own)."""
    return bool(last.get("diverged")) or int(last.get("epoch", 0)) >= searcher.plan.budget


def _plain(config: dict[str, Any]) -> Any:
    """A configuration as it reads back from the journal's JSON."""
    return json.loads(json.dumps(config))


def round_plan(spec: SweepSpec, milestones: list[int]) -> RoundPlan:
    search = spec.search
    return RoundPlan(
        rounds=search.rounds_count(),
        samples_per_point=search.samples_per_point(),
        seed=search.seed,
        keep_top=search.keep_top_value(),
        margin=search.margin_value(),
        metric=spec.objective.metric,
        mode=spec.mode,
        milestones=tuple(milestones),
        budget=spec.max_epochs,
    )


def build_searcher(
    spec: SweepSpec,
    slots: int,
    milestones: list[int],
    sweep_id: str | None = None,
    packer: Packer | None = None,
) -> tuple[Searcher, RoundSearcher]:
    """The searcher to give Ray, and the round searcher inside it (for trial indices, rounds).

    Always behind a ``ConcurrencyLimiter``: for any searcher but its own, Tune keeps a single
    trial pending unless a limiter says how many may run, which on a 2-core machine meant one
    trial at a time. ``slots`` is how many trials the cluster fits at once.

    The limit is :func:`live_trials` (a trial waiting per slot), not ``slots``: see there.
    """
    searcher = RoundSearcher(
        spec.search_space(), round_plan(spec, milestones), sweep_id=sweep_id, packer=packer
    )
    limit = spec.search.max_concurrent or live_trials(slots)
    return ConcurrencyLimiter(searcher, max_concurrent=max(1, limit)), searcher


def live_trials(slots: int) -> int:
    """Trials Tune may hold at once: one running and one waiting per slot.

    Tune keeps a finished trial's actor for reuse only while a trial waits to take it (or
    while it is the only actor cached), and it gives a warm actor to a waiting trial in
    preference to that trial's own actor still starting, which it then kills. Both go wrong
    when the next trial is asked for only after one ends (a limit of ``slots``): an actor that
    finishes while another sits cached is stopped, and a trial whose actor is starting takes
    the warm one instead (``trial_choice.py``). Either way a new actor pays a process start and
    torch's import while its slot trains nothing. A waiting trial per slot
    avoids both. The waiting trials are drawn in the same order (the plan is fixed by the
    seed) and run only when a slot frees; the cluster's resources still cap how many run.
    """
    return 2 * max(1, slots)


def concurrent_slots(
    cluster: dict[str, float], cpus_per_trial: float, gpus_per_trial: float
) -> int:
    """How many trials of this size the cluster's resources hold at once."""
    fits = [cluster.get("CPU", 1.0) / cpus_per_trial]
    if gpus_per_trial > 0:
        fits.append(cluster.get("GPU", 0.0) / gpus_per_trial)
    return max(1, int(min(fits) + 1e-9))
