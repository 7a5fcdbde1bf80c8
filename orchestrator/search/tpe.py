"""TPE in caviar's scales: Optuna's ``TPESampler``, asked and told from caviar's trial records.

The Tree-structured Parzen Estimator is the sampler every peer offers; caviar does not
reimplement it. What caviar adds is what the sampler is shown:

- **caviar's coordinates** (``tpe_space.py``): each range where its scale is uniform (log10 x,
  log10(1 - x), x), integers as integers, choices as categoricals; a grid parameter is a
  categorical fixed to the trial's grid point.
- **Early-stopped trials.** With ASHA most trials stop early, and a value after 2 epochs is
  not a value after 27. The sampler ranks at one budget, chosen by BOHB's rule: the deepest
  milestone (rung epoch, or the full budget) at which at least ``n_min`` trials have a value,
  ``n_min = max(n_startup_trials, parameters + 1)``. A trial with a value there is told that
  value (``COMPLETE``), even while it still runs on; a trial that ended before reaching it is
  told ``PRUNED`` with its value at the deepest milestone it reached, which Optuna ranks below
  every ``COMPLETE`` trial, deeper before shallower, then by value (exactly caviar's
  ASHA-aware ranking, ``ranking.py``). Those are the trials ASHA judged worse, so they are
  evidence of bad regions, not missing data.
- **Diverged and failed trials count as bad.** Optuna leaves ``FAIL`` trials out of the model,
  which would make a region that diverges look unexplored. They are told ``PRUNED`` with no
  value, the last place in Optuna's ranking: always in the "bad" density.
- **Parallel trials.** Running trials stay ``RUNNING`` in the study and the sampler is built
  with ``constant_liar=True``: it counts them as bad, so a pending configuration is not
  proposed twice.
- **Fused packs count once for their shape.** A pack's members share the values of its shape
  fields (``layers``, ``hidden_units``, ...). Shown as members with those values, a pack of 8
  would be 8 observations of one shape, and TPE would settle on the first good pack's shape. So
  a pack is two kinds of study trials: one *shape* trial (the shape fields only), proposed once
  per pack and told its median member once they have all ended, and one trial per member with
  every other parameter. Optuna's multivariate TPE with ``group=True`` then models
  the shape fields from one observation per pack (and per lone trial) and the rest from every
  trial. Lone trials (a pack of one; the random start with ``pack_random_start`` off) are
  single trials with everything; the random start's packs are shape and member trials too.
  In a space that samples no shape field every trial has the sweep's one shape: its packs
  (the random start's too) are members that are each a lone trial to the sampler, each with
  its own proposal, and the pack counts once only while it waits for a result.

**Reproducible and resumable.** A proposal is a function of the sweep seed, the trial's index
and the study's contents, and the study is a function of caviar's trial records alone (each
record: its configuration, whether it ended and how, and its value at each milestone). The
records are what the journal holds, so a resumed sweep rebuilds the same study and makes the
same next proposals. Three details make that exact: each proposal gets a fresh sampler seeded
from (seed, index) (no random state carried between proposals); a study trial's parameters
are always recomputed from the caviar configuration (``log10(1 - x)`` of the value that was
handed out, not the float Optuna proposed before mapping it back: they can differ in the last
bit), so the proposal Optuna makes is told ``FAIL`` (ignored by TPE) and a canonical copy is
added; and when a told value would have to change (the chosen milestone moved deeper, or a
trial that had a value there diverged later), the study is rebuilt from the records in index
order.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from orchestrator.search.space import (
    Scalar,
    SearchSpace,
)
from orchestrator.search.tpe_records import (
    BAD,
    RUNNING,
    Encoding,
    Record,
    finite,
    frozen_fields,
    is_bad,
    plain,
    proposal_seed,
    rank_key,
    results_so_far,
)
from orchestrator.search.tpe_space import TpeCoordinates, single_valued
from orchestrator.trials import TrialState


@dataclass(frozen=True)
class TpeSettings:
    """The sampler's settings (``search.tpe`` in a spec); the seed is the sweep's."""

    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = True
    ranking: Literal["asha", "bohb"] = "bohb"  # measured: bench/search_bench.py
    wait_for_results: bool = True  # see TpeProposer.may_propose
    shape_explore: float = 0.0  # see TpeProposer.propose_pack
    pack_random_start: bool = True  # see TpeProposer.alone


class TpeProposer:
    """Proposes one trial at a time with Optuna's TPE, learning from every trial's outcome.

    ``propose`` hands out trial ``index`` (indices in increasing order); ``observe`` and
    ``end`` feed what the trials reported; ``adopt`` takes a trial from a journal as if it had
    been proposed (resume). Nothing here knows about Ray: the searcher calls these.
    """

    def __init__(
        self,
        space: SearchSpace,
        settings: TpeSettings,
        seed: int,
        metric: str,
        mode: Literal["max", "min"],
        milestones: Sequence[int],
        shape: Iterable[str] = (),
    ) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial told
        self.space = space
        self.settings = settings
        self.seed = seed
        self.metric = metric
        self.mode = mode
        self.milestones = tuple(sorted(int(m) for m in milestones))
        self.coords = TpeCoordinates(space)
        self.distributions = self.coords.distributions
        sampled = {d.name for d in space.sampled}
        # The shape fields this sweep samples: a pack proposes them once (module docstring).
        self.shape = tuple(name for name in self.distributions if name in set(shape) & sampled)
        searched = sum(1 for d in space.sampled if not single_valued(d))
        self.n_min = max(settings.n_startup_trials, searched + 1)
        self.records: dict[int, Record] = {}
        self.packs: dict[int, dict[str, Any]] = {}  # first index -> the pack's shape values
        self._reset_study()

    # --- pickling: Tune pickles its searcher; the study is rebuilt from the records ------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_study", "_handles", "_shown", "_dirty", "_pack_handles", "_pack_shown"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_study()

    # --- the searcher's calls -----------------------------------------------------------

    def propose(
        self, index: int, fixed: Mapping[str, Scalar] | None = None, unit: int | None = None
    ) -> dict[str, Any]:
        """The configuration of lone trial ``index``: the sampler's, with ``fixed`` values
        imposed (the trial's grid point). The trial is then pending. ``unit``: the first
        index of the fused pack it trains in, in a space that samples no shape field."""
        fixed = dict(fixed or {})
        proposed = self._ask(proposal_seed(self.seed, index), self.distributions, fixed)
        config = self.coords.config(proposed)
        config.update({name: value for name, value in fixed.items() if name in config})
        self._add(index, config, unit=unit)
        return config

    def propose_pack(self, first: int) -> dict[str, Any]:
        """The shape of the pack whose first trial is ``first``: one proposal of the shape
        fields, from one observation per pack; its members follow (``propose_member``).
        A ``shape_explore`` share of packs (a coin seeded by seed and ``first``) draws it at
        random instead: one observation per pack gives the model of shapes few points."""
        if first in self.packs:
            raise ValueError(f"pack {first} is already known to the sampler")
        shape_space = {name: self.distributions[name] for name in self.shape}
        coin = np.random.default_rng(proposal_seed(self.seed, first, 2)).random()
        explore = coin < self.settings.shape_explore
        proposed = self._ask(proposal_seed(self.seed, first, 1), shape_space, {}, explore)
        values = {name: self.coords.value(name, proposed[name]) for name in self.shape}
        self._add_pack(first, values)
        return dict(values)

    def propose_member(
        self, index: int, pack: int, fixed: Mapping[str, Scalar] | None = None
    ) -> dict[str, Any]:
        """The configuration of trial ``index`` in pack ``pack``: the pack's shape, and the
        sampler's proposal of everything else (``fixed`` imposed: the grid point)."""
        fixed = dict(fixed or {})
        rest = {n: d for n, d in self.distributions.items() if n not in self.shape}
        proposed = self._ask(proposal_seed(self.seed, index), rest, fixed)
        config = self.coords.config({**proposed, **self._shape_params(pack)})
        config.update(self.packs[pack])  # the shape's own values, not a round trip of them
        config.update({name: value for name, value in fixed.items() if name in config})
        self._add(index, config, pack)
        return config

    def single(self, first: int) -> None:
        """Pack ``first`` turned out to be one trial (its shape allowed no more, or the next
        grid point has another shape): it is a lone trial, as a journal will show it."""
        if self.packs.pop(first, None) is None:
            return
        self.records[first].pack = None
        self._study = None  # rebuilt as the records now say, when next used

    def _ask(
        self,
        seed: int,
        distributions: dict[str, Any],
        fixed: Mapping[str, Scalar],
        at_random: bool = False,
    ) -> Any:
        """One proposal from TPE (``at_random``: a uniform draw in caviar's coordinates) over
        ``distributions`` (``fixed`` pinned), as Optuna params. The proposal is told FAIL
        (ignored by TPE) at once: the study keeps the canonical copy that the caller adds,
        recomputed from the caviar values (module docstring)."""
        import optuna

        study = self._synced_study()
        multivariate = self.settings.multivariate
        pinned = {n: self.coords.param(n, v) for n, v in fixed.items() if n in distributions}
        with warnings.catch_warnings():  # group and PartialFixedSampler are "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            tpe = optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=self.settings.n_startup_trials,
                n_ei_candidates=self.settings.n_ei_candidates,
                multivariate=multivariate,
                group=multivariate,  # shape fields from one observation per pack
                constant_liar=True,
            )
            sampler: optuna.samplers.BaseSampler = tpe
            if at_random:
                sampler = optuna.samplers.RandomSampler(seed=seed)
            if pinned:
                sampler = optuna.samplers.PartialFixedSampler(pinned, tpe)
        study.sampler = sampler
        asked = study.ask(distributions)
        proposed = dict(asked.params)
        study.tell(asked, state=optuna.trial.TrialState.FAIL)
        return proposed

    def adopt(self, index: int, config: Mapping[str, Any], pack: int | None = None) -> None:
        """A trial the journal says was handed out (in pack ``pack``, if one): known as if
        proposed here. A pack's first member brings the pack's shape.

        Raises ``ValueError`` naming the parameter when the configuration is not one this
        space could propose (the spec changed since the journal was written)."""
        problem = self.coords.misfit(config)
        if problem:
            raise ValueError(problem)
        unit = pack
        if pack is not None and not self.shape:
            pack = None  # no sampled shape field: its members are lone trials to the sampler
        if pack is not None and pack not in self.packs:
            if pack != index:
                raise ValueError(f"trial {index} is in pack {pack}, whose first trial is unknown")
            self._add_pack(pack, {name: config[name] for name in self.shape})
        if pack is not None:
            shape = {name: config[name] for name in self.shape}
            if plain(shape) != plain(self.packs[pack]):
                raise ValueError(f"trial {index} has a shape other than its pack's: {shape}")
        self._add(index, dict(config), pack, unit)

    def observe(self, index: int, entries: Iterable[Mapping[str, Any]]) -> None:
        """Epoch results of trial ``index``, oldest first (repeats of known epochs are fine)."""
        record = self.records.get(index)
        if record is None:
            return
        changed = False
        for entry in entries:
            epoch = int(entry.get("epoch", 0))
            if entry.get("diverged") and not record.diverged:
                record.diverged, changed = True, True
            value = finite(entry.get(self.metric))
            if value is None:
                continue
            if record.last is None or epoch >= record.last[0]:
                record.last = (epoch, value)
            for milestone in self.milestones:
                if epoch >= milestone and milestone not in record.rungs:
                    record.rungs[milestone] = value
                    changed = True
        if changed:
            self._dirty.add(index)

    def end(self, index: int, state: TrialState) -> None:
        """Trial ``index`` ended (completed, stopped early, diverged or failed)."""
        record = self.records.get(index)
        if record is None or record.ended is not None:
            return
        record.ended = state
        self._dirty.add(index)

    def alone(self, index: int) -> bool:
        """Whether trial ``index`` is proposed alone, a shape of its own: one of the random
        start with ``pack_random_start`` off, in a space that samples a shape field. By
        default the random start packs, a random shape each, as ``random``'s first packs
        (measured: docs/performance.md, run 11)."""
        if self.settings.pack_random_start:
            return False
        return bool(self.shape) and self.in_random_start(index)

    def in_random_start(self, index: int) -> bool:
        """Whether trial ``index`` is one of the first ``n_startup_trials``."""
        return index < self.settings.n_startup_trials

    def may_propose(self, index: int, slots: int) -> bool:
        """Whether trial ``index`` is to be proposed now rather than when more results are in
        (``wait_for_results``). The random start never waits. After it, a proposal waits while
        fewer than ``n_startup_trials`` trials have a result (Optuna's TPE would still draw at
        random) or while ``slots`` units (fused packs or lone trials) already wait for their
        first one: Tune asks for a waiting trial per slot as soon as one starts, and a pack
        proposed then would be decided on what was known a whole pack earlier. Never waits
        when nothing is pending, so a sweep cannot stall."""
        if not self.settings.wait_for_results or self.in_random_start(index):
            return True
        told, blind = self._results_so_far()
        if blind == 0:
            return True
        return told >= self.settings.n_startup_trials and blind < max(1, slots)

    def blind_units(self) -> int:
        """Units proposed (a pack counts once) none of whose trials has a result yet."""
        return self._results_so_far()[1]

    def _results_so_far(self) -> tuple[int, int]:
        return results_so_far(self.records)

    def misfit(self, config: Mapping[str, Any]) -> str | None:
        """Why ``config`` is not a configuration of this space (None when it is)."""
        return self.coords.misfit(config)

    def study(self) -> Any:
        """The Optuna study the next proposal is made from, up to date with the records
        (for inspection: the proposer owns it)."""
        return self._synced_study()

    # --- what the sampler is shown ------------------------------------------------------

    def milestone(self) -> int:
        """The milestone trials are ranked at. ``asha``: the full budget, so a trial that went
        deeper ranks above one stopped earlier (caviar's ASHA-aware ranking). ``bohb``: the
        deepest milestone where ``n_min`` trials (not diverged or failed) have a value; the
        first milestone while none has that many."""
        if self.settings.ranking == "asha":
            return self.milestones[-1]
        chosen = self.milestones[0]
        for milestone in self.milestones:
            count = sum(1 for r in self.records.values() if milestone in r.rungs and not is_bad(r))
            if count >= self.n_min:
                chosen = milestone
        return chosen

    def encoding(self, record: Record, milestone: int) -> Encoding:
        """How ``record`` is told at ``milestone`` (see the module docstring)."""
        if is_bad(record):
            return BAD
        if milestone in record.rungs:
            return ("complete", record.rungs[milestone])
        if record.ended is None:
            return RUNNING
        reached = [m for m in self.milestones if m in record.rungs]
        if reached:
            return ("pruned", reached[-1], record.rungs[reached[-1]])
        if record.last is not None:
            return ("pruned", record.last[0], record.last[1])
        return BAD

    def pack_encoding(self, first: int, milestone: int) -> Encoding:
        """How pack ``first``'s shape trial is told: running while any member runs, then its
        median member (as ranked: a full value, then deeper, then better; the upper one of
        two). Not the best member: the best of 8 draws would rank a pack's shape above a lone
        trial's shape of the same worth, and TPE would keep to the shapes it packed first."""
        members = [r for r in self.records.values() if r.pack == first]
        if not members or any(r.ended is None and not r.diverged for r in members):
            return RUNNING
        encodings = (self.encoding(r, milestone) for r in members)
        ranked = sorted(encodings, key=lambda e: rank_key(e, self.mode))
        return ranked[len(ranked) // 2]

    # --- the study ------------------------------------------------------------------------

    def _reset_study(self) -> None:
        self._study: Any = None
        self._handles: dict[int, Any] = {}  # index -> the Optuna trial, while RUNNING there
        self._shown: dict[int, Encoding] = {}  # index -> what the study holds for it
        self._pack_handles: dict[int, Any] = {}  # the same for each pack's shape trial
        self._pack_shown: dict[int, Encoding] = {}
        self._dirty: set[int] = set(self.records)
        self._shown_at: int | None = None

    def _synced_study(self) -> Any:
        """The study, brought up to date with the records (rebuilt when a told value would
        have to change)."""
        milestone = self.milestone()
        if self._study is None or milestone != self._shown_at:
            return self._rebuild(milestone)
        packs = {self.records[i].pack for i in self._dirty} - {None}
        for index in sorted(self._dirty):
            wanted = self.encoding(self.records[index], milestone)
            shown = self._shown[index]
            if wanted == shown:
                continue
            if shown != RUNNING:
                return self._rebuild(milestone)  # a finished Optuna trial cannot change
            self._tell(self._handles.pop(index), wanted)
            self._shown[index] = wanted
        for first in sorted(packs):
            assert first is not None
            wanted = self.pack_encoding(first, milestone)
            shown = self._pack_shown[first]
            if wanted == shown:
                continue
            if shown != RUNNING:
                return self._rebuild(milestone)
            self._tell(self._pack_handles.pop(first), wanted)
            self._pack_shown[first] = wanted
        self._dirty.clear()
        return self._study

    def _rebuild(self, milestone: int) -> Any:
        import optuna

        direction = "maximize" if self.mode == "max" else "minimize"
        self._study = optuna.create_study(
            direction=direction, sampler=optuna.samplers.RandomSampler(seed=0)
        )
        self._handles, self._shown, self._dirty = {}, {}, set()
        self._pack_handles, self._pack_shown = {}, {}
        self._shown_at = milestone
        for index in sorted(self.records):
            record = self.records[index]
            if record.pack == index:  # a pack's shape trial comes before its first member
                wanted = self.pack_encoding(index, milestone)
                self._pack_shown[index] = wanted
                handle = self._enter(self._shape_params(index), wanted)
                if handle is not None:
                    self._pack_handles[index] = handle
            wanted = self.encoding(record, milestone)
            self._shown[index] = wanted
            handle = self._enter(self._trial_params(index), wanted)
            if handle is not None:
                self._handles[index] = handle
        return self._study

    def _add_pack(self, first: int, shape: dict[str, Any]) -> None:
        self.packs[first] = shape
        if self.records and first < max(self.records):
            self._study = None
        if self._study is not None:
            self._pack_shown[first] = RUNNING
            self._pack_handles[first] = self._enter(self._shape_params(first), RUNNING)

    def _add(
        self, index: int, config: dict[str, Any], pack: int | None = None, unit: int | None = None
    ) -> None:
        if index in self.records:
            raise ValueError(f"trial {index} is already known to the sampler")
        if self.records and index < max(self.records):
            self._study = None  # the study lists trials in index order: rebuilt when next used
        self.records[index] = Record(config, pack=pack, unit=pack if unit is None else unit)
        if self._study is not None:
            self._shown[index] = RUNNING
            self._handles[index] = self._enter(self._trial_params(index), RUNNING)

    def _shape_params(self, first: int) -> dict[str, Any]:
        return self.coords.params(self.packs[first])

    def _trial_params(self, index: int) -> dict[str, Any]:
        """A trial's study parameters: a pack member's lack the shape (its pack has them)."""
        record = self.records[index]
        params = self.coords.params(record.config)
        if record.pack is not None:
            params = {n: v for n, v in params.items() if n not in self.shape}
        return params

    def _enter(self, params: dict[str, Any], encoding: Encoding) -> Any:
        """Add a trial with ``params`` to the study (after all before it), shown as
        ``encoding``; returns the Optuna trial to tell later when it is running."""
        import optuna

        distributions = {name: self.distributions[name] for name in params}
        if encoding == RUNNING:
            study = self._study
            study.sampler = optuna.samplers.RandomSampler(seed=0)  # every value is fixed
            study.enqueue_trial(params)
            return study.ask(distributions)
        state, value, intermediate = frozen_fields(encoding)
        self._study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params=params,
                distributions=distributions,
                intermediate_values=intermediate,
            )
        )
        return None

    def _tell(self, handle: Any, encoding: Encoding) -> None:
        import optuna

        if encoding[0] == "complete":
            self._study.tell(handle, encoding[1])
        else:
            if encoding[0] == "pruned":
                handle.report(encoding[2], encoding[1])
            self._study.tell(handle, state=optuna.trial.TrialState.PRUNED)
