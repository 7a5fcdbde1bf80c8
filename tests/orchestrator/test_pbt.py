"""Population-based training's decisions (pure) and its spec checks."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from orchestrator.engine.pbt_files import PbtFiles
from orchestrator.errors import SpecError
from orchestrator.search.pbt import (
    Exploit,
    PbtPlan,
    decide,
    line_of,
    perturb,
    perturbable,
    quantile_size,
    ranked,
    scaled,
)
from orchestrator.search.space import ChoiceDomain, RangeDomain
from orchestrator.spec import parse_spec_text

LR = RangeDomain("learning_rate", "log", 1e-4, 1.0)
MOMENTUM = RangeDomain("momentum", "log1m", 0.5, 0.999)
UNITS = RangeDomain("hidden_units", "log", 8, 64, integer=True)
BATCH = ChoiceDomain("batch_size", (16, 32, 64))


def plan(**changes: object) -> PbtPlan:
    settings: dict[str, object] = {
        "interval": 2,
        "max_epochs": 10,
        "quantile": 0.25,
        "factors": (0.8, 1.25),
        "resample_probability": 0.25,
        "seed": 3,
        "mode": "max",
        "perturbed": (LR, MOMENTUM),
    }
    settings.update(changes)
    return PbtPlan(**settings)  # type: ignore[arg-type]


def test_boundaries_are_every_interval_before_the_last_epoch() -> None:
    assert plan().boundaries() == (2, 4, 6, 8)
    assert plan(interval=3, max_epochs=9).boundaries() == (3, 6)
    assert [e for e in range(12) if plan().is_boundary(e)] == [2, 4, 6, 8]


def test_log1m_moves_one_minus_beta_not_beta() -> None:
    # momentum 0.99 is a ~100-step average: x1.25 makes it an ~80-step one (0.9875), x0.8 a
    # ~125-step one (0.992); a plain multiply would leave the range (1.2375)
    assert scaled(MOMENTUM, 0.99, 1.25) == pytest.approx(0.9875)
    assert scaled(MOMENTUM, 0.99, 0.8) == pytest.approx(0.992)
    assert scaled(LR, 0.01, 1.25) == pytest.approx(0.0125)


def test_a_perturbed_value_stays_in_its_range_and_an_integer_moves() -> None:
    assert scaled(LR, 0.9, 1.25) == 1.0
    assert scaled(MOMENTUM, 0.55, 1.25) == 0.5
    assert scaled(UNITS, 8, 1.05) == 9  # round(8.4) == 8: it still moves one step
    assert scaled(UNITS, 8, 0.8) == 8  # not below its low end


def test_perturbation_is_seeded_and_resamples_at_its_rate() -> None:
    values = {"learning_rate": 0.01, "momentum": 0.9}
    first = perturb(plan(), values, np.random.default_rng(5))
    assert first == perturb(plan(), values, np.random.default_rng(5))
    rng = np.random.default_rng(0)
    kinds: Counter[str] = Counter()
    for _ in range(2000):
        moved = perturb(plan(), values, rng)["learning_rate"]
        multiplied = any(math.isclose(moved, 0.01 * f) for f in (0.8, 1.25))
        kinds["multiplied" if multiplied else "resampled"] += 1
    # 25 % resampled: 500 expected of 2000, sd ~19
    assert 420 < kinds["resampled"] < 580


def test_ranked_puts_diverged_last() -> None:
    scores = {0: 0.5, 1: math.nan, 2: 0.9, 3: 0.7}
    assert ranked(scores, "max") == [2, 3, 0, 1]
    assert ranked(scores, "min") == [0, 3, 2, 1]


def test_quantile_size_is_at_least_one_and_at_most_half() -> None:
    assert quantile_size(1, 0.25) == 0
    assert quantile_size(2, 0.25) == 1
    assert quantile_size(8, 0.25) == 2
    assert quantile_size(8, 0.5) == 4
    assert quantile_size(5, 0.5) == 2


def test_the_bottom_quantile_copies_the_top_and_takes_its_shape() -> None:
    scores = {i: s for i, s in enumerate([0.1, 0.9, 0.5, 0.8, 0.2, 0.6, 0.7, 0.3])}
    values = {
        i: {"learning_rate": 10.0 ** -(i % 4 + 1), "momentum": 0.9, "hidden_units": 8 + i}
        for i in scores
    }
    exploits = decide(plan(), 4, scores, values)
    assert [e.trial for e in exploits] == [0, 4]  # the two worst, by index
    for exploit in exploits:
        assert exploit.from_trial in (1, 3)  # the two best
        assert exploit.epoch == 4
        assert exploit.before == values[exploit.trial]
        donor = values[exploit.from_trial]
        assert exploit.after["hidden_units"] == donor["hidden_units"]  # never perturbed
        assert 1e-4 <= float(exploit.after["learning_rate"]) <= 1.0
    assert exploits == decide(plan(), 4, scores, values)  # the same scores, the same decision

    # a generation's draws depend on its epoch: some other epoch decides otherwise
    def choices(found: list[Exploit]) -> list[tuple[int, dict]]:
        return [(e.from_trial, dict(e.after)) for e in found]

    others = [decide(plan(), e, scores, values) for e in (2, 6, 8, 10, 12, 14)]
    assert any(choices(o) != choices(exploits) for o in others)


def test_a_population_of_one_never_copies() -> None:
    assert decide(plan(), 2, {0: 0.5}, {0: {"learning_rate": 0.1, "momentum": 0.9}}) == []


def test_perturbable_leaves_out_shape_and_fixed_names() -> None:
    sampled = (LR, MOMENTUM, UNITS, BATCH)
    adjustable = frozenset({"learning_rate", "momentum", "batch_size", "epochs"})
    found = perturbable(sampled, adjustable, ("hidden_units", "batch_size", "layers"))
    assert [d.name for d in found] == ["learning_rate", "momentum"]


def test_line_of_walks_back_through_the_donors() -> None:
    exploits = [
        Exploit(2, 1, 0, {"learning_rate": 0.1}, {"learning_rate": 0.02}),
        Exploit(4, 2, 1, {"learning_rate": 0.3}, {"learning_rate": 0.03}),
        Exploit(4, 0, 3, {"learning_rate": 0.01}, {"learning_rate": 0.5}),
    ]
    initial = {i: {"learning_rate": 0.01 * (i + 1)} for i in range(4)}
    line = line_of(2, 6, exploits, initial)
    assert [(s.start, s.end, s.trial) for s in line] == [(0, 2, 0), (2, 4, 1), (4, 6, 2)]
    assert [s.values["learning_rate"] for s in line] == [0.01, 0.02, 0.03]
    # trial 0's own copy at epoch 4 is later than the epoch its weights were copied at
    assert [(s.start, s.trial) for s in line_of(3, 6, exploits, initial)] == [(0, 3)]


def test_decisions_are_written_whole_and_read_back(tmp_path: Path) -> None:
    files = PbtFiles(tmp_path)
    assert files.exploit_for(2, 0) is False  # not decided yet
    exploit = Exploit(2, 0, 3, {"learning_rate": 0.1}, {"learning_rate": 0.2})
    files.write_decision(2, [exploit], {0: 0.1, 3: 0.9})
    assert files.exploit_for(2, 0) == exploit
    assert files.exploit_for(2, 3) is None  # decided: it goes on as it is
    assert files.decided_epochs() == [2]
    assert files.lineage() == [exploit]
    assert not list(files.folder.rglob("*.tmp"))


PBT_SPEC = """
name: pbt
data: {source: iris}
space:
  learning_rate: {scale: log, low: 1.0e-3, high: 1.0}
  hidden_units: {scale: log, low: 8, high: 32, integer: true}
search: {strategy: random, num_trials: 6}
scheduler: {kind: pbt, interval: 2, max_epochs: 6}
"""


def test_a_pbt_spec_parses_and_says_what_it_does() -> None:
    spec = parse_spec_text(PBT_SPEC)
    assert "pbt (every 2 epochs the bottom 0.25 copies the top; 6 epochs)" in spec.summary()


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        ("interval: 2, max_epochs: 6", "scheduler.interval", "must be < max_epochs"),
        ("strategy: random,", "search.strategy", "use strategy: random"),
        ("num_trials: 6}", "search.max_concurrent", "remove max_concurrent"),
        ("learning_rate: {scale: log, low: 1.0e-3, high: 1.0}", "space", "add one of them"),
        ("name: pbt", "resources.pack_size", "pack_size: 1"),
    ],
)
def test_pbt_spec_problems_name_the_fix(change: str, path: str, words: str) -> None:
    replacement = {
        "interval: 2, max_epochs: 6": "interval: 6, max_epochs: 6",
        "strategy: random,": "strategy: tpe,",
        "num_trials: 6}": "num_trials: 6, max_concurrent: 2}",
        "learning_rate: {scale: log, low: 1.0e-3, high: 1.0}": "layers: {values: [1, 2]}",
        "name: pbt": "name: pbt\nresources: {pack_size: 4}",
    }[change]
    with pytest.raises(SpecError) as raised:
        parse_spec_text(PBT_SPEC.replace(change, replacement))
    problems = {p.path: p.message for p in raised.value.problems}
    assert path in problems, problems
    assert words in problems[path]


def test_a_population_of_one_shape_may_be_packed() -> None:
    """A copy takes its donor's configuration; inside a fused pack it must keep the pack's
    shape, so a pack size is accepted when space samples no shape field."""
    one_shape = PBT_SPEC.replace(
        "hidden_units: {scale: log, low: 8, high: 32, integer: true}",
        "momentum: {scale: log1m, low: 0.5, high: 0.99}",
    )
    spec = parse_spec_text(one_shape.replace("name: pbt", "name: pbt\nresources: {pack_size: 3}"))
    assert spec.resources.pack_size == 3


# --- the scheduler's generations, arrival order and resume (no Ray: a driver plays Tune) ---


class _Population:
    """Trials whose objective follows their values and weights (a number ``w`` that grows by
    the learning rate each epoch), driven in a seeded random order over ``slots``."""

    def __init__(self, files: PbtFiles, pbt_plan: PbtPlan, size: int, order_seed: int) -> None:
        from types import SimpleNamespace

        from orchestrator.engine.pbt_scheduler import PbtTrialScheduler

        self.plan, self.files, self.size = pbt_plan, files, size
        self.rng = np.random.default_rng(order_seed)
        self.index_of = {f"t{i}": i for i in range(size)}
        self.trials = [SimpleNamespace(trial_id=f"t{i}", last_result={}) for i in range(size)]
        self.values = {i: {"learning_rate": 0.01 * (i + 1), "momentum": 0.9} for i in range(size)}
        self.w = dict.fromkeys(range(size), 0.0)
        self.epoch = dict.fromkeys(range(size), 0)
        self.saved: dict[tuple[int, int], tuple[float, dict]] = {}  # the boundary states
        self.paused: dict[int, int] = {}
        self.applied: dict[int, int] = {}  # the boundary whose decision each trial took
        self.ended: set[int] = set()
        self.make = lambda ended: PbtTrialScheduler(
            self.index_of, pbt_plan, size, files, metric="score", mode="max", ended=ended
        )
        self.scheduler = self.make({})

    def tick(self) -> bool:
        """One epoch of one trial that may train; False once every trial has ended."""
        runnable = [
            i
            for i in range(self.size)
            if i not in self.ended
            and (i not in self.paused or self.paused[i] in self.scheduler.decided)
        ]
        if not runnable:
            assert len(self.ended) == self.size, "stalled: every trial waits"
            return False
        index = int(self.rng.choice(runnable))
        self.paused.pop(index, None)
        epoch = self.epoch[index]
        exploit = self.files.exploit_for(epoch, index) if self.plan.is_boundary(epoch) else None
        if exploit is False:  # continued at an undecided boundary: it reports it again
            return self._report(index, epoch)
        if isinstance(exploit, Exploit) and self.applied.get(index) != epoch:
            self.w[index], _ = self.saved[(exploit.from_trial, epoch)]
            self.values[index] = dict(exploit.after)
        self.applied[index] = epoch
        self.epoch[index] = epoch = epoch + 1
        self.w[index] += float(self.values[index]["learning_rate"]) * (1 - epoch / 20)
        if self.plan.is_boundary(epoch):
            self.saved[(index, epoch)] = (self.w[index], dict(self.values[index]))
        if epoch >= self.plan.max_epochs:
            self.ended.add(index)
            self.scheduler.on_trial_complete(None, self.trials[index], {"epoch": epoch})
            return True
        return self._report(index, epoch)

    def _report(self, index: int, epoch: int) -> bool:
        result = {
            "epoch": epoch,
            "score": self.w[index],
            "pbt_values": [[k, v] for k, v in self.values[index].items()],
        }
        if self.scheduler.on_trial_result(None, self.trials[index], result) == "PAUSE":
            self.paused[index] = epoch
        return True

    def kill_and_resume(self) -> None:
        """The driver dies: each unended trial goes back to its newest boundary state (its
        pause checkpoint) and a new scheduler starts from the files and the ended trials."""
        self.applied = {}
        for index in range(self.size):
            if index in self.ended:
                continue
            reached = [e for (i, e) in self.saved if i == index]
            back = max(reached, default=0)
            self.epoch[index] = back
            if back:
                self.w[index], self.values[index] = self.saved[(index, back)]
            else:
                self.w[index] = 0.0
                self.values[index] = {"learning_rate": 0.01 * (index + 1), "momentum": 0.9}
        self.paused = {}
        self.scheduler = self.make({i: self.plan.max_epochs for i in self.ended})


@pytest.mark.parametrize("order_seed", [0, 1, 2])
def test_pbt_generations_do_not_depend_on_arrival_order_or_a_kill(
    tmp_path: Path, order_seed: int
) -> None:
    pbt_plan = plan(interval=2, max_epochs=8, resample_probability=0.0)
    reference = _Population(PbtFiles(tmp_path / "reference"), pbt_plan, 6, order_seed=99)
    while reference.tick():
        pass
    expected = reference.files.lineage()
    assert len(expected) == 3 * 2  # 3 generations x ceil(6 x 0.25) copies
    for kill_at in (5, 17, 30):
        files = PbtFiles(tmp_path / f"run-{order_seed}-{kill_at}")
        population = _Population(files, pbt_plan, 6, order_seed)
        for _ in range(kill_at):
            population.tick()
        population.kill_and_resume()
        while population.tick():
            pass
        assert files.lineage() == expected, (order_seed, kill_at)
        assert population.w == reference.w


def test_a_trial_that_diverges_at_a_boundary_does_not_hold_its_generation(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from orchestrator.engine.pbt_scheduler import PbtTrialScheduler

    files = PbtFiles(tmp_path)
    index_of = {f"t{i}": i for i in range(3)}
    scheduler = PbtTrialScheduler(index_of, plan(), 3, files, metric="score", mode="max")
    trials = [SimpleNamespace(trial_id=f"t{i}", last_result={}) for i in range(3)]
    values = [["learning_rate", 0.01], ["momentum", 0.9]]
    for index in (0, 1):
        decision = scheduler.on_trial_result(
            None, trials[index], {"epoch": 2, "score": 0.5 + index, "pbt_values": values}
        )
        assert decision == "PAUSE"
    # trial 2 diverges at epoch 2: it reports no score and has ended there (a pack member
    # ends so while its pack goes on), then Tune completes it
    assert scheduler.on_trial_result(None, trials[2], {"epoch": 2, "diverged": True}) == (
        "CONTINUE"
    )
    assert scheduler.decided == {2}
    scheduler.on_trial_complete(None, trials[2], {"epoch": 2, "diverged": True})
    assert scheduler.decided == {2}
    assert [e.trial for e in files.lineage()] == [0]  # 1 of the 2 it waited for copies
