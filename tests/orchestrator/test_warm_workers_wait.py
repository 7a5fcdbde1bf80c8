"""A sweep's own Ray is claimed only once its warm trial workers are up
(``raystart._wait_for_idle_workers``), so Tune's first actors land on them instead of making
the raylet start more; past its limit the start goes on without them."""

from __future__ import annotations

from typing import Any

from orchestrator.engine import raystart


class FakeProcess:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        if self._name == "gone":
            raise ProcessLookupError  # psutil.NoSuchProcess, as a process ends
        return self._name


class FakeMachine:
    """Ray's processes as the start sees them, one more worker up at every look."""

    def __init__(self, workers_up_after: list[int]) -> None:
        self.looks = 0
        self.workers_up_after = workers_up_after
        self.now = 0.0

    def children(self) -> set[Any]:
        self.looks += 1
        up = sum(1 for look in self.workers_up_after if self.looks >= look)
        others = {FakeProcess("raylet"), FakeProcess("ray::DashboardAgent"), FakeProcess("gone")}
        return others | {FakeProcess(raystart.IDLE_WORKER) for _ in range(up)}

    def clock(self) -> float:
        self.now += 0.05
        return self.now


def test_the_start_waits_until_every_warm_worker_is_up() -> None:
    machine = FakeMachine(workers_up_after=[3, 5])
    assert raystart._wait_for_idle_workers(2, 5.0, machine.children, machine.clock)
    assert machine.looks == 5  # not before the second worker was up


def test_past_its_limit_the_start_goes_on_without_them() -> None:
    machine = FakeMachine(workers_up_after=[2])  # the second never comes up
    assert not raystart._wait_for_idle_workers(2, 1.0, machine.children, machine.clock)
    assert machine.now >= 1.0


def test_no_worker_asked_for_no_wait() -> None:
    machine = FakeMachine(workers_up_after=[])
    assert raystart._wait_for_idle_workers(0, 5.0, machine.children, machine.clock)
    assert machine.looks == 0
