"""The Ray Tune searcher built from a spec: rounds of planned configurations.

caviar decides every trial's configuration itself (see ``space.py`` for why) and hands Ray the
finished dicts. A sweep is a sequence of rounds: random and grid search are one round; a
``zoom`` sweep runs several inside one Tuner, so trial actors are reused across rounds. When a
round's configurations are all handed out, the searcher answers "not yet" until every trial
of the round has ended, then narrows the region around the round's best trials
(``zoom.next_region``) and plans the next round.

A ``tpe`` sweep is one round that is not planned ahead: each configuration is proposed when Tune
asks for it by :class:`orchestrator.search.tpe.TpeProposer` (Optuna's TPE), which learns from
every result the searcher is passed, and a resumed sweep adopts the journal's configurations
instead of planning them again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ray.tune.search import Searcher

from orchestrator.engine import live
from orchestrator.errors import CaviarError
from orchestrator.search.packing import Packer, pack_round
from orchestrator.search.plan import RoundPlan
from orchestrator.search.ranking import ranked
from orchestrator.search.round_configs import round_configs
from orchestrator.search.space import Scalar, SearchSpace
from orchestrator.search.tpe import TpeProposer
from orchestrator.search.zoom import keep_count, next_region
from orchestrator.store.journal import RESUME_FROM
from orchestrator.trials import (
    EPOCH_RESULTS,
    MEMBER_LAST,
    MEMBER_RESULTS,
    PACK_MEMBERS,
    TRIAL_INDEX,
    Trial,
    TrialState,
    classify_last,
)

# Called when a round starts: (round number from 1, its region, notes on how it was derived).
RoundListener = Callable[[int, SearchSpace, tuple[str, ...]], None]


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
        slots: int = 1,
        index_in_config: bool = False,
    ) -> None:
        super().__init__(metric=plan.metric, mode=plan.mode)
        # Tell each trial its index (population-based training names its files by it).
        self.index_in_config = index_in_config
        self.slots = slots  # trials (packs) the cluster trains at once
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
        self._member_newest: dict[int, dict[str, Any]] = {}  # its newest epoch of its own
        # The trials handed out, by index: config and round; once ended, the state and the
        # last result Tune passed on completion (all that planning the next round needs).
        self.trials: dict[int, Trial] = {}
        self.next_index = 0
        # Unended trials of a killed sweep, run first: each a Tune trial's worth (one trial,
        # or the unended members of one pack).
        self.continuations: list[list[Trial]] = []
        self._queue: list[list[dict[str, Any]]] = []  # the round's Tune trials still to hand out
        # strategy tpe: the sampler that proposes each configuration when it is asked for.
        self.proposer = (
            TpeProposer(
                space,
                plan.tpe,
                plan.seed,
                plan.metric,
                plan.mode,
                plan.milestones,
                shape=packer.sampled if packer is not None else (),
            )
            if plan.tpe is not None
            else None
        )
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
        if self.proposer is not None:
            if self.next_index >= self.total:
                return Searcher.FINISHED
            if not self.proposer.may_propose(self.next_index, self.slots):
                return None  # Tune asks again after the next trial event
            self._queue = [self._propose_unit(self.total - self.next_index)]
        if not self._queue:
            if self.round >= self.plan.rounds:
                return Searcher.FINISHED
            if not self._round_has_ended():
                return None  # Tune asks again after the next trial event
            # Kept from the whole sweep, the box is drawn in the whole region around them (it
            # may move to an explored optimum); kept from the round, it narrows the round's.
            current = self.original if self.plan.keep_from == "sweep" else self.space
            step = next_region(current, self.original, self._kept_configs(), self.plan.margin)
            self.space = step.space
            self._start_round(step.notes)
        unit = self._queue.pop(0)
        indices = tuple(range(self.next_index, self.next_index + len(unit)))
        pack = indices[0] if len(unit) > 1 else None
        for index, config in zip(indices, unit, strict=True):
            self.trials[index] = Trial(index, config, self.round, trial_id=trial_id, pack=pack)
        self.next_index += len(unit)
        self._assign(trial_id, indices, packed=pack is not None)
        members = list(zip(indices, unit, strict=True))
        return tune_config(members, packed=pack is not None, with_index=self.index_in_config)

    def _propose_unit(self, limit: int) -> list[dict[str, Any]]:
        """The next Tune trial's configurations, proposed now (strategy tpe): at most
        ``limit`` members. A pack's shape is proposed once, from one observation per pack
        (``TpeProposer.propose_pack``); each member gets its own proposal of everything else,
        so a parameter's values stay the sampler's own and only shape values repeat within a
        pack (as ``pack_round``). TPE's random start packs too, each pack a random shape,
        unless ``pack_random_start`` is off: then each of its trials is alone, a shape of its
        own. In a space that samples no shape field, every trial (the random
        start's too) packs, each member the sampler's own proposal of everything."""
        proposer = self.proposer
        assert proposer is not None
        first = self.next_index
        packer = self.packer
        if packer is None or proposer.alone(first):
            return [proposer.propose(first, self._grid_point(first))]
        shape = proposer.propose_pack(first) if proposer.shape else {}

        def member(index: int) -> dict[str, Any]:
            if proposer.shape:
                return proposer.propose_member(index, first, self._grid_point(index))
            return proposer.propose(index, self._grid_point(index), unit=first)

        head = member(first)
        size = min(limit, max(1, packer.size_for(head, self.total - first)))
        key = packer.shape_key(head)
        unit = [head]
        for index in range(first + 1, first + size):
            if packer.shape_key({**head, **self._grid_point(index), **shape}) != key:
                break  # its grid point gives another shape: it starts the next pack
            unit.append(member(index))
        if len(unit) == 1:
            proposer.single(first)  # a pack of one is a lone trial, as the journal shows it
        return unit

    def _grid_point(self, index: int) -> dict[str, Scalar]:
        """The grid values of trial ``index``: each grid point gets its trials in a row."""
        points = self.original.grid_points()
        return dict(points[index // self.plan.samples_per_point]) if points else {}

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

        Strategy tpe proposes from what it has learnt, which the order of events decided, so its
        journaled trials are adopted instead (:meth:`_replay_proposed`).
        """
        if self.proposer is not None:
            self._replay_proposed(trials)
            return
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

    def _replay_proposed(self, trials: dict[int, Trial]) -> None:
        """strategy tpe: become the sampler of a killed sweep from its journal.

        Every journaled trial is adopted with its configuration and pack, and everything it
        reported is passed on, so the sampler's study holds what the killed one held and the
        next proposals are the ones the killed sweep would have made. A configuration the
        spec could not have proposed stops the resume. Trials that were proposed but never
        started left no trace: they are proposed again, from all the journal holds.
        """
        assert self.proposer is not None
        if self.round == 0:
            self._start_round(())
        top = max(trials, default=-1)
        units: list[tuple[int, ...]] = []
        gaps: list[tuple[int, int]] = []  # [first, end) of indices the journal lacks
        index = 0
        while index <= top:
            trial = trials.get(index)
            if trial is None:
                end = index
                while end <= top and end not in trials:
                    end += 1
                gaps.append((index, end))
                index = end
                continue
            members = [index]
            while (
                trial.pack is not None
                and members[-1] + 1 in trials
                and trials[members[-1] + 1].pack == trial.pack
            ):
                members.append(members[-1] + 1)
            for member in members:
                known = trials[member]
                try:
                    self.proposer.adopt(member, known.config, known.pack)
                except ValueError as error:
                    raise ReplayError(
                        f"trial {member} ran {known.config}, which the spec's search space "
                        f"cannot propose ({error}); a resumed sweep must run the same spec"
                    ) from None
                self.trials[member] = Trial(
                    member, dict(known.config), self.round, trial_id=known.trial_id, pack=known.pack
                )
            units.append(tuple(members))
            index = members[-1] + 1
        for known in sorted(trials.values(), key=lambda t: t.index):
            self.proposer.observe(known.index, known.history)
            if known.state.ended:
                self._complete(known.index, known.last or None, known.state)
        for first, end in gaps:
            self.next_index = first
            while self.next_index < end:
                unit = self._propose_unit(end - self.next_index)
                indices = tuple(range(self.next_index, self.next_index + len(unit)))
                pack = indices[0] if len(unit) > 1 else None
                for member, config in zip(indices, unit, strict=True):
                    self.trials[member] = Trial(member, config, self.round, pack=pack)
                units.append(indices)
                self.next_index += len(unit)
        self.next_index = top + 1
        for indices in sorted(units):
            unit = []
            for member in indices:
                known = trials.get(member)
                if known is not None and known.state.ended:
                    continue
                continued = self.trials[member]
                continued.checkpoint = known.checkpoint if known else None
                unit.append(continued)
            if unit:
                self.continuations.append(unit)

    def _continue(self, trial_id: str, unit: list[Trial]) -> dict[str, Any]:
        packed = unit[0].pack is not None
        self._assign(trial_id, tuple(trial.index for trial in unit), packed)
        for trial in unit:
            trial.trial_id = trial_id
        members = [(t.index, t.config) for t in unit]
        config = tune_config(members, packed=packed, with_index=self.index_in_config)
        checkpoints = {str(t.index): t.checkpoint for t in unit if t.checkpoint}
        if packed and checkpoints:
            config[RESUME_FROM] = checkpoints
        elif not packed and unit[0].checkpoint:
            config[RESUME_FROM] = unit[0].checkpoint
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        for index, entry in result.get(MEMBER_LAST) or ():
            self._member_last[int(index)] = entry
        if self.proposer is not None:
            self._observe(trial_id, result)

    def _observe(self, trial_id: str, result: dict[str, Any]) -> None:
        """Pass a step's epochs to the sampler (strategy tpe), as the observer journals them.

        A pack member's epochs after it left its pack are not its own, and it has ended when
        it left, finished or diverged: the observer ends it then, not when the pack ends, so
        the sampler does too (a resumed sweep's sampler learns from the journal)."""
        assert self.proposer is not None
        members = self.members_of.get(trial_id)
        if members is None:
            index = self.index_of.get(trial_id)
            if index is not None:
                self.proposer.observe(index, result.get(EPOCH_RESULTS) or [result])
            return
        left_at = self._left_at()
        for index, epochs in result.get(MEMBER_RESULTS) or ():
            index = int(index)
            left = left_at.get(index)
            own = [e for e in epochs if left is None or int(e.get("epoch", 0)) <= left]
            self.proposer.observe(index, own)
            if own:
                self._member_newest[index] = own[-1]
            newest = self._member_newest.get(index, {})
            if (
                left is not None
                or newest.get("diverged")
                or (int(newest.get("epoch", 0)) >= self.plan.budget)
            ):
                self.proposer.end(index, classify_last(newest, self.plan.budget))

    def _left_at(self) -> Mapping[int, int]:
        """The scheduler's pack members that left their pack (the epoch they left at), as the
        sweep's observer is given them; empty when the sweep has none."""
        found = live.lookup(self.sweep_id)
        left_at = getattr(found.observer, "left_at", None) if found is not None else None
        return left_at if left_at is not None else {}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        indices = self.members_of.get(trial_id)
        if indices is None:  # one trial, not a pack
            index = self.index_of.get(trial_id)
            if index is not None:
                if self.proposer is not None and result:
                    self._observe(trial_id, result)
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
        if self.proposer is not None:
            self.proposer.end(index, state)

    def round_trials(self, round_number: int) -> list[Trial]:
        """The ended trials of a round, from what Tune passed on completion."""
        return [t for t in self.trials.values() if t.round == round_number and t.state.ended]

    def _start_round(self, notes: tuple[str, ...]) -> None:
        self.round += 1
        self.regions.append(self.space)
        self.notes.append(notes)
        if self.proposer is None:
            configs = round_configs(
                self.plan, self.round, self.space, self.original, self.trials, self.next_index
            )
            self._queue = pack_round(configs, self.packer)
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

    def _round_has_ended(self) -> bool:
        return all(t.state.ended for t in self.trials.values() if t.round == self.round)

    def _kept_configs(self) -> list[dict[str, Any]]:
        """The best trials the next region is drawn around: ``keep_top`` of a round's worth,
        ranked among the last round's trials or all the sweep's so far (``keep_from``)."""
        this_round = self.round_trials(self.round)
        pool = (
            [t for t in self.trials.values() if t.state.ended]
            if self.plan.keep_from == "sweep"
            else this_round
        )
        best = ranked(pool, self.plan.metric, self.plan.mode, list(self.plan.milestones))
        eligible = sum(1 for t in best if t.index in {r.index for r in this_round})
        return [r.config for r in best[: keep_count(self.plan.keep_top, max(1, eligible))]]

    def save(self, checkpoint_path: str) -> None:
        """Nothing: a resumed sweep rebuilds the searcher from caviar's journal (``replay``),
        never from Tune's snapshot, so pickling it at every snapshot would be wasted time."""


def tune_config(
    members: list[tuple[int, dict[str, Any]]], packed: bool, with_index: bool = False
) -> dict[str, Any]:
    """What Tune hands the trial actor: a trial's own config (with its index under
    ``TRIAL_INDEX`` if asked), or a pack's members."""
    if not packed:
        index, config = members[0]
        return {**config, TRIAL_INDEX: index} if with_index else dict(config)
    return {PACK_MEMBERS: [[index, dict(config)] for index, config in members]}


def _member_done(last: dict[str, Any], searcher: RoundSearcher) -> bool:
    """A member that finished its epochs or diverged (it left its pack on its own)."""
    return bool(last.get("diverged")) or int(last.get("epoch", 0)) >= searcher.plan.budget


def _plain(config: dict[str, Any]) -> Any:
    """A configuration as it reads back from the journal's JSON."""
    return json.loads(json.dumps(config))
