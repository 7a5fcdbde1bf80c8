"""Live progress of a sweep: counts by outcome and the best trial so far, on one line.

On a terminal the line is rewritten in place a few times a second; in a log (CI, a Ray job)
a fresh line is printed every few seconds, so long sweeps show they are alive without
flooding the log.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable
from typing import Literal, TextIO

from orchestrator.search.ranking import rung_reached
from orchestrator.trials import Trial


class ProgressLine:
    """Formats and prints the progress line; knows nothing of Ray."""

    def __init__(
        self,
        total: int,
        metric: str,
        mode: Literal["max", "min"],
        milestones: list[int],
        stream: TextIO | None = None,
        interval_s: float | None = None,
    ) -> None:
        self.total = total
        self.metric = metric
        self.mode = mode
        self.milestones = milestones
        self.stream = stream or sys.stdout
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s if interval_s is not None else (0.25 if self.is_tty else 5.0)
        self.started = time.monotonic()
        self._last_print = 0.0
        self._last_text = ""

    def render(self, records: Iterable[Trial]) -> str:
        records = list(records)
        counts = Counter(r.state for r in records)
        pending = self.total - len(records)
        best = self._leader(records)
        best_text = "best: -"
        if best is not None:
            value = best.metric(self.metric)
            best_text = f"best {self.metric} {value:.4f} (trial {best.index}, epoch {best.epochs})"
        elapsed = time.monotonic() - self.started
        return (
            f"[{elapsed:6.1f}s] running {counts['running']} | pending {pending} | "
            f"completed {counts['completed']} | stopped early {counts['stopped_early']} | "
            f"diverged {counts['diverged']} | failed {counts['failed']} | {best_text}"
        )

    def update(self, records: Iterable[Trial], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_print < self.interval_s:
            return
        text = self.render(records)
        if text == self._last_text and not force:
            return
        self._last_print, self._last_text = now, text
        if self.is_tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own (``caviar: ...``), above the progress line on a terminal."""
        if self.is_tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        if self.is_tty and self._last_text:
            self.stream.write(self._last_text)
        self.stream.flush()

    def close(self, records: Iterable[Trial]) -> None:
        self.update(records, force=True)
        if self.is_tty:
            self.stream.write("\n")
            self.stream.flush()

    def _leader(self, records: list[Trial]) -> Trial | None:
        """The live leader: deepest rung reached, then the objective (running trials count)."""
        best, best_key = None, None
        for record in records:
            if record.state in ("diverged", "failed"):
                continue
            value = record.metric(self.metric)
            if value is None:
                continue
            key = (
                rung_reached(record.epochs, self.milestones),
                value if self.mode == "max" else -value,
            )
            if best_key is None or key > best_key:
                best, best_key = record, key
        return best
