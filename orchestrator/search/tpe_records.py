"""One trial as TPE knows it (:class:`Record`) and how it is shown to the sampler
(:data:`Encoding`): the data ``tpe.py`` keeps for each trial, all of it in the sweep's journal,
and the pure rules on it. See ``tpe.py``'s docstring for why each trial is shown as it is."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from orchestrator.trials import TrialState

# How a trial is shown to the sampler at the chosen milestone.
Encoding = (
    tuple[Literal["running"]]
    | tuple[Literal["complete"], float]
    | tuple[Literal["pruned"], int, float]
    | tuple[Literal["bad"]]
)
RUNNING: Encoding = ("running",)
BAD: Encoding = ("bad",)


@dataclass
class Record:
    """What the sampler may know of one trial: all of it is in the sweep's journal."""

    config: dict[str, Any]
    ended: TrialState | None = None
    diverged: bool = False
    rungs: dict[int, float] = field(default_factory=dict)  # milestone -> value first there
    last: tuple[int, float] | None = None  # (epoch, value) of its newest finite value
    pack: int | None = None  # a pack member: its pack's first index (its shape trial's key)
    # The fused pack it trains in (its first index), counted as one unit while it waits for a
    # result: ``pack`` where that is set, and also in a space without a sampled shape field,
    # where a pack's members are lone trials to the sampler (no shape trial, ``pack`` None).
    unit: int | None = None


def frozen_fields(encoding: Encoding) -> tuple[Any, float | None, dict[int, float] | None]:
    """Optuna's (state, value, intermediate values) for a finished study trial."""
    from optuna.trial import TrialState as OptunaState

    if encoding[0] == "complete":
        return OptunaState.COMPLETE, encoding[1], None
    if encoding[0] == "pruned":
        return OptunaState.PRUNED, None, {int(encoding[1]): float(encoding[2])}
    return OptunaState.PRUNED, None, None


def rank_key(encoding: Encoding, mode: str) -> tuple[int, float, float]:
    """A sort key for encodings, larger is better: Optuna's order (complete, then pruned
    deeper first, then bad), by the value in the objective's direction."""
    sign = 1.0 if mode == "max" else -1.0
    if encoding[0] == "complete":
        return (2, 0.0, sign * encoding[1])
    if encoding[0] == "pruned":
        return (1, float(encoding[1]), sign * encoding[2])
    return (0, 0.0, 0.0)


def has_result(record: Record) -> bool:
    """Something the sampler can learn from: a value at a milestone, or an end."""
    return bool(record.rungs) or record.ended is not None or record.diverged


def is_bad(record: Record) -> bool:
    return record.diverged or record.ended in (TrialState.DIVERGED, TrialState.FAILED)


def finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def results_so_far(records: Mapping[int, Record]) -> tuple[int, int]:
    """(trials with a result, blind units: packs or lone trials none of whose trials has a
    result yet), in one pass: Tune asks again at every step of its loop while a proposal
    waits."""
    told = 0
    seen: dict[int, bool] = {}
    for index, record in records.items():
        known = has_result(record)
        told += known
        unit = record.unit if record.unit is not None else index
        seen[unit] = seen.get(unit, False) or known
    return told, sum(1 for known in seen.values() if not known)


def proposal_seed(seed: int, index: int, kind: int = 0) -> int:
    """The sampler seed of trial ``index``'s proposal (``kind`` 1: its pack's shape): fixed by
    the sweep seed and the index."""
    entropy = [seed, index] if kind == 0 else [seed, index, kind]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def plain(values: Mapping[str, Any]) -> str:
    """A canonical text of ``values`` (compares configurations whatever their types)."""
    return repr(sorted((k, repr(v)) for k, v in values.items()))
