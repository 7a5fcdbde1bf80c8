"""One resume test case over every search strategy x scheduler (as Optuna runs one sampler test
over every sampler): a sweep killed part-way and rebuilt from its journal must be the sweep that
was killed, and must go on exactly as the uninterrupted one.

No Ray and no MLflow: a small driver plays Tune's part (slots, interleaved results, completions)
against the real :class:`RoundSearcher`, :class:`HalvingScheduler` and :class:`Journal`, and
journals what the observer journals. For each combination it checks, at the kill point, that
the rebuilt searcher (trials by index: config, round, state; regions; next index), scheduler
(rungs, bracket of every trial) and journal records equal the original's; then it drives both
with the same events to the end and checks that they make the same suggestions and decisions.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from orchestrator.engine.scheduler import HalvingScheduler
from orchestrator.engine.searcher import RoundSearcher
from orchestrator.search.plan import RoundPlan
from orchestrator.search.space import ChoiceDomain, GridDomain, RangeDomain, SearchSpace
from orchestrator.search.tpe import TpeSettings
from orchestrator.store.journal import RESUME_FROM, Journal, read_journal
from orchestrator.trials import Trial, classify_finished

BUDGET = 9
SLOTS = 3
MILESTONES = (1, 3, 9)

SPACES = {
    "random": SearchSpace(
        (
            RangeDomain("learning_rate", "log", 1e-4, 1.0),
            RangeDomain("momentum", "log1m", 0.5, 0.99),
        ),
        {"epochs": BUDGET},
    ),
    "grid": SearchSpace(
        (
            GridDomain("hidden_units", (32, 64, 128)),
            GridDomain("learning_rate", (0.001, 0.01, 0.1)),
        ),
        {"epochs": BUDGET},
    ),
    "zoom": SearchSpace(
        (
            RangeDomain("learning_rate", "log", 1e-4, 1.0),
            RangeDomain("momentum", "log1m", 0.5, 0.99),
        ),
        {"epochs": BUDGET},
    ),
    # Every kind of parameter TPE maps: log, log1m, a log integer, a categorical and a grid.
    "tpe": SearchSpace(
        (
            RangeDomain("learning_rate", "log", 1e-4, 1.0),
            RangeDomain("momentum", "log1m", 0.5, 0.99),
            RangeDomain("hidden_units", "log", 8, 128, integer=True),
            ChoiceDomain("activation", ("relu", "tanh")),
            GridDomain("batch_size", (16, 32)),
        ),
        {"epochs": BUDGET},
    ),
    # zoom whose later rounds TPE draws in the box: with a categorical and a grid, as tpe.
    "zoom_tpe": SearchSpace(
        (
            RangeDomain("learning_rate", "log", 1e-4, 1.0),
            RangeDomain("momentum", "log1m", 0.5, 0.99),
            ChoiceDomain("activation", ("relu", "tanh")),
            GridDomain("batch_size", (16, 32)),
        ),
        {"epochs": BUDGET},
    ),
}
PLANS = {  # rounds, samples per point
    "random": (1, 12),
    "grid": (1, 2),
    "zoom": (3, 6),
    "tpe": (1, 12),  # 24 trials, the first 6 at random: most are proposed by TPE
    "zoom_tpe": (3, 6),  # 36 trials (2 grid points), rounds 2 and 3 mostly from TPE
}


def _plan(strategy: str) -> RoundPlan:
    rounds, per_point = PLANS[strategy]
    tpe = TpeSettings(n_startup_trials=6) if strategy == "tpe" else None
    # zoom as a spec sets it by default: a share explored, the best kept from the whole sweep
    zoom: dict[str, Any] = {}
    if strategy in ("zoom", "zoom_tpe"):
        zoom = {"explore": 0.34, "keep_from": "sweep"}
    if strategy == "zoom_tpe":
        zoom["round_sampler"] = TpeSettings(n_startup_trials=4, ranking="asha")
    return RoundPlan(
        rounds, per_point, 5, 0.34, 0.1, "val_accuracy", "max", MILESTONES, BUDGET, tpe, **zoom
    )


def _score(config: dict[str, Any], epoch: int) -> float:
    """A deterministic learning curve whose height depends on the configuration."""
    quality = 1.0 / (1.0 + abs(math.log10(float(config["learning_rate"])) + 2.0))
    quality *= 1.0 - 0.1 * abs(float(config.get("momentum", 0.9)) - 0.9)
    quality *= 1.0 + 0.001 * float(config.get("hidden_units", 0))
    return quality * (1.0 - 0.5**epoch)


@dataclass
class Driver:
    """Tune's part: start trials while slots are free, deliver results in a seeded order."""

    searcher: RoundSearcher
    scheduler: HalvingScheduler | None
    journal: Journal
    prefix: str
    events: random.Random
    running: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[Any, ...]] = field(default_factory=list)  # suggestions and decisions
    finished: bool = False
    count: int = 0
    started: set[int] = field(default_factory=set)  # indices journaled as started

    def fill(self) -> None:
        while len(self.running) < SLOTS and not self.finished:
            trial_id = f"{self.prefix}{self.count}"
            suggested = self.searcher.suggest(trial_id)
            if suggested is None:
                return  # the round has not ended
            if suggested == Searcher.FINISHED:
                self.finished = True
                return
            self.count += 1
            assert isinstance(suggested, dict)
            config = {k: v for k, v in suggested.items() if k != RESUME_FROM}
            index = self.searcher.index_of[trial_id]
            planned = self.searcher.trials[index]
            start = 0
            if RESUME_FROM in suggested:  # a checkpoint per epoch: it goes on from there
                start = int(suggested[RESUME_FROM].rsplit("-", 1)[1])
            if index not in self.started:  # as the observer: a continued trial is known
                self.started.add(index)
                self.journal.append(
                    "trial", i=index, id=trial_id, round=planned.round, config=config
                )
            self.log.append(("suggest", index, sorted(config.items())))
            if self.scheduler is not None:
                self.scheduler.on_trial_add(None, _RayTrial(trial_id))
            self.running[trial_id] = {"index": index, "config": config, "epoch": start}

    def step(self) -> bool:
        """One result of one running trial; False when the sweep is over."""
        self.fill()
        if not self.running:
            return False
        trial_id = self.events.choice(sorted(self.running, key=lambda t: self.running[t]["index"]))
        state = self.running[trial_id]
        state["epoch"] += 1
        result = {"epoch": state["epoch"], "val_accuracy": _score(state["config"], state["epoch"])}
        self.journal.append("result", i=state["index"], r=result)
        self.journal.append(
            "checkpoint", i=state["index"], path=f"/ckpt/{state['index']}-{state['epoch']}"
        )
        decision = TrialScheduler.CONTINUE
        if self.scheduler is not None:
            decision = self.scheduler.on_trial_result(None, _RayTrial(trial_id), result)
        if decision != TrialScheduler.STOP:  # as Tune: a stopping result comes on completion
            self.searcher.on_trial_result(trial_id, result)
        self.log.append(("result", state["index"], state["epoch"], decision))
        if decision == TrialScheduler.STOP or state["epoch"] >= BUDGET:
            if self.scheduler is not None:
                self.scheduler.on_trial_complete(None, _RayTrial(trial_id), result)
            self.searcher.on_trial_complete(trial_id, result)
            ended = classify_finished(Trial(state["index"], {}, history=[result]), BUDGET)
            self.journal.append("end", i=state["index"], outcome=ended)
            del self.running[trial_id]
        return True


class _RayTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def _build(strategy: str, brackets: int | None, journal: Journal, prefix: str, seed: int) -> Driver:
    searcher = RoundSearcher(SPACES[strategy], _plan(strategy))
    scheduler = None
    if brackets is not None:
        scheduler = HalvingScheduler(
            searcher.index_of,
            seed=5,
            metric="val_accuracy",
            mode="max",
            time_attr="epoch",
            max_t=BUDGET,
            grace_period=1,
            reduction_factor=3,
            brackets=brackets,
        )
        scheduler.journal = journal
    return Driver(searcher, scheduler, journal, prefix, random.Random(seed))


def _searcher_state(searcher: RoundSearcher) -> dict[str, Any]:
    return {
        "round": searcher.round,
        "next_index": searcher.next_index,
        "regions": searcher.regions,
        "trials": {
            i: (t.round, sorted(t.config.items()), t.state, t.history[-1:] if t.state.ended else [])
            for i, t in sorted(searcher.trials.items())
        },
    }


def _scheduler_state(scheduler: HalvingScheduler | None, indices: range) -> Any:
    if scheduler is None:
        return None
    rungs = [[(r.epoch, dict(r.scores)) for r in b] for b in scheduler.halving.rungs]
    return rungs, [scheduler.halving.bracket_of(i) for i in indices]


def _records(trials: dict[int, Trial]) -> dict[int, Any]:
    return {
        i: (t.round, t.config, t.state, [e["epoch"] for e in t.history], t.checkpoint)
        for i, t in sorted(trials.items())
    }


SCHEDULERS = {"fifo": None, "asha1": 1, "asha2": 2, "asha3": 3}


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("strategy", list(SPACES))
def test_a_resumed_sweep_is_the_killed_sweep(strategy: str, scheduler: str, tmp_path: Path) -> None:
    brackets = SCHEDULERS[scheduler]
    # The uninterrupted sweep, for the end state to reach.
    whole = _build(strategy, brackets, Journal(tmp_path / "whole.jsonl"), "w", seed=1)
    while whole.step():
        pass
    whole.journal.close()
    total = whole.searcher.next_index
    rounds, per_point = PLANS[strategy]
    assert total == rounds * per_point * SPACES[strategy].grid_size()
    assert all(t.state.ended for t in whole.searcher.trials.values())
    if brackets is not None:  # ASHA stopped some trials: the rungs are exercised
        assert any(e[0] == "result" and e[3] == TrialScheduler.STOP for e in whole.log)

    # The same sweep killed in its middle (mid-round for zoom: some trials running).
    killed = _build(strategy, brackets, Journal(tmp_path / "killed.jsonl"), "k", seed=1)
    results = sum(1 for entry in whole.log if entry[0] == "result")
    for _ in range(results // 2):
        killed.step()
    killed.journal.close()
    assert killed.running, "the kill must catch trials running"

    # Rebuilt from the journal alone, under new Ray ids.
    state = read_journal(tmp_path / "killed.jsonl")
    resumed = _build(strategy, brackets, Journal(tmp_path / "killed.jsonl"), "r", seed=1)
    resumed.searcher.replay(state.trials)
    resumed.started = set(state.trials)
    if resumed.scheduler is not None:
        assert resumed.scheduler is not None and killed.scheduler is not None
        decisions = resumed.scheduler.replay(state.scheduler_calls)
        assert [theirs for theirs, _ in decisions] == [ours for _, ours in decisions]

    # The journal's records are the trials the killed driver saw (the observer's view).
    seen = {
        index: (t.round, t.config)
        for index, t in killed.searcher.trials.items()
        if index in state.trials
    }
    assert {i: (t.round, t.config) for i, t in state.trials.items()} == seen
    assert {i for i, t in state.trials.items() if not t.state.ended} == {
        s["index"] for s in killed.running.values()
    }
    # Searcher: the same plan, regions and ended trials; the running ones become continuations.
    theirs, ours = _searcher_state(killed.searcher), _searcher_state(resumed.searcher)
    continued = {t.index for unit in resumed.searcher.continuations for t in unit}
    assert continued == {i for i, t in killed.searcher.trials.items() if not t.state.ended}
    assert ours == theirs
    assert _scheduler_state(resumed.scheduler, range(total)) == _scheduler_state(
        killed.scheduler, range(total)
    )

    # Both go on with the same events: same suggestions, same decisions, same end.
    twin_events = random.Random(99)
    killed.events, resumed.events = random.Random(99), twin_events
    for trial_id, running in list(killed.running.items()):
        # The killed driver's running trials restart too (from their checkpoint), as the
        # resumed sweep's continuations do, so both see the same trials start.
        del killed.running[trial_id]
        checkpoint = f"/ckpt/{running['index']}-{running['epoch']}"
        killed.searcher.continuations.append([killed.searcher.trials[running["index"]]])
        killed.searcher.trials[running["index"]].checkpoint = checkpoint
        del killed.searcher.index_of[trial_id]
    killed.log.clear()
    killed.prefix, killed.count = "r", 0
    killed.journal = Journal(tmp_path / "continued.jsonl")
    while killed.step() | resumed.step():
        pass
    assert resumed.log == killed.log
    assert _searcher_state(resumed.searcher) == _searcher_state(killed.searcher)
    end = read_journal(tmp_path / "killed.jsonl").trials
    assert len(end) == total and all(t.state.ended for t in end.values())
    if strategy not in ("zoom", "tpe"):  # planned ahead: cannot depend on the order of events
        assert {i: (t.round, t.config) for i, t in end.items()} == {
            i: (t.round, t.config) for i, t in whole.searcher.trials.items()
        }
