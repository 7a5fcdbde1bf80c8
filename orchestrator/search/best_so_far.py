"""The search converging: the best objective so far against the epochs the sweep has spent.

One number answers "is the search finding better models as it spends more?": after every
trial that ends, the best objective among the trials that trained the full budget, set against
the epochs every trial has trained until then (a pack member's epochs count as its own). A
trial stopped early never counts as best (as in caviar's ranking, and in the search benchmark,
bench/search_bench.py), so the curve only rises (falls, for a loss) and never revises a point.

The sweep logs it to the parent run as the metric ``best_so_far`` with the epochs spent as its
step (``store.layout.BEST_SO_FAR_METRIC``), so MLflow's chart of the parent shows the search
converging; the report draws it with the epoch each round began at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class BestSoFar:
    """The running best of a sweep's full-budget trials, and the epochs it has spent."""

    mode: Literal["max", "min"]
    budget: int  # the epochs of a trial that trained in full
    spent: int = 0
    best: float | None = None
    points: list[tuple[int, float]] = field(default_factory=list)  # (epochs spent, best)

    def trained(self, epochs: int = 1) -> None:
        """Some trial trained ``epochs`` more epochs."""
        self.spent += max(0, epochs)

    def ended(self, epochs: int, value: float | None, diverged: bool = False) -> float | None:
        """A trial ended after ``epochs`` with ``value`` at its last epoch: the new best when
        it is one (recorded in :attr:`points` at the epochs spent), else None."""
        if diverged or epochs < self.budget or value is None or not math.isfinite(value):
            return None
        if self.best is not None and not _better(value, self.best, self.mode):
            return None
        self.best = float(value)
        self.points.append((self.spent, self.best))
        return self.best


def _better(value: float, than: float, mode: Literal["max", "min"]) -> bool:
    return value > than if mode == "max" else value < than
