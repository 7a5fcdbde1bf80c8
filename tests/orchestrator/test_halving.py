"""caviar's successive halving decides exactly as Ray Tune 2.60's ``ASHAScheduler`` (driven by
caviar until now), writes the same journal, and rebuilds from it exactly."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from orchestrator.engine.scheduler import HalvingScheduler
from orchestrator.search.halving import Decision, SuccessiveHalving
from orchestrator.store.journal import Journal, read_journal

METRIC = "val_accuracy"
# (max_t, grace_period, reduction_factor): integer rungs; fractional ones (2.5, 6.25: reached
# at epochs 3 and 7); a grace period above 1.
SHAPES = [(9, 1, 3), (10, 1, 2.5), (16, 2, 2)]
# NaN and infinite scores make numpy warn (an all-NaN rung, inf - inf), in Ray's ASHA as here.
NAN_WARNINGS = "ignore::RuntimeWarning:numpy"

DATA = Path(__file__).parent / "data"


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def _kwargs(shape: tuple[int, int, float], brackets: int, mode: str, **more: Any) -> dict:
    max_t, grace_period, reduction_factor = shape
    return dict(
        metric=METRIC,
        mode=mode,
        time_attr="epoch",
        max_t=max_t,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        brackets=brackets,
        **more,
    )


def _ours(n: int, seed: int, prefix: str = "t", **kwargs: Any) -> HalvingScheduler:
    return HalvingScheduler({f"{prefix}{i}": i for i in range(n)}, seed=seed, **kwargs)


def _nan(value: Any) -> Any:
    return "nan" if value != value else value


def _rungs(scheduler: Any) -> list[list[tuple]]:
    """Per bracket, from the lowest rung up: (epoch, {index: score}), NaN as "nan"."""
    if isinstance(scheduler, HalvingScheduler):
        rungs = [[(r.epoch, r.scores) for r in b] for b in scheduler.halving.rungs]
    else:
        rungs = [
            [(m, {int(k.lstrip("tn")): v for k, v in r.items()}) for m, r in reversed(b._rungs)]
            for b in scheduler._brackets
        ]
    return [[(e, {i: _nan(v) for i, v in s.items()}) for e, s in bracket] for bracket in rungs]


def _cutoffs(scheduler: Any) -> list[list[Any]]:
    if isinstance(scheduler, HalvingScheduler):
        return [[_nan(r.cutoff) for r in b] for b in scheduler.halving.rungs]
    return [[_nan(b.cutoff(r)) for _, r in reversed(b._rungs)] for b in scheduler._brackets]


def _bracket(scheduler: Any, prefix: str, index: int) -> int | None:
    if isinstance(scheduler, HalvingScheduler):
        return scheduler.halving.bracket_of(index)
    bracket = scheduler._trial_info.get(f"{prefix}{index}")
    return None if bracket is None else scheduler._brackets.index(bracket)


def _add(schedulers: list[tuple[Any, str]], index: int) -> None:
    """Tune adds a trial. Ray's own ASHA draws its bracket from numpy's global state: the test
    gives it the bracket caviar's seeded draw gave the others."""
    for scheduler, prefix in schedulers:
        scheduler.on_trial_add(None, _Trial(f"{prefix}{index}"))
    drawn = [_bracket(s, p, index) for s, p in schedulers if type(s) is not ASHAScheduler]
    for scheduler, prefix in schedulers:
        if type(scheduler) is ASHAScheduler:
            scheduler._trial_info[f"{prefix}{index}"] = scheduler._brackets[drawn[0]]
    assert {_bracket(s, p, index) for s, p in schedulers} == {drawn[0]}


def _value(rng: random.Random, skill: float, epoch: int, max_t: int) -> float:
    roll = rng.random()
    if roll < 0.04:
        return math.nan
    if roll < 0.06:
        return math.inf
    if roll < 0.08:
        return -math.inf
    return round(skill * epoch / max_t, 1)  # coarse: scores equal to a cutoff happen


def _drive(
    schedulers: list[tuple[Any, str]], trials: dict, rng: random.Random, results: int, max_t: int
) -> list[tuple[int, int, str]]:
    """Interleaved results from several trials, like Tune delivers them, given to every
    scheduler at once (each knows the trials by its own Ray ids: prefix + index). Trials are
    added as the sweep goes, some report two epochs at once, some results lack the metric,
    some trials are removed. Asserts that all decide alike and hold the same rungs after every
    call; returns the decisions (``results`` of them, unless every trial ended before)."""
    decisions: list[tuple[int, int, str]] = []
    while len(decisions) < results:
        waiting = [i for i, s in trials.items() if not s["added"]]
        live = [i for i, s in trials.items() if s["added"] and s["running"]]
        if waiting and (not live or rng.random() < 0.3):
            _add(schedulers, waiting[0])
            trials[waiting[0]]["added"] = True
            continue
        if not live:
            break
        index = rng.choice(live)
        state = trials[index]
        if rng.random() < 0.02:
            for scheduler, prefix in schedulers:
                scheduler.on_trial_remove(None, _Trial(f"{prefix}{index}"))
            state["running"] = False
            continue
        state["epoch"] += rng.choice([1, 1, 1, 2])
        result: dict[str, Any] = {"epoch": state["epoch"]}
        if rng.random() > 0.04:
            result[METRIC] = _value(rng, state["skill"], state["epoch"], max_t)
        said = {
            s.on_trial_result(None, _Trial(f"{prefix}{index}"), dict(result))
            for s, prefix in schedulers
        }
        assert len(said) == 1, (index, result, said)
        decision = said.pop()
        decisions.append((index, state["epoch"], decision))
        if decision == TrialScheduler.STOP or state["epoch"] >= max_t:
            for scheduler, prefix in schedulers:
                scheduler.on_trial_complete(None, _Trial(f"{prefix}{index}"), dict(result))
            state["running"] = False
        reference = _rungs(schedulers[0][0])
        assert all(_rungs(s) == reference for s, _ in schedulers[1:]), (index, result)
    reference = _cutoffs(schedulers[0][0])
    assert all(_cutoffs(s) == reference for s, _ in schedulers[1:])
    return decisions


def _trials(n: int, seed: int) -> dict[int, dict[str, Any]]:
    rng = random.Random(seed)
    return {
        i: {"epoch": 0, "skill": rng.random(), "running": True, "added": False} for i in range(n)
    }


# --- conformance with Ray's ASHAScheduler ------------------------------------------------------


@pytest.mark.filterwarnings(NAN_WARNINGS)
@pytest.mark.parametrize("stop_last_trials", [True, False])
@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("brackets", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_decision_and_rung_is_rays(
    shape: tuple[int, int, float], brackets: int, mode: str, stop_last_trials: bool
) -> None:
    """50 trials, two sweep seeds, to the end: NaN and infinite values, ties with the cutoff,
    trials stopped at rungs, removed, and completing at max_t."""
    max_t = shape[0]
    kwargs = _kwargs(shape, brackets, mode, stop_last_trials=stop_last_trials)
    for seed in (0, 7):
        asha, ours = ASHAScheduler(**kwargs), _ours(50, seed, **kwargs)
        trials = _trials(50, seed)
        decisions = _drive([(asha, "t"), (ours, "t")], trials, random.Random(seed), 10**4, max_t)
        assert all(not s["running"] for s in trials.values())  # to the end
        assert len(decisions) >= 120
        assert any(d == "STOP" and e < max_t for _, e, d in decisions)  # halving stopped some
        assert sum(1 for _, e, _ in decisions if e >= max_t) >= 2  # some reached max_t
        drawn = SuccessiveHalving(max_t, shape[1], shape[2], brackets, mode, seed)
        for index in range(50):
            drawn.add(index)
        assert len({drawn.bracket_of(i) for i in range(50)}) == brackets  # each one exercised


@pytest.mark.filterwarnings(NAN_WARNINGS)
@pytest.mark.parametrize("brackets", [1, 2, 3])
def test_journals_written_before_this_scheduler_replay_and_are_written_alike(
    tmp_path: Path, brackets: int
) -> None:
    """tests/orchestrator/data holds journals written by the ASHA caviar used before (Ray's
    ASHAScheduler driven by index, retired): an interrupted sweep from then resumes under this
    scheduler, which decides every journaled result alike and writes the same lines."""
    old = DATA / f"journaled_asha_brackets{brackets}.jsonl"
    kwargs = _kwargs((9, 1, 3), brackets, "max")
    replayed = HalvingScheduler({}, 3, **kwargs).replay(read_journal(old).scheduler_calls)
    assert len(replayed) >= 120
    assert [then for then, _ in replayed] == [now for _, now in replayed]

    ours = HalvingScheduler({f"t{i}": i for i in range(50)}, 3, **kwargs)
    ours.journal = Journal(tmp_path / "new.jsonl")
    _drive([(ours, "t")], _trials(50, 1), random.Random(1), 10**4, 9)
    ours.journal.close()

    def lines(path: Path) -> list[dict]:
        events = [json.loads(line) for line in path.read_text().splitlines()]
        return [{k: v for k, v in e.items() if k != "t"} for e in events]

    assert lines(tmp_path / "new.jsonl") == lines(old)


# --- the journal -------------------------------------------------------------------------------


@pytest.mark.filterwarnings(NAN_WARNINGS)
@pytest.mark.parametrize("brackets", [1, 2, 3])
def test_rebuilt_from_the_journal_whatever_the_global_random_state(
    tmp_path: Path, brackets: int
) -> None:
    """A sweep killed after 120 results: the rebuilt scheduler has the same brackets and rungs,
    replays every decision, and goes on deciding as the killed one would have."""
    kwargs = _kwargs((27, 1, 3), brackets, "max")
    np.random.seed(1)
    original = _ours(30, 7, **kwargs)
    original.journal = Journal(tmp_path / "j.jsonl")
    trials = _trials(30, 11)
    for i in range(30):
        _add([(original, "t")], i)
        trials[i]["added"] = True
    assigned = [original.halving.bracket_of(i) for i in range(30)]
    assert len(set(assigned)) == brackets
    decisions = _drive([(original, "t")], trials, random.Random(5), 120, 27)
    original.journal.close()
    assert len(decisions) == 120

    np.random.seed(2)
    calls = read_journal(tmp_path / "j.jsonl").scheduler_calls
    rebuilt = _ours(30, 7, "n", **kwargs)  # the resumed sweep: new Ray ids, same indices
    assert rebuilt.replay(calls[:30]) == []
    assert [rebuilt.halving.bracket_of(i) for i in range(30)] == assigned
    replayed = rebuilt.replay(calls[30:])
    assert [d for _, _, d in decisions] == [live for live, _ in replayed]
    assert [live for live, _ in replayed] == [again for _, again in replayed]
    assert _rungs(rebuilt) == _rungs(original)

    for i, state in trials.items():  # continued trials are added again, keeping their bracket
        if state["running"]:
            rebuilt.on_trial_add(None, _Trial(f"n{i}"))
    later = _drive([(original, "t"), (rebuilt, "n")], trials, random.Random(9), 300, 27)
    assert any(d == "STOP" for _, _, d in later)


# --- the algorithm ------------------------------------------------------------------------------


def _record(halving: SuccessiveHalving, values: list[float], epoch: int = 1) -> None:
    """Trials 1000, 1001, ... reach epoch ``epoch`` (the first rung of bracket 0 by default)
    with these values."""
    for index, value in enumerate(values, start=1000):
        halving.add(index)
        halving.decide(index, epoch, value)


def test_rungs_are_grace_period_times_powers_of_the_reduction_factor() -> None:
    def epochs(halving: SuccessiveHalving) -> list[list[float]]:
        return [[r.epoch for r in bracket] for bracket in halving.rungs]

    assert epochs(SuccessiveHalving(27, 1, 3, brackets=3)) == [[1, 3, 9, 27], [3, 9, 27], [9, 27]]
    assert epochs(SuccessiveHalving(20, 2, 3, brackets=2)) == [[2, 6, 18], [6, 18]]
    halving = SuccessiveHalving(10, 1, 2.5, brackets=1)
    assert epochs(halving) == [[1, 2.5, 6.25]]
    halving.add(0)
    halving.decide(0, 2, 0.5)  # not yet at 2.5: judged at rung 1 only
    assert [dict(r.scores) for r in halving.rungs[0]] == [{0: 0.5}, {}, {}]


def test_a_rung_keeps_one_trial_in_reduction_factor() -> None:
    """The cutoff is the 1 - 1/rf quantile of the scores recorded there: scores 0..99 give
    74.25 for rf 4 (a quarter go on), 49.5 for rf 2; equal to the cutoff goes on."""
    for reduction_factor, cutoff in ((4, 74.25), (2, 49.5)):
        halving = SuccessiveHalving(16, 1, reduction_factor)
        _record(halving, [float(v) for v in range(100)])  # ascending: each goes on
        assert halving.rungs[0][0].cutoff == cutoff
        for index, value, decision in ((0, cutoff - 0.01, "STOP"), (1, cutoff, "CONTINUE")):
            halving.add(index)
            assert halving.decide(index, 1, value) == Decision(decision)
        assert halving.rungs[0][0].scores[0] == cutoff - 0.01  # a stopped trial is recorded too


def test_min_mode_keeps_the_lowest_and_nan_has_no_cutoff() -> None:
    halving = SuccessiveHalving(9, 1, 3, mode="min")
    _record(halving, [0.2, 0.3, 0.4])
    assert dict(halving.rungs[0][0].scores) == {1000: -0.2, 1001: -0.3, 1002: -0.4}
    halving.add(0)
    halving.add(1)
    assert halving.decide(0, 1, 0.5) is Decision.STOP
    assert halving.decide(1, 1, 0.1) is Decision.CONTINUE

    halving = SuccessiveHalving(9, 1, 3)
    halving.add(0)
    with pytest.warns(RuntimeWarning, match="All-NaN"):
        _record(halving, [math.nan, math.nan])
        assert halving.decide(0, 1, -5.0) is Decision.CONTINUE  # no cutoff to fall below
    halving.add(1)
    assert halving.decide(1, 1, math.nan) is Decision.CONTINUE  # NaN is below nothing
    assert halving.rungs[0][0].cutoff == -5.0  # NaN ignored: the one number recorded


def test_max_epochs_stops_unrecorded_and_completion_records() -> None:
    halving = SuccessiveHalving(9, 1, 3)
    halving.add(0)
    assert halving.decide(0, 9, 0.1) is Decision.STOP
    assert all(not r.scores for r in halving.rungs[0])
    halving.complete(0, 9, 0.1)
    assert dict(halving.rungs[0][2].scores) == {0: 0.1} and halving.bracket_of(0) is None
    halving.complete(0, 9, 0.9)  # no longer known: nothing changes
    assert dict(halving.rungs[0][2].scores) == {0: 0.1}
    going_on = SuccessiveHalving(9, 1, 3, stop_last_trials=False)
    going_on.add(0)
    assert going_on.decide(0, 9, 0.1) is Decision.CONTINUE
    assert dict(going_on.rungs[0][2].scores) == {0: 0.1}


def test_a_skipped_rung_is_judged_later_unless_trials_go_on_at_max() -> None:
    """Ray's rule, kept: a trial first seen at epoch 3 is recorded at rung 3, and its next
    result is judged at rung 1 (it was never recorded there), unless stop_last_trials is off."""
    for stop_last_trials, below in ((True, Decision.STOP), (False, Decision.CONTINUE)):
        halving = SuccessiveHalving(9, 1, 3, stop_last_trials=stop_last_trials)
        _record(halving, [0.5, 0.6, 0.7])
        halving.add(0)
        assert halving.decide(0, 3, 0.1) is Decision.CONTINUE  # rung 3 was empty
        assert halving.decide(0, 4, 0.1) is below


def test_brackets_depend_on_seed_and_index_only_and_removal_keeps_scores() -> None:
    first, second = SuccessiveHalving(27, 1, 3, 3, seed=5), SuccessiveHalving(27, 1, 3, 3, seed=5)
    for index in range(40):
        first.add(index)
    for index in reversed(range(40)):
        second.add(index)
        second.add(index)  # added again: keeps its bracket
    drawn = [first.bracket_of(i) for i in range(40)]
    assert drawn == [second.bracket_of(i) for i in range(40)] and len(set(drawn)) == 3
    other = SuccessiveHalving(27, 1, 3, 3, seed=6)
    for index in range(40):
        other.add(index)
    assert [other.bracket_of(i) for i in range(40)] != drawn
    lowest = first.rungs[drawn[0]][0]
    first.decide(0, lowest.epoch, 0.5)
    first.remove(0)
    assert first.bracket_of(0) is None and 0 in first.rungs[drawn[0]][0].scores
    with pytest.raises(KeyError):  # as in Ray: a result of a trial it does not know
        first.decide(0, lowest.epoch + 1, 0.5)


@pytest.mark.parametrize(
    "args", [(0, 1, 3), (9, 10, 3), (9, 0, 3), (9, 1, 1), (9, 1, 3, 0)], ids=str
)
def test_impossible_shapes_are_refused(args: tuple) -> None:
    with pytest.raises(ValueError, match="successive halving needs"):
        SuccessiveHalving(*args)


# --- results that arrive together: a pack's members at one step ----------------------------------


def test_members_judged_together_keep_the_best_third_not_the_first_and_chance() -> None:
    """Eight members reach an empty rung at once (reduction factor 3): judged together, the
    three best go on. Judged one by one in index order, the first (the worst here) would go
    on with no cutoff to meet, and so would every later one that beats the ones before it."""
    values = [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80]
    together = SuccessiveHalving(27, 3, 3, mode="max")
    one_by_one = SuccessiveHalving(27, 3, 3, mode="max")
    for index in range(8):
        together.add(index)
        one_by_one.add(index)
    decisions = together.decide_together([(i, 3, v) for i, v in enumerate(values)])
    assert [d is Decision.CONTINUE for d in decisions] == [False] * 5 + [True] * 3
    assert [one_by_one.decide(i, 3, v) for i, v in enumerate(values)] == [Decision.CONTINUE] * 8
    # Both record every score at the rung: later trials meet the same cutoff.
    assert together.rungs[0][0].scores == one_by_one.rungs[0][0].scores
    # In min mode the lowest three go on; a member at max_epochs stops unrecorded.
    low = SuccessiveHalving(27, 3, 3, mode="min")
    for index in range(9):
        low.add(index)
    judged = low.decide_together([(i, 3, v) for i, v in enumerate(values)] + [(8, 27, 0.0)])
    assert [d is Decision.CONTINUE for d in judged] == [True] * 3 + [False] * 6
    assert 8 not in low.rungs[0][-1].scores


def test_members_judged_together_meet_the_rung_earlier_trials_built() -> None:
    """With scores already at the rung the cutoff is over them and the members together; a
    single result is judged exactly as ``decide`` judges it."""
    halving = SuccessiveHalving(27, 3, 3, mode="max")
    _record(halving, [0.5, 0.6, 0.7, 0.8, 0.9, 0.95], epoch=3)
    for index in (0, 1, 2):
        halving.add(index)
    decisions = halving.decide_together([(0, 3, 0.99), (1, 3, 0.85), (2, 3, 0.4)])
    scores = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.85, 0.4]
    cutoff = float(np.percentile(scores, 100 * (1 - 1 / 3)))
    assert [d is Decision.CONTINUE for d in decisions] == [v >= cutoff for v in (0.99, 0.85, 0.4)]
    assert decisions == [Decision.CONTINUE, Decision.STOP, Decision.STOP]
    single, alone = SuccessiveHalving(27, 3, 3), SuccessiveHalving(27, 3, 3)
    for h in (single, alone):
        _record(h, [0.5, 0.9], epoch=3)
        h.add(7)
    assert single.decide_together([(7, 3, 0.8)]) == [alone.decide(7, 3, 0.8)]
    assert single.rungs == alone.rungs


class _PackTrial(_Trial):
    pass


def _pack_result(step: int, members: dict[int, float]) -> dict[str, Any]:
    from orchestrator.trials import MEMBER_RESULTS

    return {
        "training_iteration": step,
        MEMBER_RESULTS: [(i, [{"epoch": step, METRIC: v}]) for i, v in members.items()],
    }


def test_a_pack_is_judged_together_and_its_journal_replays_to_the_same_rungs(
    tmp_path: Path,
) -> None:
    """Two packs of eight through the scheduler: each step's members are one ``results``
    journal line; a scheduler rebuilt from the journal (a resume) replays every decision and
    holds the same rungs, and the first pack sends its three best members on."""
    members = {"p0": list(range(8)), "p1": list(range(8, 16))}
    rng = random.Random(3)
    values = {i: rng.random() for i in range(16)}
    kwargs = _kwargs((27, 3, 3), 1, "max")
    live = HalvingScheduler({}, 5, members_of=members, **kwargs)
    live.journal = Journal(tmp_path / "j.jsonl")
    for trial_id in members:
        live.on_trial_add(None, _PackTrial(trial_id))
    first = live.on_trial_result(
        None, _PackTrial("p0"), _pack_result(3, {i: values[i] for i in range(8)})
    )
    assert first == TrialScheduler.CONTINUE
    best_three = sorted(range(8), key=values.__getitem__)[-3:]
    assert sorted(i for i in range(8) if i not in live.left_at) == sorted(best_three)
    live.on_trial_result(
        None, _PackTrial("p1"), _pack_result(3, {i: values[i] for i in range(8, 16)})
    )
    live.on_trial_result(
        None, _PackTrial("p0"), _pack_result(9, {i: values[i] + 0.1 for i in best_three})
    )
    live.journal.close()

    calls = read_journal(tmp_path / "j.jsonl").scheduler_calls
    assert [c["op"] for c in calls].count("results") == 3
    rebuilt = HalvingScheduler({}, 5, members_of=members, **kwargs)
    replayed = rebuilt.replay(calls)
    assert len(replayed) == 8 + 8 + 3
    assert [then for then, _ in replayed] == [now for _, now in replayed]
    assert _rungs(rebuilt) == _rungs(live)
