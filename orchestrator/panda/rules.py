"""The babysitting rules: what a person watching the curves would do, as pure functions.

:func:`decide` looks at the current branch's epochs after each epoch and returns at most one
:class:`Action`, which the session applies exactly as it applies a person's adjustment (same
journal line, same new segment in MLflow, ``by`` naming the rule). Order of precedence:
divergence (the weights are garbage; nothing else can be judged), then stop, then plateau.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.spec.panda import PandaRules

LEARNING_RATE = "learning_rate"


@dataclass(frozen=True)
class Action:
    """One decision: change numbers now, go back to an epoch first, or stop."""

    kind: Literal["adjust", "rewind", "stop"]
    by: str  # "rule:plateau", "rule:divergence", "rule:stop" or "user"
    reason: str
    changes: dict[str, Any] = field(default_factory=dict)
    rewind_to: int | None = None


def _value(entry: Mapping[str, Any], metric: str) -> float | None:
    value = entry.get(metric)
    if value is None or entry.get("diverged"):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _better(a: float, b: float | None, mode: str, min_delta: float) -> bool:
    """``a`` improves on ``b`` by more than ``min_delta`` (anything beats no value)."""
    if b is None:
        return True
    return a > b + min_delta if mode == "max" else a < b - min_delta


def epochs_since_best(
    branch: Sequence[Mapping[str, Any]], metric: str, mode: str, min_delta: float = 0.0
) -> int:
    """Epochs trained after the branch's best value of ``metric`` (0: the newest is best)."""
    best: float | None = None
    best_at = 0
    for position, entry in enumerate(branch):
        value = _value(entry, metric)
        if value is not None and _better(value, best, mode, min_delta):
            best, best_at = value, position + 1
    return len(branch) - best_at


def decide(
    rules: PandaRules,
    branch: Sequence[Mapping[str, Any]],
    metric: str,
    mode: str,
    config: Mapping[str, Any],
    changed_at: int,
    rewinds_used: int,
) -> Action | None:
    """The rule that fires after the newest epoch of ``branch`` (oldest first), if any.

    ``changed_at`` is the epoch of the branch's last change (its segment's start): a plateau
    is only judged on epochs trained since, so a lowered rate gets ``patience`` epochs to show
    its effect before it is lowered again. ``rewinds_used`` counts the divergence rule's.
    """
    if not branch:
        return None
    newest = branch[-1]
    epoch = int(newest.get("epoch", 0))
    if newest.get("diverged"):
        rule = rules.divergence
        if rule is None or rewinds_used >= rule.max_rewinds or LEARNING_RATE not in config:
            return None
        good = epoch - 1
        rate = float(config[LEARNING_RATE]) * rule.factor
        return Action(
            "rewind",
            "rule:divergence",
            f"loss not finite at epoch {epoch}: back to epoch {good}, learning_rate x "
            f"{rule.factor:g}",
            {LEARNING_RATE: rate},
            good,
        )
    if rules.stop is not None:
        idle = epochs_since_best(branch, metric, mode, rules.stop.min_delta)
        if idle >= rules.stop.patience:
            return Action(
                "stop",
                "rule:stop",
                f"no better {metric} for {idle} epochs (patience {rules.stop.patience})",
            )
    plateau = rules.plateau
    if plateau is not None and LEARNING_RATE in config:
        recent = [e for e in branch if int(e.get("epoch", 0)) > changed_at]
        if len(recent) >= plateau.patience:
            idle = epochs_since_best(branch, metric, mode, plateau.min_delta)
            if idle >= plateau.patience:
                rate = float(config[LEARNING_RATE]) * plateau.factor
                return Action(
                    "adjust",
                    "rule:plateau",
                    f"{metric} flat for {idle} epochs: learning_rate x {plateau.factor:g}",
                    {LEARNING_RATE: rate},
                )
    return None
