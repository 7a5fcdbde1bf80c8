"""How a sweep's trials are planned: the rounds, their sizes, and how a region narrows.

Plain data, built from a spec by ``engine/search_setup.round_plan`` and read by the searcher
(``engine/searcher.py``), the conformance tests and the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orchestrator.search.tpe import TpeSettings


@dataclass(frozen=True)
class RoundPlan:
    """How the rounds of a sweep are sized and narrowed."""

    rounds: int
    samples_per_point: int
    seed: int
    keep_top: float
    margin: float
    metric: str
    mode: Literal["max", "min"]
    milestones: tuple[int, ...]
    budget: int
    tpe: TpeSettings | None = None  # strategy tpe: proposed one by one, not planned
    explore: float = 0.0  # zoom: the share of a later round sampled from the whole region
    keep_from: Literal["sweep", "round"] = "round"  # zoom: where the kept trials are ranked
    # zoom with sampler tpe: TPE draws a later round's box share (None: at random)
    round_sampler: TpeSettings | None = None
