"""The round searcher, driven the way Tune drives it, without a cluster."""

from __future__ import annotations

from ray.tune.search import Searcher

from orchestrator.engine.searcher import RoundPlan, RoundSearcher
from orchestrator.search.space import RangeDomain, SearchSpace, sample_configs

SPACE = SearchSpace((RangeDomain("learning_rate", "log", 1e-4, 1.0),), {"epochs": 4})


def _plan(rounds: int, per_round: int = 4) -> RoundPlan:
    return RoundPlan(rounds, per_round, 7, 0.5, 0.1, "val_accuracy", "max", (1, 2, 4), 4)


def test_one_round_is_plain_seeded_random_search() -> None:
    searcher = RoundSearcher(SPACE, _plan(1))
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    assert configs == sample_configs(SPACE, 4, 7)
    assert searcher.suggest("t4") == Searcher.FINISHED


def test_next_round_waits_for_the_round_then_narrows_around_the_best() -> None:
    rounds: list[tuple[int, SearchSpace]] = []
    searcher = RoundSearcher(SPACE, _plan(2), on_round=lambda r, s, n: rounds.append((r, s)))
    first = {f"t{i}": searcher.suggest(f"t{i}") for i in range(4)}
    assert searcher.suggest("t4") is None  # round 1 still running
    best_id = max(first, key=lambda t: first[t]["learning_rate"])
    for trial_id in first:
        accuracy = 0.9 if trial_id == best_id else 0.5
        searcher.on_trial_complete(trial_id, {"epoch": 4, "val_accuracy": accuracy})
    second = searcher.suggest("t4")
    assert second is not None and second != Searcher.FINISHED
    rounds_by_id = {t.trial_id: t.round for t in searcher.trials.values()}
    assert rounds_by_id == {**{t: 1 for t in first}, "t4": 2}
    assert [r for r, _ in rounds] == [1, 2]
    region = rounds[1][1].domains[0]
    assert region.low <= first[best_id]["learning_rate"] <= region.high
    assert region.low <= second["learning_rate"] <= region.high
    assert (region.low, region.high) != (1e-4, 1.0)


def test_failed_and_diverged_trials_do_not_shape_the_next_region() -> None:
    rounds: list[SearchSpace] = []
    searcher = RoundSearcher(SPACE, _plan(2), on_round=lambda r, s, n: rounds.append(s))
    for i in range(4):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", {"epoch": 1, "val_accuracy": 0.0, "diverged": True})
    searcher.on_trial_complete("t1", None, error=True)
    searcher.on_trial_complete("t2", {"epoch": 1, "diverged": True})
    searcher.on_trial_complete("t3", {"epoch": 1, "diverged": True})
    searcher.suggest("t4")
    assert rounds[1] == rounds[0]  # nothing rankable: same region


def test_searcher_state_survives_pickling_without_its_listener() -> None:
    import pickle

    searcher = RoundSearcher(SPACE, _plan(2), on_round=lambda r, s, n: None)
    searcher.suggest("t0")
    clone = pickle.loads(pickle.dumps(searcher))
    assert clone.on_round is None and clone.index_of == {"t0": 0}
