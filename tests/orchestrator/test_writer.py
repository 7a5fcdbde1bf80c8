"""The batched writer against a fake sink and a fake clock: batching, order, retries with their
backoff, the deadline on close, refused writes, flush and close. No MLflow, no real waiting
(except where a test checks that a flush cuts a real batch window short)."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import pytest

from orchestrator.store.writer import (
    SYSTEM_CLOCK,
    BatchWriter,
    EndRun,
    LogMetrics,
    MetricPoint,
    Op,
    ParentUpdate,
    StartRun,
    TransientSinkError,
    TrialOp,
    call_with_retries,
)

UNREACHABLE = "tracking store unreachable until the deadline"


class FakeClock:
    """Time moves only when the writer waits or sleeps, by exactly what it asked for."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waited: list[float] = []  # interruptible waits (batch window, backoff while running)
        self.slept: list[float] = []  # plain sleeps (backoff while closing, synchronous retries)

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        self.waited.append(seconds)
        self.now += seconds
        condition.wait(0)  # let other threads take the lock; never sleeps


class FakeSink:
    """Records what it is given. ``away_for``: how many calls fail transiently first;
    ``away_once``: trials whose first call fails transiently; ``refused``: trials refused."""

    def __init__(
        self,
        away_for: float = 0,
        away_once: Sequence[str] = (),
        refused: Sequence[str] = (),
    ) -> None:
        self.written: list[tuple[str, list[Op]]] = []  # ("trial 0", ops) or ("parent", [update])
        self.attempts: list[str] = []
        self.delivered = threading.Event()
        self._away_for = away_for
        self._away_once = set(away_once)
        self._refused = set(refused)

    def write_trial(self, trial: str, ops: Sequence[TrialOp]) -> None:
        self._call(f"trial {trial}", list(ops), trial)

    def write_parent(self, update: ParentUpdate) -> None:
        self._call("parent", [update], None)

    def _call(self, target: str, ops: list[Op], trial: str | None) -> None:
        self.attempts.append(target)
        if self._away_for > 0:
            self._away_for -= 1
            raise TransientSinkError("connection refused")
        if trial in self._away_once:
            self._away_once.discard(trial)
            raise TransientSinkError("connection refused")
        if trial in self._refused:
            raise ValueError(f"run for trial {trial} refused")
        self.written.append((target, ops))
        self.delivered.set()


def start(trial: str) -> StartRun:
    return StartRun(trial, f"trial-{trial}", {"lr": 0.1}, {"caviar.trial_index": trial}, 0)


def metrics(trial: str, step: int) -> LogMetrics:
    return LogMetrics(trial, (MetricPoint("val_accuracy", step / 100, step, step),))


def end(trial: str) -> EndRun:
    return EndRun(trial, "FINISHED", {"caviar.outcome": "completed"}, 0)


def parent() -> ParentUpdate:
    return ParentUpdate({"round": 2}, {}, (), {})


def writer_for(sink: FakeSink, clock: FakeClock, **options: float) -> BatchWriter:
    return BatchWriter(sink, clock=clock, **options)


# --- batching and order --------------------------------------------------------------------


def test_a_burst_of_results_is_one_sink_call_per_trial_in_submission_order() -> None:
    sink, clock = FakeSink(), FakeClock()
    writer = writer_for(sink, clock)
    ops: list[Op] = [start("0"), start("1")]
    for step in range(1, 26):
        ops += [metrics("0", step), metrics("1", step)]
    ops += [end("1"), end("0")]
    for op in ops:
        writer.submit(op)
    writer.flush()

    assert sink.attempts == ["trial 0", "trial 1"]
    assert sink.written == [
        ("trial 0", [op for op in ops if getattr(op, "trial", None) == "0"]),
        ("trial 1", [op for op in ops if getattr(op, "trial", None) == "1"]),
    ]
    writer.close()
    assert writer.undelivered == []


def test_a_parent_update_is_written_between_what_came_before_and_after_it() -> None:
    sink, clock = FakeSink(), FakeClock()
    writer = writer_for(sink, clock)
    update = parent()
    for op in (metrics("0", 1), update, metrics("0", 2), metrics("1", 1)):
        writer.submit(op)
    writer.close()

    assert sink.written == [
        ("trial 0", [metrics("0", 1)]),
        ("parent", [update]),
        ("trial 0", [metrics("0", 2)]),
        ("trial 1", [metrics("1", 1)]),
    ]


def test_the_batch_window_is_waited_once_then_everything_waiting_goes_together() -> None:
    sink, clock = FakeSink(), FakeClock()
    writer = writer_for(sink, clock, batch_interval_s=2.5)
    writer.submit(metrics("0", 1))
    writer.start()
    assert sink.delivered.wait(5)
    writer.close()
    assert clock.waited == [2.5]
    assert sink.written == [("trial 0", [metrics("0", 1)])]


# --- retries, backoff and the deadline -----------------------------------------------------


def test_a_store_away_while_running_is_retried_after_1_2_and_4_seconds() -> None:
    sink, clock = FakeSink(away_for=3), FakeClock()
    writer = writer_for(sink, clock)
    writer.submit(start("0"))
    writer.flush()  # returns after the first attempt: the op is kept for a retry
    assert sink.attempts[0] == "trial 0"
    assert sink.delivered.wait(5)
    writer.close()  # the store is back: nothing left to retry

    assert clock.waited == [1.0, 2.0, 4.0]  # no batch window: the flush wanted the writes now
    assert clock.slept == []
    assert sink.attempts == ["trial 0"] * 4
    assert sink.written == [("trial 0", [start("0")])]
    assert writer.outage_seconds == 7.0
    assert writer.had_errors
    assert writer.last_error == "connection refused"
    assert writer.undelivered == []


def test_close_keeps_retrying_with_backoff_until_the_deadline_then_reports_the_rest() -> None:
    sink, clock = FakeSink(away_for=math.inf), FakeClock()
    writer = writer_for(sink, clock, flush_timeout_s=100)
    for op in (start("0"), metrics("0", 1), parent()):
        writer.submit(op)
    began = clock.now
    writer.close()

    assert clock.slept == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert clock.now - began >= 100
    assert len(sink.attempts) == 9 and sink.written == []
    assert [str(item) for item in writer.undelivered] == [
        f"start 0: {UNREACHABLE}",
        f"metrics 0: {UNREACHABLE}",
        f"parent : {UNREACHABLE}",
    ]


def test_a_store_back_before_the_deadline_gets_everything() -> None:
    sink, clock = FakeSink(away_for=2), FakeClock()
    writer = writer_for(sink, clock, flush_timeout_s=100)
    writer.submit(start("0"))
    writer.submit(end("0"))
    writer.close()

    assert clock.slept == [1.0, 2.0]
    assert sink.written == [("trial 0", [start("0"), end("0")])]
    assert writer.undelivered == []
    assert writer.outage_seconds == 3.0


def test_a_retry_resends_the_failed_group_and_not_the_ones_delivered_before_it() -> None:
    sink, clock = FakeSink(away_once=["1"]), FakeClock()
    writer = writer_for(sink, clock)
    update = parent()
    for op in (start("0"), start("1"), metrics("1", 1), update):
        writer.submit(op)
    writer.close()

    assert sink.attempts == ["trial 0", "trial 1", "trial 1", "parent"]
    assert sink.written == [
        ("trial 0", [start("0")]),
        ("trial 1", [start("1"), metrics("1", 1)]),
        ("parent", [update]),
    ]
    assert clock.slept == [1.0]


def test_a_refused_write_is_recorded_and_never_retried() -> None:
    sink, clock = FakeSink(refused=["1"]), FakeClock()
    writer = writer_for(sink, clock)
    for op in (start("0"), start("1"), metrics("1", 1), start("2")):
        writer.submit(op)
    writer.flush()

    assert sink.attempts == ["trial 0", "trial 1", "trial 2"]
    assert [target for target, _ in sink.written] == ["trial 0", "trial 2"]
    assert [str(item) for item in writer.undelivered] == [
        "start 1: run for trial 1 refused",
        "metrics 1: run for trial 1 refused",
    ]
    assert writer.had_errors
    writer.close()
    assert clock.slept == [] and sink.attempts == ["trial 0", "trial 1", "trial 2"]


# --- flush and close ------------------------------------------------------------------------


class SlowSink(FakeSink):
    def write_trial(self, trial: str, ops: Sequence[TrialOp]) -> None:
        time.sleep(0.05)
        super().write_trial(trial, ops)


def test_flush_waits_for_the_queued_writes_without_waiting_out_the_batch_window() -> None:
    sink = SlowSink()
    writer = BatchWriter(sink, clock=SYSTEM_CLOCK, batch_interval_s=60)
    writer.start()
    writer.submit(metrics("0", 1))
    began = time.monotonic()
    writer.flush()

    assert sink.written == [("trial 0", [metrics("0", 1)])]
    assert time.monotonic() - began < 10
    writer.close()


def test_close_drains_everything_queued() -> None:
    sink, clock = FakeSink(), FakeClock()
    writer = writer_for(sink, clock, batch_interval_s=60)
    writer.start()
    ops = [start("0"), *(metrics("0", step) for step in range(1, 11)), end("0")]
    for op in ops:
        writer.submit(op)
    writer.close()

    assert [op for _, written in sink.written for op in written] == ops
    assert writer.undelivered == []


def test_nothing_is_written_after_close_and_what_came_late_is_reported() -> None:
    sink, clock = FakeSink(), FakeClock()
    writer = writer_for(sink, clock)
    writer.submit(start("0"))
    writer.close()
    writer.submit(metrics("0", 1))
    writer.flush()
    writer.close()

    assert sink.written == [("trial 0", [start("0")])]
    assert [str(item) for item in writer.undelivered] == [
        "metrics 0: submitted after the writer was closed"
    ]


def test_constructing_a_writer_starts_no_thread_and_calls_no_sink() -> None:
    before = set(threading.enumerate())
    sink = FakeSink()
    writer = writer_for(sink, FakeClock())
    writer.submit(start("0"))
    assert set(threading.enumerate()) - before == set()
    assert sink.attempts == []
    writer.close()
    assert sink.attempts == ["trial 0"]


# --- synchronous retries --------------------------------------------------------------------


def test_a_synchronous_write_is_retried_after_each_delay_until_it_succeeds() -> None:
    clock, calls = FakeClock(), []

    def write() -> str:
        calls.append(clock.now)
        if len(calls) < 3:
            raise TransientSinkError("database is locked")
        return "written"

    assert call_with_retries(write, clock) == "written"
    assert clock.slept == [0.5, 1.0]


def test_a_synchronous_write_that_stays_away_raises_the_stores_own_error() -> None:
    clock, calls = FakeClock(), []

    def write() -> None:
        calls.append(clock.now)
        try:
            raise ConnectionError("store away")
        except ConnectionError as error:
            raise TransientSinkError(str(error)) from error

    with pytest.raises(ConnectionError, match="store away"):
        call_with_retries(write, clock)
    assert clock.slept == [0.5, 1.0, 2.0, 4.0]
    assert len(calls) == 5


def test_a_synchronous_write_refused_for_good_is_not_retried() -> None:
    clock, calls = FakeClock(), []

    def write() -> None:
        calls.append(clock.now)
        raise ValueError("bad param")

    with pytest.raises(ValueError, match="bad param"):
        call_with_retries(write, clock)
    assert clock.slept == [] and len(calls) == 1


def test_the_writer_imports_no_mlflow() -> None:
    probe = (
        "import sys, orchestrator.store.writer; "
        "sys.exit(any(m.split('.')[0] == 'mlflow' for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", probe], timeout=60).returncode == 0
