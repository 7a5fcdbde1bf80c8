"""The live notice for a silent trial (``engine/stalls.py``), on a clock the test moves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.engine import stalls
from orchestrator.engine.stalls import NOTICE_MIN_S, StallWatch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    clock = Clock()
    monkeypatch.setattr(stalls.time, "monotonic", clock)
    yield clock


class CountingGaps(dict):  # type: ignore[type-arg]
    """The watch's per-trial gaps, counting how often all of them are read."""

    reads = 0

    def values(self):  # type: ignore[no-untyped-def]
        CountingGaps.reads += 1
        return super().values()


def test_a_silent_trial_is_noticed_once_against_its_own_pace(clock: Clock) -> None:
    watch = StallWatch(epoch_timeout_s=None, timeouts_dir=None)
    watch.started(0)
    for _ in range(3):
        clock.now += 4.0
        watch.heard(0)
    clock.now += 39.0  # 10 x its 4 s pace is 40 s
    assert watch.notices() == []
    clock.now += 1.5
    (line,) = watch.notices()
    assert "trial 0 has sent nothing for 40 s (reports come every 4.0 s)" in line
    assert "epoch_timeout_s is off" in line
    clock.now += 100.0
    assert watch.notices() == []  # told once


def test_a_trial_not_heard_from_yet_is_judged_by_the_others_pace(clock: Clock) -> None:
    watch = StallWatch(epoch_timeout_s=20.0, timeouts_dir=None)
    watch.started(0)
    clock.now += 1.0
    watch.heard(0)
    watch.ended(0)  # an ended trial's pace still counts for the others
    watch.started(1)
    clock.now += 9.9  # the threshold is capped at half the epoch timeout: 10 s
    assert watch.notices() == []
    clock.now += 0.2
    (line,) = watch.notices()
    assert "trial 1 has sent nothing for 10 s (reports come every 1.0 s)" in line
    assert "ends failed at 20 s" in line


def test_no_trial_silent_for_the_shortest_threshold_reads_no_gaps(clock: Clock) -> None:
    """Called at every step of Tune's loop: with thousands of ended trials behind it, a step
    where no running trial has been silent long looks at the running trials only."""
    watch = StallWatch(epoch_timeout_s=None, timeouts_dir=None)
    watch._gaps = CountingGaps()  # type: ignore[assignment]
    for index in range(1000):
        watch.started(index)
        clock.now += 0.01
        watch.heard(index)
        watch.ended(index)
    watch.started(1000)  # not heard from yet: would be judged by the others' pace
    CountingGaps.reads = 0
    clock.now += NOTICE_MIN_S - 1
    assert watch.notices() == []
    assert CountingGaps.reads == 0
    clock.now += 2  # now past every possible threshold: the others' pace is read
    assert len(watch.notices()) == 1
    assert CountingGaps.reads == 1
