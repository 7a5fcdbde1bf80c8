"""The round searcher, driven the way Tune drives it, without a cluster."""

from __future__ import annotations

import dataclasses
import math

from ray.tune.search import Searcher

from orchestrator.engine.searcher import RoundSearcher
from orchestrator.search.plan import RoundPlan
from orchestrator.search.space import RangeDomain, SearchSpace, sample_configs
from orchestrator.search.tpe import TpeSettings

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


def _zoom_plan(rounds: int, per_round: int, explore: float, keep_from: str) -> RoundPlan:
    return RoundPlan(
        rounds, per_round, 7, 0.25, 0.1, "val_accuracy", "max", (1, 2, 4), 4,
        explore=explore, keep_from=keep_from,  # type: ignore[arg-type]
    )  # fmt: skip


def _run_round(searcher: RoundSearcher, start: int, count: int, score: object) -> list[dict]:
    """Suggest ``count`` trials and complete each at the full budget with ``score(config)``."""
    configs = {f"t{start + i}": searcher.suggest(f"t{start + i}") for i in range(count)}
    for trial_id, config in configs.items():
        searcher.on_trial_complete(trial_id, {"epoch": 4, "val_accuracy": score(config)})  # type: ignore[operator]
    return list(configs.values())


def test_zoom_explores_a_share_of_each_later_round_in_the_whole_region() -> None:
    """explore 0.25 of 16: 4 trials of round 2 come from the whole region (seeded), 12 from
    the zoomed box; without explore all 16 are in the box."""
    rounds: list[SearchSpace] = []
    for explore, expected_outside in ((0.25, 4), (0.0, 0)):
        rounds.clear()
        searcher = RoundSearcher(
            SPACE, _zoom_plan(2, 16, explore, "round"), on_round=lambda r, s, n: rounds.append(s)
        )
        _run_round(searcher, 0, 16, lambda c: -abs(c["learning_rate"] - 0.01))
        second = _run_round(searcher, 16, 16, lambda c: 0.5)
        box = rounds[1].domains[0]
        outside = [c for c in second if not box.low <= c["learning_rate"] <= box.high]
        inside = [c for c in second if box.low <= c["learning_rate"] <= box.high]
        # An explored draw may land inside the box by chance; the box's own draws never leave it.
        assert len(outside) <= expected_outside and len(inside) >= 16 - expected_outside
        assert len(outside) >= (1 if expected_outside else 0)
        assert (box.low, box.high) != (1e-4, 1.0)


def _into(rounds: list[SearchSpace]):  # noqa: ANN202
    return lambda number, space, notes: rounds.append(space)


def _better_above(high: float):  # noqa: ANN202
    return lambda config: 0.99 if config["learning_rate"] > high else 0.1


def test_zoom_kept_from_the_sweep_can_move_the_box_to_an_explored_optimum() -> None:
    """Round 1 finds its best near 1e-4; explored trials of round 2 above its box are better.
    Kept from the whole sweep, round 3's box moves to hold it (outside round 2's box); kept from
    the round, it narrows round 2's box, which cannot hold it."""
    for keep_from, moves in (("sweep", True), ("round", False)):
        rounds: list[SearchSpace] = []
        searcher = RoundSearcher(SPACE, _zoom_plan(3, 16, 0.25, keep_from), on_round=_into(rounds))
        _run_round(searcher, 0, 16, lambda c: 0.5 - c["learning_rate"])  # best: the smallest
        second = {f"t{16 + i}": searcher.suggest(f"t{16 + i}") for i in range(16)}
        far = _better_above(rounds[1].domains[0].high)
        assert any(far(c) > 0.5 for c in second.values())  # an explored draw above the box
        for trial_id, config in second.items():
            searcher.on_trial_complete(trial_id, {"epoch": 4, "val_accuracy": far(config)})
        searcher.suggest("t32")
        box3 = rounds[2].domains[0]
        best = max(second.values(), key=far)
        assert (box3.low <= best["learning_rate"] <= box3.high) is moves, keep_from


def test_zoom_with_the_tpe_sampler_draws_the_box_share_near_the_best_and_repeatably() -> None:
    """sampler tpe: round 2's draws stay in the box, lie nearer the optimum (1e-2) than random
    draws in the same box (summed over five sweep seeds), and two searchers told the same
    results draw the same (a resumed sweep redraws the killed one's round)."""

    def distance(config: dict) -> float:
        return abs(math.log10(config["learning_rate"]) + 2)

    totals = {}
    for sampler in ("random", "tpe"):
        total = 0.0
        for seed in range(5):
            runs = []
            for _ in range(2):
                rounds: list[SearchSpace] = []
                plan = dataclasses.replace(
                    _zoom_plan(2, 16, 0.0, "sweep"),
                    seed=seed,
                    round_sampler=TpeSettings(n_startup_trials=4) if sampler == "tpe" else None,
                )
                searcher = RoundSearcher(SPACE, plan, on_round=_into(rounds))
                _run_round(searcher, 0, 16, lambda c: -distance(c))
                second = _run_round(searcher, 16, 16, lambda c: 0.5)
                box = rounds[1].domains[0]
                assert all(box.low <= c["learning_rate"] <= box.high for c in second)
                runs.append(second)
            assert runs[0] == runs[1]
            total += sum(distance(c) for c in runs[0])
        totals[sampler] = total
    assert totals["tpe"] < 0.9 * totals["random"], totals
