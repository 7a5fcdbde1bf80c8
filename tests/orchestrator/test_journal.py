"""The journal, and the searcher and ASHA rebuilt from it: a resumed sweep must be the sweep
that was killed (same indices, configurations, rounds and rungs), never a new one."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ray.tune.search import Searcher

from orchestrator.engine.scheduler import HalvingScheduler
from orchestrator.engine.searcher import ReplayError, RoundSearcher
from orchestrator.search.plan import RoundPlan
from orchestrator.search.space import RangeDomain, SearchSpace
from orchestrator.store.journal import (
    RESUME_FROM,
    Journal,
    JournalError,
    JournalWriteError,
    read_journal,
)
from orchestrator.trials import TrialState

SPACE = SearchSpace((RangeDomain("learning_rate", "log", 1e-4, 1.0),), {"epochs": 4})


def _plan(rounds: int, per_round: int = 4) -> RoundPlan:
    return RoundPlan(rounds, per_round, 7, 0.5, 0.1, "val_accuracy", "max", (1, 2, 4), 4)


def _journal_trial(journal: Journal, index: int, trial_id: str, round_: int, config: dict) -> None:
    journal.append("trial", i=index, id=trial_id, round=round_, config=config)


# --- the file -------------------------------------------------------------------------------


def test_events_read_back_with_one_entry_per_epoch(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    _journal_trial(journal, 0, "a", 1, {"learning_rate": 0.1})
    for epoch in (1, 2, 3, 2, 3, 4):  # restarted from a checkpoint after epoch 1
        journal.append("result", i=0, r={"epoch": epoch, "val_accuracy": epoch / 10})
    journal.append("checkpoint", i=0, path="/x/checkpoint_000001")
    journal.append("end", i=0, outcome="completed")
    journal.close()
    state = read_journal(tmp_path / "j.jsonl")
    trial = state.trials[0]
    assert [e["epoch"] for e in trial.history] == [1, 2, 3, 4]
    assert (trial.checkpoint, trial.state) == ("/x/checkpoint_000001", TrialState.COMPLETED)


def test_a_line_cut_by_the_kill_is_dropped_and_damage_inside_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    _journal_trial(journal, 0, "a", 1, {"learning_rate": 0.1})
    journal.close()
    with path.open("a") as file:
        file.write('{"e":"result","i":0,"r":{"ep')  # what a SIGKILL mid-write leaves
    assert read_journal(path).trials[0].history == []
    path.write_text(path.read_text().replace('"e":"trial"', '"e":"tr') + "\n{}\n")
    with pytest.raises(JournalError, match="line 1"):
        read_journal(path)


def test_a_resumed_writer_cuts_the_torn_line_off_before_it_appends(tmp_path: Path) -> None:
    """A kill (or a full disk) mid-write leaves a torn last line; the next writer starts on a
    line of its own, so the journal reads back whole however many times this happens."""
    path = tmp_path / "j.jsonl"
    for round_ in range(3):
        journal = Journal(path)
        _journal_trial(journal, round_, f"t{round_}", 1, {"learning_rate": 0.1})
        journal.append("result", i=round_, r={"epoch": 1, "val_accuracy": 0.5})
        journal.close()
        with path.open("a") as file:
            file.write('{"e":"result","i":0,"r":{"epoch":2,"val_')  # torn by the kill
    state = read_journal(path)
    assert sorted(state.trials) == [0, 1, 2]
    assert all(len(trial.history) == 1 for trial in state.trials.values())
    Journal(path).append("end", i=2, outcome="completed")
    assert read_journal(path).trials[2].state is TrialState.COMPLETED
    assert path.read_text().count('"val_"') == 0 and path.read_text().endswith("\n")


def test_a_failed_write_raises_at_once_and_leaves_no_partial_line(tmp_path: Path) -> None:
    """/dev/full answers every write with ENOSPC: the error names the full file system."""
    journal = Journal(Path("/dev/full"))
    with pytest.raises(JournalWriteError, match="is full"):
        journal.append("end", i=0, outcome="completed")
    journal.append("end", i=1, outcome="completed")  # a closed journal takes nothing more


def test_absent_journal_is_an_empty_sweep_and_a_pickled_journal_holds_no_file(
    tmp_path: Path,
) -> None:
    assert read_journal(tmp_path / "none.jsonl").trials == {}
    journal = Journal(tmp_path / "j.jsonl")
    journal.append("end", i=0, outcome="failed")
    clone = pickle.loads(pickle.dumps(journal))
    clone.append("end", i=1, outcome="failed")  # reopens for append; nothing is lost
    journal.close()
    clone.close()
    assert len((tmp_path / "j.jsonl").read_text().splitlines()) == 2


# --- the searcher ------------------------------------------------------------------------


def _run_searcher(searcher: RoundSearcher, journal: Journal, stop_after: int) -> list[dict]:
    """Drive a searcher like Tune: trials start, the first half of each round ends."""
    suggested: list[dict] = []
    for n in range(stop_after):
        trial_id = f"t{n}"
        config = searcher.suggest(trial_id)
        if config is None:  # round over: end the rest, then go on
            for other, index in searcher.index_of.items():
                if not searcher.trials[index].state.ended:
                    result = {"epoch": 4, "val_accuracy": suggested[index]["learning_rate"]}
                    searcher.on_trial_complete(other, result)
                    journal.append("result", i=index, r=result)
                    journal.append("end", i=index, outcome="completed")
            config = searcher.suggest(trial_id)
        assert isinstance(config, dict)
        index = searcher.index_of[trial_id]
        _journal_trial(journal, index, trial_id, searcher.trials[index].round, config)
        suggested.append(config)
        if index % 4 < 2:
            result = {"epoch": 4, "val_accuracy": config["learning_rate"]}
            searcher.on_trial_complete(trial_id, result)
            journal.append("result", i=index, r=result)
            journal.append("end", i=index, outcome="completed")
    return suggested


def test_replayed_searcher_continues_the_killed_one_exactly(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    rounds_seen: list[SearchSpace] = []
    original = RoundSearcher(SPACE, _plan(3), on_round=lambda r, s, n: rounds_seen.append(s))
    suggested = _run_searcher(original, journal, stop_after=8)  # all of round 2 suggested
    journal.append("checkpoint", i=6, path="/ckpt/6")
    journal.close()

    state = read_journal(tmp_path / "j.jsonl")
    replayed_rounds: list[SearchSpace] = []
    resumed = RoundSearcher(SPACE, _plan(3), on_round=lambda r, s, n: replayed_rounds.append(s))
    resumed.replay(state.trials)
    assert replayed_rounds == rounds_seen  # the same regions, derived the same way
    # Round 1's unfinished trials (2, 3) ended before round 2 began; 6 and 7 had not ended.
    assert [[c.index for c in unit] for unit in resumed.continuations] == [[6], [7]]
    assert resumed.remaining == 2 + 12 - 8
    assert resumed.suggest("too-early") is not None  # a continuation, not "wait for round 2"

    resumed = RoundSearcher(SPACE, _plan(3))
    resumed.replay(state.trials)
    first = resumed.suggest("new-a")
    assert first == {**suggested[6], RESUME_FROM: "/ckpt/6"}
    assert resumed.suggest("new-b") == suggested[7]  # never checkpointed: starts over
    assert resumed.index_of["new-a"] == 6 and resumed.trials[7].round == 2
    assert resumed.trials[7].trial_id == "new-b"
    assert "t6" not in resumed.index_of
    assert resumed.suggest("new-c") is None  # round 2 has not ended

    # From here on, both searchers plan the same trials.
    for trial_id in ("t6", "t7"):
        original.on_trial_complete(trial_id, {"epoch": 4, "val_accuracy": 0.5})
    for trial_id in ("new-a", "new-b"):
        resumed.on_trial_complete(trial_id, {"epoch": 4, "val_accuracy": 0.5})
    for n in range(8, 12):
        ours, theirs = resumed.suggest(f"r{n}"), original.suggest(f"o{n}")
        assert ours == theirs
        if ours is None:
            break
        resumed.on_trial_complete(f"r{n}", {"epoch": 4, "val_accuracy": 0.4})
        original.on_trial_complete(f"o{n}", {"epoch": 4, "val_accuracy": 0.4})


def test_a_journal_from_another_plan_stops_the_resume(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    _run_searcher(RoundSearcher(SPACE, _plan(2)), journal, stop_after=3)
    journal.close()
    state = read_journal(tmp_path / "j.jsonl")
    other_seed = RoundPlan(2, 4, 8, 0.5, 0.1, "val_accuracy", "max", (1, 2, 4), 4)
    with pytest.raises(ReplayError, match="trial 0 ran"):
        RoundSearcher(SPACE, other_seed).replay(state.trials)


def test_a_finished_plan_has_nothing_left(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    searcher = RoundSearcher(SPACE, _plan(1))
    _run_searcher(searcher, journal, stop_after=4)
    for index, trial in searcher.trials.items():
        if not trial.state.ended:
            journal.append("end", i=index, outcome="stopped_early")
    journal.close()
    resumed = RoundSearcher(SPACE, _plan(1))
    resumed.replay(read_journal(tmp_path / "j.jsonl").trials)
    assert resumed.remaining == 0 and resumed.suggest("x") == Searcher.FINISHED


# --- ASHA --------------------------------------------------------------------------------


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def _asha(index_of: dict[str, int], brackets: int = 1, seed: int = 0) -> HalvingScheduler:
    return HalvingScheduler(
        index_of,
        seed=seed,
        metric="val_accuracy",
        mode="max",
        time_attr="epoch",
        max_t=27,
        grace_period=1,
        reduction_factor=3,
        brackets=brackets,
    )


def _rungs(scheduler: HalvingScheduler) -> list[Any]:
    return [[(r.epoch, dict(r.scores)) for r in b] for b in scheduler.halving.rungs]


def _drive(
    scheduler: HalvingScheduler, index_of: dict, trials: dict, rng: random.Random, steps: int
):
    """Interleaved results from several trials, like Tune delivers them; returns decisions."""
    decisions = []
    for _ in range(steps):
        live = [t for t, s in trials.items() if s["running"]]
        if not live:
            break
        trial_id = rng.choice(live)
        state = trials[trial_id]
        state["epoch"] += 1
        result = {"epoch": state["epoch"], "val_accuracy": state["skill"] * state["epoch"]}
        decision = scheduler.on_trial_result(None, _Trial(trial_id), result)
        decisions.append((index_of[trial_id], state["epoch"], decision))
        if decision == "STOP" or state["epoch"] >= 27:
            scheduler.on_trial_complete(None, _Trial(trial_id), result)
            state["running"] = False
    return decisions


def test_asha_rebuilt_from_the_journal_has_the_same_rungs_and_decides_the_same(
    tmp_path: Path,
) -> None:
    rng = random.Random(3)
    skills = [rng.random() for _ in range(12)]
    index_of = {f"t{i}": i for i in range(12)}
    original = _asha(index_of)
    original.journal = Journal(tmp_path / "j.jsonl")
    trials = {f"t{i}": {"epoch": 0, "skill": s, "running": True} for i, s in enumerate(skills)}
    for trial_id in trials:
        original.on_trial_add(None, _Trial(trial_id))
    _drive(original, index_of, trials, random.Random(5), steps=40)
    original.journal.close()

    calls = read_journal(tmp_path / "j.jsonl").scheduler_calls
    assert calls and all(json.dumps(c) for c in calls)
    # The resumed sweep knows the same trials under new Ray ids.
    new_index_of = {f"n{i}": i for i in range(12)}
    rebuilt = _asha(new_index_of)
    rebuilt.replay(calls)
    assert _rungs(rebuilt) == _rungs(original)

    # Continued trials are added again (keeping their bracket) and get the same decisions.
    for trial_id, state in trials.items():
        if state["running"]:
            rebuilt.on_trial_add(None, _Trial("n" + trial_id[1:]))
    twin = {("n" + t[1:]): dict(s) for t, s in trials.items()}
    theirs = _drive(original, index_of, trials, random.Random(9), steps=200)
    ours = _drive(rebuilt, new_index_of, twin, random.Random(9), steps=200)
    assert ours == theirs and any(d == "STOP" for _, _, d in ours)


@pytest.mark.parametrize("brackets", [1, 2, 3])
def test_asha_with_brackets_rebuilds_exactly_whatever_the_global_random_state(
    tmp_path: Path, brackets: int
) -> None:
    """30 trials, 120 results: the rebuilt scheduler's rungs and every decision match, though
    numpy's global random state differs between the two (as it does between two processes)."""
    rng = random.Random(11)
    index_of = {f"t{i}": i for i in range(30)}
    trials = {f"t{i}": {"epoch": 0, "skill": rng.random(), "running": True} for i in range(30)}
    np.random.seed(1)
    original = _asha(index_of, brackets, seed=7)
    original.journal = Journal(tmp_path / "j.jsonl")
    for trial_id in trials:
        original.on_trial_add(None, _Trial(trial_id))
    assigned = _brackets_of(original, 30)
    assert len(set(assigned)) == brackets  # 30 draws reach every bracket: each is exercised
    decisions = _drive(original, index_of, trials, random.Random(5), steps=120)
    original.journal.close()
    assert len(decisions) == 120

    np.random.seed(2)
    calls = read_journal(tmp_path / "j.jsonl").scheduler_calls
    assert [c["op"] for c in calls[:30]] == ["add"] * 30
    rebuilt = _asha({f"n{i}": i for i in range(30)}, brackets, seed=7)
    rebuilt.replay(calls[:30])
    assert _brackets_of(rebuilt, 30) == assigned
    replayed = rebuilt.replay(calls[30:])
    assert len(replayed) == 120
    assert [theirs for theirs, _ in replayed] == [ours for _, ours in replayed]
    assert _rungs(rebuilt) == _rungs(original)


def _brackets_of(scheduler: HalvingScheduler, trials: int) -> list[int]:
    return [scheduler.halving.bracket_of(i) for i in range(trials)]


def test_asha_brackets_follow_asha_probabilities_and_the_seed() -> None:
    """Seeded draws keep ASHA's weights (e^(rungs - max rungs)): checked on 3000 trials with a
    chi-square test, and another sweep seed gives another assignment."""
    from scipy.stats import chisquare

    index_of = {f"t{i}": i for i in range(3000)}
    scheduler = _asha(index_of, brackets=3, seed=0)
    for trial_id in index_of:
        scheduler.on_trial_add(None, _Trial(trial_id))
    counts = np.bincount(_brackets_of(scheduler, 3000), minlength=3)
    sizes = np.array([len(b) for b in scheduler.halving.rungs])
    weights = np.e ** (sizes - sizes.max())
    assert chisquare(counts, 3000 * weights / weights.sum()).pvalue > 0.001
    other = _asha(index_of, brackets=3, seed=1)
    for trial_id in index_of:
        other.on_trial_add(None, _Trial(trial_id))
    same = np.sum(np.array(_brackets_of(scheduler, 3000)) == _brackets_of(other, 3000))
    assert same < 2900
