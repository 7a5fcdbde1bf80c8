"""strategy: tpe: Optuna's TPE in caviar's scales, learning from early-stopped, diverged and
running trials, proposing packs, and resuming from the journal.

No Ray and no MLflow except in the last test, which runs a real packed sweep: the proposer and
the searcher are plain Python, driven here the way Tune drives them. Randomness is checked with
fixed seeds, against random search or a uniform law, so that each check can fail.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import signal
import statistics
import subprocess
import time
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState as OptunaState
from scipy.stats import kstest

from orchestrator.engine import live
from orchestrator.engine.packs import packer_for
from orchestrator.engine.search_setup import round_plan
from orchestrator.engine.searcher import ReplayError, RoundSearcher
from orchestrator.search.packing import Packer
from orchestrator.search.plan import RoundPlan
from orchestrator.search.space import (
    ChoiceDomain,
    GridDomain,
    RangeDomain,
    SearchSpace,
    sample_configs,
    to_transformed,
)
from orchestrator.search.tpe import TpeProposer, TpeSettings
from orchestrator.search.tpe_space import optuna_distributions
from orchestrator.spec import SweepSpec, parse_spec
from orchestrator.store.journal import read_journal
from orchestrator.trials import MEMBER_LAST, MEMBER_RESULTS, PACK_MEMBERS, Trial, TrialState

SPACE = SearchSpace(
    (
        RangeDomain("learning_rate", "log", 1e-4, 1.0),
        RangeDomain("momentum", "log1m", 0.5, 0.999),
        RangeDomain("hidden_units", "log", 8, 128, integer=True),
        ChoiceDomain("activation", ("relu", "tanh")),
    ),
    {"epochs": 9},
)
MILESTONES = (1, 3, 9)


def _proposer(
    seed: int = 0, startup: int = 8, space: SearchSpace = SPACE, ranking: str = "asha"
) -> TpeProposer:
    settings = TpeSettings(n_startup_trials=startup, ranking=ranking)  # type: ignore[arg-type]
    return TpeProposer(space, settings, seed, "val_accuracy", "max", MILESTONES)


def _quality(config: dict[str, Any]) -> float:
    """A narrow optimum at learning rate 1e-2, momentum 0.99, 32 units, tanh (0..1)."""
    lr = math.log10(float(config["learning_rate"])) + 2.0
    beta = math.log10(1.0 - float(config["momentum"])) + 2.0
    units = math.log2(int(config["hidden_units"]) / 32)
    score = math.exp(-(lr**2) / 0.3 - beta**2 / 0.5 - units**2 / 4)
    return score * (1.0 if config["activation"] == "tanh" else 0.8)


def _curve(config: dict[str, Any], epoch: int) -> float:
    return _quality(config) * (1.0 - 0.5**epoch)


# --- caviar's coordinates ------------------------------------------------------------------


def test_each_scale_is_searched_in_caviars_coordinate() -> None:
    space = SearchSpace((*SPACE.domains, GridDomain("batch_size", (16, 32))), {"epochs": 9})
    assert optuna_distributions(space) == {
        "learning_rate": FloatDistribution(-4.0, 0.0),  # log10 x
        "momentum": FloatDistribution(math.log10(1 - 0.999), math.log10(0.5)),  # log10(1 - x)
        "hidden_units": IntDistribution(8, 128, log=True),  # integers as their (log) bins
        "activation": CategoricalDistribution(["relu", "tanh"]),
        "batch_size": CategoricalDistribution([16, 32]),  # a grid: fixed per trial
    }


def test_the_random_start_is_uniform_in_the_transformed_coordinate() -> None:
    proposer = _proposer(seed=3, startup=1000)
    configs = [proposer.propose(i) for i in range(300)]
    lr = [math.log10(c["learning_rate"]) for c in configs]
    beta = [math.log10(1 - c["momentum"]) for c in configs]
    assert kstest(lr, "uniform", args=(-4, 4)).pvalue > 0.001
    assert kstest(beta, "uniform", args=(-3, math.log10(0.5) + 3)).pvalue > 0.001
    # The check can fail: the learning rate is far from uniform in x itself.
    assert kstest([c["learning_rate"] for c in configs], "uniform").pvalue < 0.001
    units = [c["hidden_units"] for c in configs]
    assert all(isinstance(u, int) and 8 <= u <= 128 for u in units)
    # Each integer its log bin: as many below 32 (2 octaves of 4) as from 32 up.
    assert 0.4 < sum(u < 32 for u in units) / len(units) < 0.6


def test_a_proposal_is_within_its_domain_and_its_study_values_are_recomputed_from_it() -> None:
    proposer = _proposer()
    for index in range(20):
        config = proposer.propose(index)
        proposer.observe(index, [{"epoch": 9, "val_accuracy": _quality(config)}])
        proposer.end(index, TrialState.COMPLETED)
        assert proposer.misfit(config) is None
    trials = proposer.study().get_trials(states=(OptunaState.COMPLETE,))
    assert len(trials) == 20
    for index, trial in enumerate(trials):
        config = proposer.records[index].config
        assert trial.params["momentum"] == float(to_transformed("log1m", config["momentum"]))
        assert trial.params["hidden_units"] == config["hidden_units"]


# --- learning ------------------------------------------------------------------------------


def _best_after(configs_for, trials: int) -> float:
    return max(_quality(c) for c in configs_for(trials))


def _tpe_run(seed: int, trials: int) -> list[dict[str, Any]]:
    proposer = _proposer(seed=seed, startup=8)
    configs = []
    for index in range(trials):
        config = proposer.propose(index)
        proposer.observe(index, [{"epoch": 9, "val_accuracy": _quality(config)}])
        proposer.end(index, TrialState.COMPLETED)
        configs.append(config)
    return configs


def test_tpe_finds_better_trials_than_random_search_with_the_same_budget() -> None:
    seeds = range(5)
    tpe = [max(_quality(c) for c in _tpe_run(seed, 40)) for seed in seeds]
    rnd = [max(_quality(c) for c in sample_configs(SPACE, 40, seed)) for seed in seeds]
    assert statistics.median(tpe) > statistics.median(rnd) + 0.1, (tpe, rnd)
    assert min(tpe) > statistics.median(rnd), (tpe, rnd)


def test_pending_trials_are_running_in_the_study_so_a_configuration_is_not_proposed_twice() -> None:
    """With the constant liar, each pending trial pushes the next proposal away from it; the
    same proposals made without the pending ones (same seeds) cluster more."""
    spread_with, spread_without = [], []
    for seed in range(5):
        proposer = _proposer(seed=seed, startup=8)
        for index in range(10):
            config = proposer.propose(index)
            proposer.observe(index, [{"epoch": 9, "val_accuracy": _quality(config)}])
            proposer.end(index, TrialState.COMPLETED)
        alone = []
        for index in range(10, 18):
            fresh = copy.deepcopy(proposer)  # its study is rebuilt from its records
            for pending in range(10, index):
                fresh.records.pop(pending, None)
            alone.append(fresh.propose(index))
        pending = [proposer.propose(index) for index in range(10, 18)]
        running = proposer.study().get_trials(states=(OptunaState.RUNNING,))
        assert len(running) == 8
        spread_with.append(_mean_distance(pending))
        spread_without.append(_mean_distance(alone))
    assert statistics.mean(spread_with) > 1.2 * statistics.mean(spread_without), (
        spread_with,
        spread_without,
    )


def _mean_distance(configs: list[dict[str, Any]]) -> float:
    points = [
        (
            math.log10(c["learning_rate"]) / 4,
            math.log10(1 - c["momentum"]) / 2.7,
            math.log2(c["hidden_units"]) / 4,
        )
        for c in configs
    ]
    return statistics.mean(math.dist(a, b) for a, b in combinations(points, 2))


# --- early-stopped, diverged and failed trials ----------------------------------------------


def _shown(proposer: TpeProposer) -> dict[int, Any]:
    """The study's trial for each caviar index: its trials in index order, less the FAIL
    records of the raw proposals (see ``tpe.py``)."""
    kept = [t for t in proposer.study().trials if t.state != OptunaState.FAIL]
    return dict(enumerate(kept))


def test_bohb_rule_ranks_at_the_deepest_rung_with_enough_trials() -> None:
    """n_min = max(n_startup_trials 3, 2 parameters + 1) = 3 trials with a value at a rung."""
    space = SearchSpace(SPACE.domains[:2], {"epochs": 9})
    proposer = _proposer(startup=3, space=space, ranking="bohb")
    for index in range(9):
        proposer.propose(index)

    def feed(index: int, epochs: int, state: TrialState | None, diverge: bool = False) -> None:
        entries = [{"epoch": e, "val_accuracy": 0.1 * index + 0.01 * e} for e in range(1, epochs)]
        entries.append(
            {
                "epoch": epochs,
                "val_accuracy": float("nan") if diverge else 0.1 * index + 0.01 * epochs,
                "diverged": diverge,
            }
        )
        proposer.observe(index, entries)
        if state is not None:
            proposer.end(index, state)

    feed(0, 9, TrialState.COMPLETED)  # reached 9: the only one, so ranked at 3
    feed(1, 3, TrialState.STOPPED_EARLY)
    feed(2, 5, None)  # running past rung 3: its rung-3 value counts already
    feed(3, 1, TrialState.STOPPED_EARLY)  # stopped at rung 1: below every rung-3 trial
    feed(4, 1, None)  # running, not at rung 3 yet: a constant liar
    feed(5, 2, TrialState.DIVERGED, diverge=True)
    proposer.end(6, TrialState.FAILED)
    feed(7, 4, None, diverge=True)  # its value at 3 does not count: it diverged after
    assert proposer.milestone() == 3
    shown = _shown(proposer)
    assert [shown[i].state for i in range(9)] == [
        OptunaState.COMPLETE,
        OptunaState.COMPLETE,
        OptunaState.COMPLETE,
        OptunaState.PRUNED,
        OptunaState.RUNNING,
        OptunaState.PRUNED,
        OptunaState.PRUNED,
        OptunaState.PRUNED,
        OptunaState.RUNNING,
    ]
    assert [shown[i].value for i in range(3)] == pytest.approx([0.03, 0.13, 0.23])  # at rung 3
    assert shown[3].intermediate_values == {1: pytest.approx(0.31)}
    for bad in (5, 6, 7):  # no value at all: the last place in Optuna's ranking
        assert shown[bad].intermediate_values == {} and shown[bad].value is None
    # A fourth trial reaching rung 9 would not move it (3 needed there); here two do not.
    feed(8, 9, TrialState.COMPLETED)
    assert proposer.milestone() == 3
    feed(4, 9, TrialState.COMPLETED)
    assert proposer.milestone() == 9  # 0, 4, 8 reached the full budget
    shown = _shown(proposer)
    assert shown[1].state == OptunaState.PRUNED  # stopped at rung 3, below the budget now
    assert shown[1].intermediate_values == {3: pytest.approx(0.13)}
    assert shown[0].value == pytest.approx(0.09)


def test_asha_ranking_puts_deeper_trials_first_as_caviar_and_optuna_rank_them() -> None:
    """The default: ranked at the full budget; a trial stopped at a rung is told PRUNED with
    its value there, which Optuna ranks after every full-budget trial, deeper first."""
    proposer = _proposer(startup=3)
    for index in range(5):
        proposer.propose(index)
    proposer.observe(0, [{"epoch": e, "val_accuracy": 0.5} for e in (1, 3, 9)])
    proposer.end(0, TrialState.COMPLETED)
    proposer.observe(1, [{"epoch": e, "val_accuracy": 0.9} for e in (1, 3)])
    proposer.end(1, TrialState.STOPPED_EARLY)
    proposer.observe(2, [{"epoch": 1, "val_accuracy": 0.95}])
    proposer.end(2, TrialState.STOPPED_EARLY)
    proposer.observe(3, [{"epoch": e, "val_accuracy": 0.99} for e in (1, 3)])  # running on
    assert proposer.milestone() == 9
    shown = _shown(proposer)
    assert shown[0].state == OptunaState.COMPLETE and shown[0].value == 0.5
    assert shown[1].state == shown[2].state == OptunaState.PRUNED
    assert shown[1].intermediate_values == {3: 0.9} and shown[2].intermediate_values == {1: 0.95}
    assert shown[3].state == shown[4].state == OptunaState.RUNNING


def test_diverged_trials_count_as_bad_and_tpe_stays_out_of_where_they_diverge() -> None:
    """Better with a higher learning rate up to 0.05, diverged above: random search spends a
    third of its trials diverging; TPE, told the diverged ones are bad, far fewer."""

    def outcome(config: dict[str, Any]) -> float | None:
        if config["learning_rate"] > 0.05:
            return None
        return _quality({**config, "learning_rate": 0.01}) * (
            1 + math.log10(config["learning_rate"] / 0.05) / 8
        )

    diverged = []
    for seed in range(5):
        proposer = _proposer(seed=seed, startup=8)
        for index in range(40):
            config = proposer.propose(index)
            value = outcome(config)
            if value is None:
                proposer.observe(index, [{"epoch": 1, "val_accuracy": None, "diverged": True}])
                proposer.end(index, TrialState.DIVERGED)
            else:
                proposer.observe(index, [{"epoch": 9, "val_accuracy": value}])
                proposer.end(index, TrialState.COMPLETED)
            if index >= 8:
                diverged.append(value is None)
    share = sum(diverged) / len(diverged)
    random_share = math.log10(1 / 0.05) / 4  # 0.33
    assert share < random_share / 2, share


# --- the searcher: packs, resume, pickling --------------------------------------------------


SPEC_SPACE = {
    "learning_rate": {"scale": "log", "low": 1e-3, "high": 1.0},
    "momentum": {"scale": "log1m", "low": 0.8, "high": 0.999},
    "hidden_units": {"scale": "log", "low": 16, "high": 256, "integer": True},
    "layers": {"values": [1, 2, 3]},
    "batch_size": {"values": [32, 64, 128]},
}


def _spec(
    pack_size: Any = 4, space: dict | None = None, fixed: dict | None = None, **search: Any
) -> SweepSpec:
    return parse_spec(
        {
            "name": "tpe",
            "data": {"source": "digits"},
            "trainable": "bn_softmax_mlp",
            "space": space or SPEC_SPACE,
            "fixed": {"optimizer": "sgd", **(fixed or {})},
            "search": {"strategy": "tpe", "num_trials": 40, "seed": 3, **search},
            "scheduler": {
                "kind": "asha",
                "grace_period": 1,
                "reduction_factor": 3,
                "max_epochs": 9,
            },
            "objective": {"metric": "val_accuracy", "mode": "max"},
            "resources": {"pack_size": pack_size},
        }
    )


def _searcher(spec: SweepSpec, sweep_id: str | None = None, slots: int = 4) -> RoundSearcher:
    """Four slots: four packs may wait for their first result at once."""
    packer = packer_for(spec, n_features=64, n_classes=10, slots=2)
    return RoundSearcher(
        spec.search_space(),
        round_plan(spec, list(MILESTONES)),
        sweep_id=sweep_id,
        packer=packer,
        slots=slots,
    )


SHAPE = ("hidden_units", "layers", "batch_size")


def _pack_step(searcher: RoundSearcher, trial_id: str, epochs: dict[int, list[int]]) -> dict:
    members = [
        [
            i,
            [
                {
                    "epoch": e,
                    "val_accuracy": _quality({**searcher.trials[i].config, "activation": "tanh"})
                    * (1 - 0.5**e),
                }
                for e in es
            ],
        ]
        for i, es in epochs.items()
    ]
    last = [[i, entries[-1]] for i, entries in members if entries]
    return {MEMBER_RESULTS: members, MEMBER_LAST: last}


def test_a_pack_shares_one_proposed_shape_and_each_member_gets_its_own_other_values() -> None:
    searcher = _searcher(_spec(tpe={"n_startup_trials": 2, "pack_random_start": False}))
    # The random start (pack_random_start off): each trial alone, with a shape of its own.
    alone = [searcher.suggest(f"t{number}") for number in range(2)]
    assert all(isinstance(c, dict) and PACK_MEMBERS not in c for c in alone)
    for number, config in enumerate(alone):
        value = _quality({**config, "activation": "tanh"})  # type: ignore[arg-type]
        searcher.on_trial_complete(f"t{number}", {"epoch": 9, "val_accuracy": value})
    for number in range(6):
        suggested = searcher.suggest(f"p{number}")
        assert isinstance(suggested, dict)
        members = [config for _, config in suggested[PACK_MEMBERS]]
        assert len(members) == 4
        assert len({tuple(m[name] for name in SHAPE) for m in members}) == 1
        assert len({m["learning_rate"] for m in members}) == 4
        assert len({m["momentum"] for m in members}) == 4
        # Every member is in the sampler's study: the head as proposed, the others with the
        # head's shape pinned and their own proposals of the rest.
        step = _pack_step(
            searcher, f"p{number}", {i: [1, 2, 3] for i, _ in suggested[PACK_MEMBERS]}
        )
        searcher.on_trial_complete(f"p{number}", step)
    # Every trial told (stopped at epoch 3 of 9), and each pack's shape once: a shape trial
    # with the shape fields only, its members without them (one observation per pack).
    assert searcher.proposer is not None
    told = searcher.proposer.study().get_trials(states=(OptunaState.COMPLETE, OptunaState.PRUNED))
    sampled_shape = {"hidden_units", "layers", "batch_size"}
    assert len([t for t in told if set(t.params) == sampled_shape]) == 6
    assert len([t for t in told if not set(t.params) & sampled_shape]) == 24
    assert len(told) == 2 + 6 + 24


def test_pack_random_start_packs_the_random_start_each_pack_a_random_shape() -> None:
    """pack_random_start (the default): the start's trials train in packs (one shape each,
    every member its own values), as strategy random's first packs do; proposals then wait
    for results as before, and the sampler is told each pack's shape once."""
    searcher = _searcher(_spec(tpe={"n_startup_trials": 6}), slots=2)
    packs = [searcher.suggest(f"s{number}") for number in range(2)]
    shapes = []
    for suggested in packs:
        assert isinstance(suggested, dict) and PACK_MEMBERS in suggested
        members = [config for _, config in suggested[PACK_MEMBERS]]
        assert len(members) == 4
        assert len({tuple(m[name] for name in SHAPE) for m in members}) == 1
        assert len({m["learning_rate"] for m in members}) == 4
        shapes.append(tuple(members[0][name] for name in SHAPE))
    assert shapes[0] != shapes[1]
    assert searcher.suggest("wait") is None  # past the start, nothing has a result yet
    for number, suggested in enumerate(packs):
        assert isinstance(suggested, dict)
        step = _pack_step(
            searcher, f"s{number}", {i: [1, 2, 3] for i, _ in suggested[PACK_MEMBERS]}
        )
        searcher.on_trial_complete(f"s{number}", step)
    after = searcher.suggest("p0")
    assert isinstance(after, dict) and PACK_MEMBERS in after
    assert searcher.proposer is not None
    told = searcher.proposer.study().get_trials(states=(OptunaState.COMPLETE, OptunaState.PRUNED))
    assert len([t for t in told if set(t.params) == set(SHAPE)]) == 2
    # Off, the same start is six lone trials, each with a shape of its own.
    lone = _searcher(_spec(tpe={"n_startup_trials": 6, "pack_random_start": False}), slots=2)
    first = lone.suggest("t0")
    assert isinstance(first, dict) and PACK_MEMBERS not in first


def test_a_resumed_packed_tpe_sweep_proposes_what_the_killed_one_would_have() -> None:
    """The journal's view of a kill: four trials alone (the random start) and two packs
    ended, one pack running (a member stopped at rung 1 left it), one started; rebuilt from
    it, the searcher's next proposals are the killed one's. Ranked by BOHB's rule, which
    ranks at rung 3 here: whether member 9 has ended decides how it is shown."""
    spec = _spec(tpe={"n_startup_trials": 4, "ranking": "bohb", "pack_random_start": False})
    observer = SimpleNamespace(left_at={})
    live.register("tpe-live", live.LiveSweep(None, None, observer=observer))  # type: ignore[arg-type]
    try:
        killed = _searcher(spec, "tpe-live")
        for number in range(4):
            config = killed.suggest(f"t{number}")
            assert isinstance(config, dict) and PACK_MEMBERS not in config
            result = {"epoch": 3, "val_accuracy": 0.1 * number}
            killed.on_trial_complete(f"t{number}", {**result, "epoch_results": [result]})
        for number in range(4):
            killed.suggest(f"p{number}")  # packs 4-7, 8-11, 12-15, 16-19
        for trial_id, epochs in (
            ("p0", {4: [1, 2, 3], 5: [1, 2, 3], 6: [1, 2, 3], 7: [1]}),
            ("p1", {8: [1, 2, 3], 9: [1, 2, 3], 10: [1], 11: [1]}),
        ):
            killed.on_trial_complete(trial_id, _pack_step(killed, trial_id, epochs))
        observer.left_at[13] = 1  # the scheduler stopped member 13 at rung 1
        killed.on_trial_result(
            "p2", _pack_step(killed, "p2", {12: [1, 2, 3], 13: [1], 14: [1, 2], 15: [1]})
        )
        journal = _journal_of(killed, stopped={13})  # pack 16-19: started, nothing reported
        assert killed.proposer is not None and killed.proposer.milestone() == 3
        resumed = _searcher(spec, "tpe-live")
        resumed.replay(journal)
        assert {i: t.config for i, t in resumed.trials.items()} == {
            i: t.config for i, t in killed.trials.items()
        }
        assert [[t.index for t in unit] for unit in resumed.continuations] == [
            [12, 14, 15],
            [16, 17, 18, 19],
        ]
        for unit in resumed.continuations[:]:
            resumed.suggest(f"r{unit[0].index}")  # the continuations go first
        assert resumed.suggest("next") == killed.suggest("p4")
        assert resumed.suggest("next2") == killed.suggest("p5")
    finally:
        live.unregister("tpe-live")


def _journal_of(searcher: RoundSearcher, stopped: set[int]) -> dict[int, Trial]:
    """What the observer would have journaled: every member's epochs and how it ended."""
    journal: dict[int, Trial] = {}
    assert searcher.proposer is not None
    for index, trial in searcher.trials.items():
        record = searcher.proposer.records[index]
        copy_ = Trial(index, dict(trial.config), trial.round, trial.trial_id, pack=trial.pack)
        copy_.history = [
            {"epoch": e, "val_accuracy": v} for e, v in sorted(_history(record).items())
        ]
        copy_.state = TrialState.STOPPED_EARLY if index in stopped else trial.state
        journal[index] = copy_
    return journal


def _history(record: Any) -> dict[int, float]:
    history = dict(record.rungs)
    if record.last is not None:
        history[record.last[0]] = record.last[1]
    return history


def test_a_journal_the_space_cannot_have_proposed_stops_the_resume() -> None:
    spec = _spec(pack_size=1)
    searcher = _searcher(spec)
    config = {
        **searcher.original.fixed,
        "learning_rate": 5.0,
        "momentum": 0.9,
        "hidden_units": 32,
        "layers": 1,
        "batch_size": 32,
    }
    with pytest.raises(ReplayError, match=r"learning_rate=5\.0 is outside log\[0\.001, 1\]"):
        searcher.replay({0: Trial(0, config, 1, "t0")})


def test_a_pickled_tpe_searcher_proposes_the_same_as_the_original() -> None:
    searcher = _searcher(_spec(pack_size=1))
    for index in range(12):
        config = searcher.suggest(f"t{index}")
        assert isinstance(config, dict)
        searcher.on_trial_complete(
            f"t{index}", {"epoch": 9, "val_accuracy": _quality({**config, "activation": "tanh"})}
        )
    clone = pickle.loads(pickle.dumps(searcher))
    assert [clone.suggest(f"c{i}") for i in range(3)] == [
        searcher.suggest(f"s{i}") for i in range(3)
    ]


# --- the spec -------------------------------------------------------------------------------


def test_tpe_settings_are_documented_defaulted_and_only_for_tpe() -> None:
    spec = _spec(tpe={"n_startup_trials": 5})
    assert round_plan(spec, [9]).tpe == TpeSettings(n_startup_trials=5)
    assert round_plan(_spec(), [9]).tpe == TpeSettings()
    assert "tpe search, 40 trials" in spec.summary()
    schema = SweepSpec.model_json_schema()
    tpe = schema["$defs"]["TpeSpec"]["properties"]
    assert {"n_startup_trials", "n_ei_candidates", "multivariate"} <= set(tpe)
    assert all(field.get("description") for field in tpe.values())
    with pytest.raises(Exception, match="tpe settings only apply to strategy: tpe"):
        parse_spec({**_spec().model_dump(mode="json"), "search": {"strategy": "random", "tpe": {}}})


def test_zoom_takes_tpe_settings_only_with_the_tpe_sampler() -> None:
    base = _spec().model_dump(mode="json")
    zoom = parse_spec(
        {**base, "search": {"strategy": "zoom", "sampler": "tpe", "tpe": {"n_startup_trials": 3}}}
    )
    plan = round_plan(zoom, [9])
    assert plan.tpe is None  # rounds are planned; only the box share is TPE's
    assert plan.round_sampler == TpeSettings(n_startup_trials=3, ranking="asha")
    assert (
        round_plan(parse_spec({**base, "search": {"strategy": "zoom"}}), [9]).round_sampler is None
    )
    with pytest.raises(Exception, match="or to zoom with sampler: tpe"):
        parse_spec({**base, "search": {"strategy": "zoom", "tpe": {}}})
    with pytest.raises(Exception, match="sampler only applies to strategy: zoom"):
        parse_spec({**base, "search": {"strategy": "tpe", "sampler": "tpe"}})


# --- a real sweep: Ray, MLflow, packs, ASHA, Ctrl-C and --resume -----------------------------

SWEEP = """
name: digits-tpe
data: {source: digits, seed: 0}
space:
  learning_rate: {scale: log, low: 1.0e-4, high: 1.0}
  momentum: {scale: log1m, low: 0.5, high: 0.999}
  hidden_units: {scale: log, low: 8, high: 64, integer: true}
  batch_size: {values: [32, 64]}
fixed: {optimizer: sgd, layers: 1}
search: {strategy: tpe, num_trials: 30, seed: 1, tpe: {n_startup_trials: 6}}
scheduler: {kind: asha, grace_period: 1, reduction_factor: 3, max_epochs: 9}
"""


@pytest.mark.integration
def test_a_packed_tpe_sweep_interrupted_and_resumed_keeps_its_trials(tmp_path: Path) -> None:
    """Through real Ray and MLflow: Ctrl-C part-way, then --resume; the trials that ran keep
    their configurations, the sweep ends with every trial once, and the parent run has what
    the other strategies give it (importance, the best trial)."""
    from conftest import CAVIAR, clean_env, run_caviar
    from mlflow import MlflowClient

    (tmp_path / "spec.yaml").write_text(SWEEP)
    process = subprocess.Popen(
        [CAVIAR, "run", "spec.yaml"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            journals = list((tmp_path / "caviar_runs").glob("digits-tpe/*/journal.jsonl"))
            if journals and journals[0].read_text().count('"e":"end"') >= 10:
                break
            time.sleep(0.1)
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, output[-3000:]
    before = read_journal(journals[0]).trials
    assert 10 <= len(before) < 30
    assert any(t.pack is not None for t in before.values())  # fused packs ran

    final = run_caviar("run", "spec.yaml", "--resume", cwd=tmp_path)
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-3000:]
    assert "trials:          30 (" in final.stdout
    after = read_journal(journals[0]).trials
    assert {i: t.config for i, t in before.items()} == {i: after[i].config for i in before}
    assert sorted(after) == list(range(30)) and all(t.state.ended for t in after.values())

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("digits-tpe")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("caviar.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.strategy"] == "tpe"
    assert sorted(int(c.data.tags["caviar.trial_index"]) for c in children) == list(range(30))
    assert any(k.startswith("importance.") for k in parent.data.metrics)
    assert parent.data.tags["caviar.best_run_id"] in {c.info.run_id for c in children}
    for child in children:
        index = int(child.data.tags["caviar.trial_index"])
        assert float(child.data.params["learning_rate"]) == after[index].config["learning_rate"]


@pytest.mark.parametrize("pack_random_start", [True, False])
def test_packs_of_one_are_lone_trials_and_a_mixed_sweep_resumes_exactly(
    pack_random_start: bool,
) -> None:
    """A shape whose pack holds one trial (large networks under pack_size auto) makes a lone
    trial, as the journal records it; a sweep of packs and lone trials, rebuilt from its
    journal, proposes what it would have, its random start packed or alone."""
    space = SearchSpace(
        (
            RangeDomain("learning_rate", "log", 1e-4, 1.0),
            RangeDomain("hidden_units", "log", 8, 128, integer=True),
        ),
        {"epochs": 9},
    )
    packer = Packer(
        shape_fields=("hidden_units",),
        sampled=frozenset({"hidden_units"}),
        shape_key=lambda config: config["hidden_units"],
        size_for=lambda config, waiting: 1 if config["hidden_units"] > 32 else 3,
    )
    settings = TpeSettings(3, pack_random_start=pack_random_start)
    plan = RoundPlan(1, 40, 2, 0.25, 0.1, "val_accuracy", "max", MILESTONES, 9, settings)

    def quality(config: dict[str, Any]) -> float:
        return 1 / (1 + abs(math.log10(config["learning_rate"]) + 2)) - config["hidden_units"] / 1e3

    killed = RoundSearcher(space, plan, packer=packer, slots=4)  # 3 wait for results at once
    sizes = []
    for number in range(12):
        suggested = killed.suggest(f"k{number}")
        assert isinstance(suggested, dict)
        members = suggested.get(PACK_MEMBERS) or [[killed.index_of[f"k{number}"], suggested]]
        sizes.append(len(members))
        if number < 9:  # the last three stay running
            last = [[i, {"epoch": 9, "val_accuracy": quality(c)}] for i, c in members]
            result = {"epoch": 9, "val_accuracy": quality(members[0][1])}
            # A pack's last step, as a pack reports it: each member's epochs and its newest.
            step = {MEMBER_RESULTS: [[i, [entry]] for i, entry in last], MEMBER_LAST: last}
            packed = PACK_MEMBERS in suggested
            killed.on_trial_complete(f"k{number}", step if packed else result)
    assert 1 in sizes[3:] and 3 in sizes[3:]  # after the random start: packs and lone trials
    assert killed.proposer is not None
    for index, trial in killed.trials.items():  # a pack of one is not a pack anywhere
        assert (trial.pack is None) == (killed.proposer.records[index].pack is None)
    journal = {}
    for index, trial in killed.trials.items():
        copy_ = Trial(index, dict(trial.config), 1, trial.trial_id, pack=trial.pack)
        copy_.state = trial.state
        copy_.history = list(trial.history)
        journal[index] = copy_
    resumed = RoundSearcher(space, plan, packer=packer, slots=4)
    resumed.replay(journal)
    for unit in resumed.continuations[:]:
        resumed.suggest(f"r{unit[0].index}")
    assert [resumed.suggest(f"n{i}") for i in range(3)] == [
        killed.suggest(f"m{i}") for i in range(3)
    ]


def test_a_packs_shape_is_told_its_median_member_once_every_member_has_ended() -> None:
    proposer = TpeProposer(
        SPACE, TpeSettings(1), 0, "val_accuracy", "max", MILESTONES, shape=("hidden_units",)
    )
    shape = proposer.propose_pack(0)
    members = [proposer.propose_member(i, 0) for i in range(3)]
    assert {m["hidden_units"] for m in members} == {shape["hidden_units"]}
    for index, value in enumerate((0.2, 0.9, 0.5)):
        proposer.observe(index, [{"epoch": e, "val_accuracy": value} for e in (1, 3, 9)])
        if index < 2:
            proposer.end(index, TrialState.COMPLETED)
    assert proposer.pack_encoding(0, 9) == ("running",)  # member 2 still trains
    proposer.end(2, TrialState.COMPLETED)
    assert proposer.pack_encoding(0, 9) == ("complete", 0.5)  # not the best member's 0.9
    (told,) = [t for t in _shown(proposer).values() if set(t.params) == {"hidden_units"}]
    assert told.state == OptunaState.COMPLETE and told.value == 0.5


def _report_first_rung(searcher: RoundSearcher, trial_id: str, value: float) -> None:
    """Every member of Tune trial ``trial_id`` reaches rung 1 (and runs on)."""
    members = searcher.members_of.get(trial_id, (searcher.index_of[trial_id],))
    epochs = {index: [1] for index in members}
    if trial_id in searcher.members_of:
        searcher.on_trial_result(trial_id, _pack_step(searcher, trial_id, epochs))
    else:
        searcher.on_trial_result(trial_id, {"epoch": 1, "val_accuracy": value})


def test_after_the_random_start_tpe_waits_for_results_then_keeps_one_blind_pack_per_slot() -> None:
    spec = _spec(tpe={"n_startup_trials": 4, "pack_random_start": False})
    searcher = _searcher(spec, slots=2)
    for number in range(4):  # the random start never waits
        assert isinstance(searcher.suggest(f"t{number}"), dict)
    # No start trial has a result: TPE would draw at random, so the first pack waits.
    assert searcher.suggest("p0") is None
    for number in range(3):
        _report_first_rung(searcher, f"t{number}", 0.1 * number)
    assert searcher.suggest("p0") is None  # 3 of 4 results
    _report_first_rung(searcher, "t3", 0.3)
    assert PACK_MEMBERS in searcher.suggest("p0")
    assert PACK_MEMBERS in searcher.suggest("p1")
    assert searcher.suggest("p2") is None  # two packs (one per slot) wait for a result
    _report_first_rung(searcher, "p0", 0.5)
    assert PACK_MEMBERS in searcher.suggest("p2")
    assert searcher.suggest("p3") is None


def test_waiting_for_results_never_stalls_a_sweep_with_nothing_pending() -> None:
    spec = _spec(tpe={"n_startup_trials": 4})
    searcher = _searcher(spec, slots=2)
    for number in range(4):
        searcher.suggest(f"t{number}")
        searcher.on_trial_complete(f"t{number}", {"epoch": 0})  # ended with no value at all
    assert searcher.proposer is not None and searcher.proposer.blind_units() == 0
    assert isinstance(searcher.suggest("p0"), dict)


def test_without_waiting_tpe_proposes_whenever_tune_asks() -> None:
    spec = _spec(tpe={"n_startup_trials": 4, "wait_for_results": False})
    searcher = _searcher(spec, slots=2)
    proposed = [searcher.suggest(f"t{number}") for number in range(8)]
    assert all(isinstance(config, dict) for config in proposed)


def _pack_shapes(shape_explore: float, packs: int = 100) -> list[dict[str, Any]]:
    """Pack shapes proposed after 12 lone trials that say tanh and ~32 units are good."""
    settings = TpeSettings(n_startup_trials=8, shape_explore=shape_explore)
    proposer = TpeProposer(
        SPACE, settings, 3, "val_accuracy", "max", MILESTONES, shape=("hidden_units", "activation")
    )
    for index in range(12):
        config = proposer.propose(index)
        curve = [{"epoch": e, "val_accuracy": _curve(config, e)} for e in MILESTONES]
        proposer.observe(index, curve)
        proposer.end(index, TrialState.COMPLETED)
    return [proposer.propose_pack(100 + 10 * i) for i in range(packs)]


def test_shape_explore_draws_that_share_of_pack_shapes_at_random() -> None:
    """TPE sends most packs to the shapes its few observations favour; shape_explore: 1 draws
    every pack's shape uniformly on caviar's scales, and 0.5 lands between (the share is a
    seeded coin per pack, so proposals stay reproducible)."""
    tanh = {p: sum(s["activation"] == "tanh" for s in _pack_shapes(p)) for p in (0.0, 0.5, 1.0)}
    assert tanh[0.0] >= 80, tanh  # TPE's own choice
    assert 38 <= tanh[1.0] <= 62, tanh  # a fair coin over 100 packs
    assert tanh[1.0] < tanh[0.5] < tanh[0.0], tanh
    assert _pack_shapes(0.5, 10) == _pack_shapes(0.5, 10)


# --- a space that samples no shape field: every trial has one shape, and packs ---------------


def _one_shape_spec(**tpe: Any) -> SweepSpec:
    """The optimizer's values searched for one network: no shape field is sampled."""
    return _spec(
        "auto",
        space={name: SPEC_SPACE[name] for name in ("learning_rate", "momentum")},
        fixed={"hidden_units": 32, "layers": 2, "batch_size": 64, "activation": "tanh"},
        tpe={"n_startup_trials": 4, **tpe},
    )


def test_a_space_without_a_sampled_shape_field_packs_tpe_trials_each_its_own_proposal() -> None:
    searcher = _searcher(_one_shape_spec(), slots=2)
    assert searcher.proposer is not None and searcher.proposer.shape == ()
    first = searcher.suggest("p0")  # the random start packs: every member has the one shape
    assert isinstance(first, dict) and len(first[PACK_MEMBERS]) == 5
    members = dict(first[PACK_MEMBERS])
    assert len({c["learning_rate"] for c in members.values()}) == 5
    assert {(c["hidden_units"], c["layers"], c["batch_size"]) for c in members.values()} == {
        (32, 2, 64)
    }
    # To the sampler each member is a lone trial with every parameter (no shape trial), and
    # the pack is one unit while it waits for a result.
    for index in members:
        record = searcher.proposer.records[index]
        assert (record.pack, record.unit) == (None, 0)
    shown = searcher.proposer.study().get_trials(deepcopy=False, states=(OptunaState.RUNNING,))
    assert [set(t.params) for t in shown] == [{"learning_rate", "momentum"}] * 5
    assert searcher.suggest("p1") is None  # past the random start: no result yet
    _report_first_rung(searcher, "p0", 0.0)
    second, third = searcher.suggest("p1"), searcher.suggest("p2")
    assert isinstance(second, dict) and isinstance(third, dict)
    assert len(second[PACK_MEMBERS]) == len(third[PACK_MEMBERS]) == 5
    assert searcher.suggest("p3") is None  # one blind pack per slot, not one per member
    _report_first_rung(searcher, "p1", 0.0)
    assert PACK_MEMBERS in searcher.suggest("p3")


def test_a_resumed_one_shape_packed_tpe_sweep_proposes_what_the_killed_one_would_have() -> None:
    spec = _one_shape_spec(wait_for_results=False)
    killed = _searcher(spec, slots=2)
    for number in range(5):
        suggested = killed.suggest(f"k{number}")
        assert isinstance(suggested, dict) and PACK_MEMBERS in suggested
        if number < 3:  # the last two packs stay running
            epochs = {index: [1, 2, 3] for index, _ in suggested[PACK_MEMBERS]}
            killed.on_trial_complete(f"k{number}", _pack_step(killed, f"k{number}", epochs))
    resumed = _searcher(spec, slots=2)
    resumed.replay(_journal_of(killed, stopped=set()))
    assert resumed.proposer is not None and killed.proposer is not None
    assert resumed.proposer.records == killed.proposer.records
    for unit in resumed.continuations[:]:
        resumed.suggest(f"r{unit[0].index}")
    assert [resumed.suggest(f"n{i}") for i in range(2)] == [
        killed.suggest(f"m{i}") for i in range(2)
    ]
