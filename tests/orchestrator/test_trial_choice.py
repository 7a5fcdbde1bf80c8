"""The scheduler starts the newest waiting trial, so a warm actor goes to a trial whose own
actor is only queued, never to one whose actor is already starting (trial_choice.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from ray.tune.experiment import Trial

from orchestrator.engine import trial_choice
from orchestrator.engine.scheduler import HalvingScheduler
from orchestrator.engine.search_setup import live_trials
from orchestrator.engine.trial_choice import PASSED_OVER_LIMIT_S, NewestFirstFIFO


@dataclass
class _Trial:
    name: str
    status: str

    @property
    def trial_id(self) -> str:
        return self.name


class _Controller:
    def __init__(self, *trials: _Trial) -> None:
        self.trials = list(trials)

    def get_trials(self) -> list[_Trial]:
        return self.trials


def _schedulers() -> list[object]:
    asha = HalvingScheduler({}, metric="val_accuracy", mode="max", time_attr="epoch", max_t=9)
    return [asha, NewestFirstFIFO()]


def test_the_newest_pending_trial_is_chosen() -> None:
    controller = _Controller(
        _Trial("a", Trial.TERMINATED),
        _Trial("b", Trial.RUNNING),
        _Trial("c", Trial.PENDING),  # its actor may be starting
        _Trial("d", Trial.PENDING),  # its actor only queued
        _Trial("e", Trial.RUNNING),
    )
    for scheduler in _schedulers():
        assert scheduler.choose_trial_to_run(controller).name == "d"


def test_paused_trials_come_after_pending_ones_and_none_is_none() -> None:
    paused = _Controller(_Trial("a", Trial.PAUSED), _Trial("b", Trial.RUNNING))
    idle = _Controller(_Trial("a", Trial.TERMINATED), _Trial("b", Trial.RUNNING))
    for scheduler in _schedulers():
        assert scheduler.choose_trial_to_run(paused).name == "a"
        assert scheduler.choose_trial_to_run(idle) is None


def test_a_waiting_trial_per_slot() -> None:
    assert [live_trials(slots) for slots in (0, 1, 2, 8)] == [2, 2, 4, 16]


def test_a_trial_passed_over_for_too_long_goes_first(monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(trial_choice.time, "monotonic", lambda: clock[0])
    for scheduler in _schedulers():
        clock[0] = 1000.0
        b, c = _Trial("b", Trial.PENDING), _Trial("c", Trial.PENDING)
        controller = _Controller(_Trial("a", Trial.RUNNING), b, c)
        assert scheduler.choose_trial_to_run(controller) is c
        c.status = Trial.RUNNING  # c took the warm actor; d arrives
        controller.trials.append(_Trial("d", Trial.PENDING))
        clock[0] += PASSED_OVER_LIMIT_S - 1
        assert scheduler.choose_trial_to_run(controller).name == "d"
        clock[0] += 1  # b has now waited the limit
        assert scheduler.choose_trial_to_run(controller) is b
        b.status = Trial.RUNNING  # b runs; d is the oldest waiting, and newly so
        assert scheduler.choose_trial_to_run(controller).name == "d"


def test_with_speedups_off_tunes_own_choice_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The choice reads Tune's controller (its internal loop): a speed-up, so with
    CAVIAR_NO_SPEEDUPS=1 Tune's FIFO choice (the oldest waiting trial) runs instead."""
    monkeypatch.setenv("CAVIAR_NO_SPEEDUPS", "1")
    controller = _Controller(
        _Trial("a", Trial.RUNNING), _Trial("b", Trial.PENDING), _Trial("c", Trial.PENDING)
    )
    paused = _Controller(_Trial("a", Trial.PAUSED), _Trial("b", Trial.RUNNING))
    for scheduler in _schedulers():
        assert scheduler.choose_trial_to_run(controller).name == "b"
        assert scheduler.choose_trial_to_run(paused).name == "a"


class _CountingTrial(_Trial):
    """A trial that counts how often its status is read."""

    reads = 0

    def __getattribute__(self, name: str) -> object:
        if name == "status":
            _CountingTrial.reads += 1
        return super().__getattribute__(name)


def test_ended_trials_are_read_once_not_at_every_step() -> None:
    """Tune asks at every step of its loop; its list holds every trial of the sweep."""
    for scheduler in _schedulers():
        ended = [_CountingTrial(f"t{i}", Trial.TERMINATED) for i in range(1000)]
        running = _CountingTrial("r", Trial.RUNNING)
        controller = _Controller(*ended, running)
        assert scheduler.choose_trial_to_run(controller) is None
        _CountingTrial.reads = 0
        for _ in range(10):
            assert scheduler.choose_trial_to_run(controller) is None
        assert _CountingTrial.reads <= 10 * 3  # the running trial's, not the ended ones'
        # Trials appended since, and one that errored and waits again, are still seen.
        failed = _CountingTrial("f", Trial.ERROR)
        controller.trials += [failed, _CountingTrial("p", Trial.PAUSED)]
        assert scheduler.choose_trial_to_run(controller).name == "p"
        failed.status = Trial.PENDING  # Tune requeues it after its error
        assert scheduler.choose_trial_to_run(controller) is failed
        running.status = Trial.TERMINATED
        controller.trials.append(_CountingTrial("n", Trial.PENDING))
        assert scheduler.choose_trial_to_run(controller).name == "n"
