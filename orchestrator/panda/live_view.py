"""The panda session in the terminal: the curves so far as sparklines, and what trains now.

On a terminal the view is a block of lines redrawn in place after every epoch (cursor moved
up over the previous block); elsewhere (a pipe, a log file, a Ray job's log) each epoch is one
appended line. Events (a change, a rewind, a rule firing, a refused command, a pause) always get
a line of their own that stays, with the block drawn again under it on a terminal.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from orchestrator.panda.session import PandaSession, SessionEvent

BARS = "▁▂▃▄▅▆▇█"
WIDTH = 32  # epochs shown in a sparkline
SHOWN = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")


def sparkline(values: Sequence[float | None], width: int = WIDTH) -> str:
    """One character per value (the newest ``width``), scaled between their min and max;
    a missing or non-finite value is a gap ('·')."""
    shown = list(values)[-width:]
    finite = [v for v in shown if v is not None and math.isfinite(v)]
    if not finite:
        return "·" * len(shown)
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    out = []
    for v in shown:
        if v is None or not math.isfinite(v):
            out.append("·")
        else:
            out.append(BARS[min(len(BARS) - 1, int((v - low) / span * (len(BARS) - 1) + 0.5))])
    return "".join(out)


class LiveView:
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._drawn = 0  # lines of the block on screen (tty only)

    def on_epoch(self, session: PandaSession, result: dict[str, Any]) -> None:
        if self.tty:
            self._redraw(self.block(session))
        else:
            print(self.epoch_line(session, result), file=self.stream, flush=True)

    def on_event(self, session: PandaSession, event: SessionEvent) -> None:
        self._clear()
        print(f"caviar: epoch {event.epoch}: {event.text}", file=self.stream, flush=True)
        if self.tty and session.lineage.segments:  # the block stays under it (a paused
            self._redraw(self.block(session))  # session is looked at, not scrolled past)

    def close(self) -> None:
        self._drawn = 0

    # --- what is shown ----------------------------------------------------------------------

    def epoch_line(self, session: PandaSession, result: dict[str, Any]) -> str:
        segment = session.lineage.current
        budget = segment.config.get("epochs", "?")
        parts = [f"epoch {int(result['epoch']):>3}/{budget} seg {segment.index}"]
        for key in SHOWN:
            if key in result:
                parts.append(f"{key} {float(result[key]):.4f}")
        if "learning_rate" in result:
            parts.append(f"lr {float(result['learning_rate']):.3g}")
        values = [_number(e.get(session.metric)) for e in session.lineage.branch()]
        parts.append(f"{session.metric} {sparkline(values)}")
        return "  ".join(parts)

    def block(self, session: PandaSession) -> list[str]:
        branch = session.lineage.branch()
        segment = session.lineage.current
        newest = branch[-1] if branch else {}
        lines = [
            f"epoch {session.lineage.epoch}/{segment.config.get('epochs', '?')}  "
            f"segment {segment.index} (since epoch {segment.start_epoch}, {segment.reason} by "
            f"{segment.by})"
        ]
        for key in SHOWN:
            if key in newest:
                curve = sparkline([_number(e.get(key)) for e in branch])
                lines.append(f"  {key:<15}{float(newest[key]):>9.4f}  {curve}")
        shown = "  ".join(f"{k}={_fmt(v)}" for k, v in sorted(segment.config.items()))
        lines.append(f"  now: {shown}")
        return lines

    # --- drawing ----------------------------------------------------------------------------

    def _redraw(self, lines: list[str]) -> None:
        self._clear()
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = len(lines)

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")  # up N lines, clear to the end
            self._drawn = 0


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
