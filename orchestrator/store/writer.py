"""The batched background writer: tracking writes queued by the sweep loop, delivered in order,
in batches, from one background thread, and retried while the store is away.

A write costs its caller an append to a queue. The thread waits a batch window after a write
arrives, so a burst of results becomes one sink call per run instead of one per result
(``log_batch`` is an order of magnitude cheaper than one key at a time: docs/performance.md).
The writer knows nothing of MLflow: it hands typed ops to a :class:`Sink`, and the sink says
which failures are worth retrying by raising :class:`TransientSinkError`.

Invariants:

* One trial's ops reach the sink in the order they were submitted. A :class:`ParentUpdate` is
  written after every op submitted before it and before any op submitted after it.
* Every submitted op is delivered or listed in :attr:`BatchWriter.undelivered` with a reason;
  nothing is dropped silently.
* A :class:`TransientSinkError` keeps the failed ops, and everything queued behind them, for a
  retry. Any other exception is final for the ops of that call: recorded, never retried.
* Nothing reaches the sink once :meth:`BatchWriter.close` has returned.
* Constructing a writer starts nothing: the thread starts in :meth:`BatchWriter.start` (or the
  first :meth:`~BatchWriter.flush` or :meth:`~BatchWriter.close`).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Waits between the attempts of a synchronous write (the sweep's summary, its end).
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)
#: The background writer's wait after a failed delivery doubles from the first to the last.
OUTAGE_BACKOFF_FIRST_S = 1.0
OUTAGE_BACKOFF_LAST_S = 30.0
#: Why an op still queued when :meth:`BatchWriter.close` gave up was not delivered.
UNREACHABLE_UNTIL_DEADLINE = "tracking store unreachable until the deadline"
SUBMITTED_AFTER_CLOSE = "submitted after the writer was closed"
REASON_LENGTH = 200


def epoch_ms(seconds: float | None = None) -> int:
    """Milliseconds since the epoch (the unit of every op's timestamps); None means now."""
    return int((time.time() if seconds is None else seconds) * 1000)


# --- the operations ----------------------------------------------------------------------


@dataclass(frozen=True)
class MetricPoint:
    """One value of one metric at one step; ``timestamp_ms`` as from :func:`epoch_ms`."""

    key: str
    value: float
    timestamp_ms: int
    step: int


@dataclass(frozen=True)
class StartRun:
    """Create a trial's run, with its params and tags, started at ``started_ms``."""

    kind: ClassVar[str] = "start"
    trial: str
    name: str
    params: Mapping[str, Any]
    tags: Mapping[str, str]
    started_ms: int


@dataclass(frozen=True)
class ReopenRun:
    """Mark a trial's existing run running again (a resumed sweep continues it). Its params
    and tags are logged again: a sweep killed just after creating the run may not have
    logged them (logging an equal value twice changes nothing)."""

    kind: ClassVar[str] = "reopen"
    trial: str
    params: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LogMetrics:
    """Metrics of one trial (one epoch's, as the tracker submits them)."""

    kind: ClassVar[str] = "metrics"
    trial: str
    metrics: tuple[MetricPoint, ...]


@dataclass(frozen=True)
class EndRun:
    """End a trial's run with ``status`` at ``ended_ms``, adding ``tags``."""

    kind: ClassVar[str] = "end"
    trial: str
    status: str
    tags: Mapping[str, str]
    ended_ms: int


@dataclass(frozen=True)
class ParentUpdate:
    """Additions to the sweep's parent run: params, tags, metrics and JSON artifacts."""

    kind: ClassVar[str] = "parent"
    params: Mapping[str, Any]
    tags: Mapping[str, str]
    metrics: tuple[MetricPoint, ...]
    json_artifacts: Mapping[str, Any]


TrialOp = StartRun | ReopenRun | LogMetrics | EndRun
Op = TrialOp | ParentUpdate


@dataclass(frozen=True)
class Undelivered:
    """An op the writer gave up on, and why; ``str()`` is the line reported to the user."""

    op: Op
    reason: str

    def __str__(self) -> str:
        trial = "" if isinstance(self.op, ParentUpdate) else self.op.trial
        return f"{self.op.kind} {trial}: {self.reason}"


# --- what the writer talks to --------------------------------------------------------------


class TransientSinkError(Exception):
    """The sink could not write now and may later (the store is away or busy).

    A sink raises it ``from`` the store's own error; that error, not this one, is what a
    caller of :func:`call_with_retries` sees when the retries run out.
    """


class Sink(Protocol):
    """Where ops are delivered. Each call may be repeated whole after it failed part-way (a
    retry sends the same ops again), so every call must be safe to repeat. A failure worth
    retrying raises :class:`TransientSinkError`; any other exception refuses the call's ops
    for good. A sink may also offer ``write_trials(groups)``, several trials' ops in one call
    (one store transaction), on the same terms, except that a refusal of it is tried again a
    trial at a time, so that only the trial at fault is refused."""

    def write_trial(self, trial: str, ops: Sequence[TrialOp]) -> None:
        """Write one trial's ops, in order, in as few store calls as the store allows."""
        ...

    def write_parent(self, update: ParentUpdate) -> None:
        """Write one update of the parent run."""
        ...


class Clock(Protocol):
    """Every wait and every reading of elapsed time the writer does goes through its clock."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; nothing cuts it short."""
        ...

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        """Wait on ``condition`` (its lock held) until notified or ``seconds`` pass. It may
        return sooner, as any condition wait may: callers check again what they wait for."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        condition.wait(seconds)


SYSTEM_CLOCK = SystemClock()


def call_with_retries(
    call: Callable[[], T], clock: Clock = SYSTEM_CLOCK, delays: Sequence[float] = RETRY_DELAYS_S
) -> T:
    """``call()``, called again after each of ``delays`` while it raises TransientSinkError.

    Any other exception is raised at once. When the last attempt fails too, the store's own
    error (the TransientSinkError's cause) is raised: callers see what a single call raises.
    """
    for delay in delays:
        try:
            return call()
        except TransientSinkError:
            clock.sleep(delay)
    try:
        return call()
    except TransientSinkError as error:
        if error.__cause__ is not None:
            raise error.__cause__ from None
        raise


def next_backoff(delay: float) -> float:
    """The wait after one more failed delivery: the first wait, then doubling, up to the last."""
    return min(OUTAGE_BACKOFF_LAST_S, max(OUTAGE_BACKOFF_FIRST_S, delay * 2))


# --- the writer ------------------------------------------------------------------------------


class BatchWriter:
    """Delivers submitted ops to a sink from one background thread, batching per trial.

    ``batch_interval_s``: how long the thread lets writes gather after one arrives, unless a
    :meth:`flush` or :meth:`close` wants them now. ``flush_timeout_s``: how long :meth:`close`
    keeps retrying a store that is away. ``store_label`` names the store in log lines,
    ``thread_name`` the writer thread.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        clock: Clock = SYSTEM_CLOCK,
        batch_interval_s: float = 1.0,
        flush_timeout_s: float = 300.0,
        store_label: str = "tracking store",
        thread_name: str = "caviar-writer",
    ) -> None:
        self.batch_interval_s = batch_interval_s
        self.flush_timeout_s = flush_timeout_s
        self.had_errors = False  # any delivery failed, even if a retry then succeeded
        self.outage_seconds = 0.0  # time spent with the store away, summed over outages
        self.last_error = ""  # the latest transient failure, for the outage warning
        self._sink = sink
        self._clock = clock
        self._store_label = store_label
        self._thread_name = thread_name
        # Guarded by _ready: everything between the callers and the thread.
        self._ready = threading.Condition()
        self._incoming: deque[Op] = deque()
        self._submitted = 0  # ops ever submitted (and accepted)
        self._attempted = 0  # ops the thread has tried to deliver at least once
        self._hurrying = 0  # flushes in progress: no batch window while any is
        self._closing = False
        self._deadline = math.inf
        self._thread: threading.Thread | None = None
        self._running = False
        self._undelivered: list[Undelivered] = []
        # The writer thread's own (and close's, once that thread has ended): ops taken from
        # _incoming, in submission order, until delivered.
        self._backlog: deque[Op] = deque()

    # --- the callers' side -------------------------------------------------------------------

    def submit(self, op: Op) -> None:
        """Queue ``op``; returns at once. After :meth:`close` it is recorded as undelivered."""
        with self._ready:
            if self._closing:
                self._undelivered.append(Undelivered(op, SUBMITTED_AFTER_CLOSE))
                return
            self._incoming.append(op)
            self._submitted += 1
            self._ready.notify_all()

    def start(self) -> None:
        """Start the writer thread (once; later calls do nothing)."""
        with self._ready:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            self._running = True
            self._thread.start()  # under the lock: whoever sees the thread may join it

    def flush(self) -> None:
        """Return once every op submitted before the call has been tried at least once
        (delivered, refused, or kept for a retry), without waiting out the batch window."""
        with self._ready:
            if self._closing:
                return  # close delivers or reports everything
            target = self._submitted
            self._hurrying += 1
            self._ready.notify_all()
        try:
            self.start()
            with self._ready:
                while self._attempted < target and self._running:
                    self._ready.wait()
        finally:
            with self._ready:
                self._hurrying -= 1

    def close(self) -> None:
        """Deliver everything submitted; while the store is away, keep retrying until
        ``flush_timeout_s`` has passed. What is still undelivered then is recorded, and nothing
        is written after this returns. Closing again does nothing."""
        with self._ready:
            if self._closing:
                return
            self._closing = True
            self._deadline = self._clock.monotonic() + self.flush_timeout_s
            self._ready.notify_all()
            never_started = self._thread is None
        if never_started:
            self.start()  # it sees _closing: it delivers without waiting, then ends
        assert self._thread is not None
        self._thread.join()
        with self._ready:
            leftovers = [*self._backlog, *self._incoming]
            self._backlog.clear()
            self._incoming.clear()
            self._undelivered.extend(
                Undelivered(op, UNREACHABLE_UNTIL_DEADLINE) for op in leftovers
            )

    @property
    def undelivered(self) -> list[Undelivered]:
        """Ops given up on so far: refused by the sink, left at the deadline, or too late."""
        with self._ready:
            return list(self._undelivered)

    # --- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        """Take what was submitted, deliver the backlog, back off while the store is away."""
        delay = 0.0  # the wait before the next retry; 0 while the store answers
        outage_started: float | None = None
        try:
            while True:
                taken, stopping = self._take(delay)
                delivered = self._deliver_backlog()
                with self._ready:
                    self._attempted += taken
                    self._ready.notify_all()
                if delivered:
                    if outage_started is not None:
                        self.outage_seconds += self._clock.monotonic() - outage_started
                        log.warning("%s reachable again; backlog delivered", self._store_label)
                        outage_started = None
                    delay = 0.0
                    if stopping:
                        return
                    continue
                if outage_started is None:
                    outage_started = self._clock.monotonic()
                    log.warning(
                        "%s unreachable (%s); %d writes wait and will be retried",
                        self._store_label,
                        self.last_error,
                        len(self._backlog),
                    )
                delay = next_backoff(delay)
                if stopping:
                    if self._clock.monotonic() >= self._deadline:
                        return
                    self._clock.sleep(delay)
        finally:
            with self._ready:
                self._running = False
                self._ready.notify_all()

    def _take(self, delay: float) -> tuple[int, bool]:
        """Move submitted ops to the backlog; returns how many, and whether closing.

        Unless closing, first wait for an op (at most ``delay`` while retrying). After the
        first op arrives, wait the batch window too, unless a flush or close cuts it short
        or a retry is due.
        """
        with self._ready:
            if not self._closing:
                self._wait_for_ops(delay)
            taken = self._move_incoming()
            if taken and not self._closing and delay == 0.0:
                self._wait_batch_window()
                taken += self._move_incoming()
            return taken, self._closing

    def _wait_for_ops(self, delay: float) -> None:
        if delay == 0.0:
            while not self._incoming and not self._closing:
                self._ready.wait()
            return
        until = self._clock.monotonic() + delay
        while not self._incoming and not self._closing:
            remaining = until - self._clock.monotonic()
            if remaining <= 0:
                return
            self._clock.wait(self._ready, remaining)

    def _wait_batch_window(self) -> None:
        until = self._clock.monotonic() + self.batch_interval_s
        while not self._hurrying and not self._closing:
            remaining = until - self._clock.monotonic()
            if remaining <= 0:
                return
            self._clock.wait(self._ready, remaining)

    def _move_incoming(self) -> int:
        moved = len(self._incoming)
        self._backlog.extend(self._incoming)
        self._incoming.clear()
        return moved

    def _deliver_backlog(self) -> bool:
        """Deliver the backlog in order; False if the store is away (the rest waits).

        Trial ops between two parent updates are grouped per trial, one sink call per group
        however many epochs it holds. A group that failed is retried whole (sink calls are
        safe to repeat); groups delivered before it are not sent again.
        """
        while self._backlog:
            segment = self._take_trial_segment()
            groups: dict[str, list[TrialOp]] = {}
            for op in segment:
                groups.setdefault(op.trial, []).append(op)
            if groups and not self._write_together(groups):
                self._backlog.extendleft(reversed(segment))
                return False
            for trial, ops in list(groups.items()):
                if not self._attempt(ops, functools.partial(self._sink.write_trial, trial, ops)):
                    unwritten = [op for op in segment if op.trial in groups]
                    self._backlog.extendleft(reversed(unwritten))
                    return False
                del groups[trial]
            if self._backlog:
                update = self._backlog[0]
                assert isinstance(update, ParentUpdate)
                if not self._attempt([update], functools.partial(self._sink.write_parent, update)):
                    return False
                self._backlog.popleft()
        return True

    def _write_together(self, groups: dict[str, list[TrialOp]]) -> bool:
        """Deliver every group in one sink call where the sink takes several trials at once
        (``groups`` is then emptied); False if the store is away. A refusal leaves ``groups``
        for the one-trial-at-a-time delivery, which refuses only the trial at fault."""
        write_trials = getattr(self._sink, "write_trials", None)
        if write_trials is None:
            return True
        try:
            write_trials(groups)
        except TransientSinkError as error:
            self.had_errors = True
            self.last_error = str(error)[:REASON_LENGTH]
            return False
        except Exception as error:  # refused: each trial on its own says which
            log.debug("a delivery of %d trials was refused (%s); one at a time", len(groups), error)
            return True
        groups.clear()
        return True

    def _take_trial_segment(self) -> list[TrialOp]:
        """Pop the trial ops at the head of the backlog, up to the next parent update."""
        segment: list[TrialOp] = []
        while self._backlog:
            op = self._backlog[0]
            if isinstance(op, ParentUpdate):
                break
            segment.append(op)
            self._backlog.popleft()
        return segment

    def _attempt(self, ops: Sequence[Op], write: Callable[[], None]) -> bool:
        """True when written or refused for good (recorded); False when worth retrying."""
        try:
            write()
            return True
        except TransientSinkError as error:
            self.had_errors = True
            self.last_error = str(error)[:REASON_LENGTH]
            return False
        except Exception as error:  # a refused write must not kill the writer
            self.had_errors = True
            reason = str(error)[:REASON_LENGTH]
        with self._ready:
            self._undelivered.extend(Undelivered(op, reason) for op in ops)
        return True
