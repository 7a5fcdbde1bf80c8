"""How long each running trial has been silent: a live notice for a stall, and the error of a
trial its epoch timeout ended.

Kept by the sweep's observer (``observer.py``), on the driver, from Tune's events: a trial is
heard when it starts, reports or restarts, and forgotten when it ends.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import deque
from pathlib import Path

from orchestrator.engine.trial_actor import TIMEOUT_NOTE

# A trial silent for this many times its usual gap between reports gets a live notice (once),
# but never sooner than NOTICE_MIN_S, nor later than half its epoch timeout.
NOTICE_FACTOR = 10.0
NOTICE_MIN_S = 30.0
RECENT_GAPS = 5  # a trial's usual gap is the median of its last this many


class StallWatch:
    """When the driver last heard from each running trial (by caviar index), and its recent
    gaps between reports (seconds): what a stall is measured against."""

    def __init__(self, epoch_timeout_s: float | None, timeouts_dir: Path | None) -> None:
        self.epoch_timeout_s = epoch_timeout_s
        self.timeouts_dir = timeouts_dir  # where a worker's watchdog leaves its note
        self._heard: dict[int, float] = {}
        self._gaps: dict[int, deque[float]] = {}
        self._noticed: set[int] = set()

    def started(self, index: int) -> None:
        self._heard[index] = time.monotonic()

    def heard(self, index: int) -> None:
        """A report arrived: its gap since the last one counts toward the trial's pace."""
        now = time.monotonic()
        last = self._heard.get(index)
        if last is not None and now > last:
            self._gaps.setdefault(index, deque(maxlen=RECENT_GAPS)).append(now - last)
        self._heard[index] = now

    def restarted(self, index: int) -> None:
        """Tune restarted the trial: its silence starts over, and may be told again."""
        self._heard[index] = time.monotonic()
        self._noticed.discard(index)

    def ended(self, index: int) -> None:
        self._heard.pop(index, None)

    def timed_out(self, trial_id: str, index: int, epochs: int) -> str | None:
        """The error of a trial whose worker ended it for silence (``epoch_timeout_s``: the
        worker's watchdog exits the process, so Tune only sees the worker die), from the
        note the watchdog left, else from the driver's own clock; None if it did not."""
        timeout = self.epoch_timeout_s
        if timeout is None:
            return None
        if self.timeouts_dir is not None:
            note = self.timeouts_dir / TIMEOUT_NOTE.format(trial_id=trial_id)
            try:
                left = json.loads(note.read_text())
                return f"timed out after {left['timeout_s']:g} s in epoch {left['epoch']}"
            except (OSError, ValueError, KeyError, TypeError):
                pass
        heard = self._heard.get(index)
        if heard is None or time.monotonic() - heard < timeout:
            return None
        return f"timed out after {timeout:g} s after epoch {epochs}"

    def notices(self) -> list[str]:
        """A line, once per trial, for each trial silent for far longer than its reports
        usually take: before its epoch timeout ends it, a person can look."""
        now = time.monotonic()
        # No threshold is below this one: a trial silent for less needs no median. Called at
        # every step of Tune's loop, so only the running trials are looked at unless one is
        # that silent (the others' gaps, every trial's since the start, are read only then).
        floor = NOTICE_MIN_S
        if self.epoch_timeout_s is not None:
            floor = min(floor, self.epoch_timeout_s / 2)
        everyone: list[float] | None = None
        lines = []
        for index, heard in self._heard.items():
            silent = now - heard
            if silent < floor or index in self._noticed:
                continue
            gaps = self._gaps.get(index)
            if not gaps:  # not heard from yet: the others' pace
                if everyone is None:
                    everyone = [gap for gaps in self._gaps.values() for gap in gaps]
                gaps = everyone
            if not gaps:
                continue
            usual = statistics.median(gaps)
            threshold = max(NOTICE_FACTOR * usual, NOTICE_MIN_S)
            if self.epoch_timeout_s is not None:
                threshold = min(threshold, self.epoch_timeout_s / 2)
            if silent < threshold:
                continue
            self._noticed.add(index)
            limit = (
                f"it ends failed at {self.epoch_timeout_s:g} s (resources.epoch_timeout_s)"
                if self.epoch_timeout_s is not None
                else "resources.epoch_timeout_s is off: it waits until stopped"
            )
            lines.append(
                f"caviar: trial {index} has sent nothing for {silent:.0f} s (reports come "
                f"every {usual:.1f} s); {limit}"
            )
        return lines
