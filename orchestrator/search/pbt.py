"""Population-based training's decisions, pure: who copies whom, and what it changes.

PBT (Jaderberg et al. 2017) trains a population in parallel and, every ``interval`` epochs,
lets a trial in the bottom ``quantile`` copy a top trial's weights (exploit) and continue with
that trial's values perturbed (explore). The seeds' panda and caviar at once: the result is a
schedule of values as well as a configuration.

caviar's PBT is synchronous: a generation's decisions are made once every trial of the
population has reached the boundary epoch (or ended before it), from the objective each trial
reported at that epoch and a generator seeded by (search seed, epoch). They depend on nothing
that arrives in a racy order, so a sweep killed and resumed makes the same decisions, and the
donor's state at that epoch is one it has saved before reporting it: the copy comes from a
checkpoint that exists.

A perturbation moves a value in its scale's own quantity (``log``: the value; ``log1m``:
1 - value, so momentum 0.99 moves to 0.988 or 0.992, not to 1.19), and stays inside the spec's
range. Only adjustable, non-shape parameters are perturbed: a new shape is a new trial.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from orchestrator.search.space import ChoiceDomain, RangeDomain, Scalar

# Mixed into every generation's generator: PBT's draws never coincide with the sampler's.
_STREAM = 0x9B7


@dataclass(frozen=True)
class PbtPlan:
    """What every PBT decision of one sweep works from."""

    interval: int
    max_epochs: int
    quantile: float
    factors: tuple[float, float]
    resample_probability: float
    seed: int
    mode: Literal["min", "max"]
    perturbed: tuple[RangeDomain | ChoiceDomain, ...]

    def boundaries(self) -> tuple[int, ...]:
        """The epochs a generation ends at: every ``interval`` epochs before the last."""
        return tuple(range(self.interval, self.max_epochs, self.interval))

    def is_boundary(self, epoch: int) -> bool:
        return 0 < epoch < self.max_epochs and epoch % self.interval == 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(domain.name for domain in self.perturbed)


@dataclass(frozen=True)
class Exploit:
    """Trial ``trial`` continues, from epoch ``epoch``, from ``from_trial``'s state at that
    epoch with the values ``after`` (its own were ``before``)."""

    epoch: int
    trial: int
    from_trial: int
    before: Mapping[str, Scalar]
    after: Mapping[str, Scalar]

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "trial": self.trial,
            "from_trial": self.from_trial,
            "before": dict(self.before),
            "after": dict(self.after),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Exploit:
        return cls(
            int(data["epoch"]),
            int(data["trial"]),
            int(data["from_trial"]),
            dict(data["before"]),
            dict(data["after"]),
        )


def perturbable(
    sampled: Iterable[RangeDomain | ChoiceDomain],
    adjustable: frozenset[str],
    shape_fields: Iterable[str],
) -> tuple[RangeDomain | ChoiceDomain, ...]:
    """The sampled parameters PBT may change mid-training: those the trainable can adjust
    between epochs, less the network's shape (and the epoch budget)."""
    fixed = {*shape_fields, "epochs", "seed"}
    return tuple(d for d in sampled if d.name in adjustable and d.name not in fixed)


def ranked(scores: Mapping[int, float], mode: Literal["min", "max"]) -> list[int]:
    """Trial indices best first; a non-finite score (a diverged trial) ranks last, ties by
    index."""

    def badness(index: int) -> tuple[float, int]:
        score = float(scores[index])
        if not math.isfinite(score):
            return (math.inf, index)
        return (-score if mode == "max" else score, index)

    return sorted(scores, key=badness)


def quantile_size(population: int, quantile: float) -> int:
    """How many trials are in the top (and the bottom) quantile: at least one of two or more,
    never more than half."""
    if population < 2:
        return 0
    return max(1, min(population // 2, math.ceil(population * quantile)))


def decide(
    plan: PbtPlan,
    epoch: int,
    scores: Mapping[int, float],
    values: Mapping[int, Mapping[str, Scalar]],
) -> list[Exploit]:
    """A generation's exploits: each bottom trial copies a top trial drawn at random and
    continues with that trial's values, the perturbed ones moved. ``scores`` holds the
    objective of every trial alive at ``epoch``; ``values`` their current values of every
    sampled parameter (a copy takes the donor's shape with its weights)."""
    order = ranked(scores, plan.mode)
    k = quantile_size(len(order), plan.quantile)
    if k == 0:
        return []
    top, bottom = order[:k], sorted(order[-k:])
    rng = np.random.default_rng([plan.seed, epoch, _STREAM])
    exploits = []
    for trial in bottom:
        donor = top[int(rng.integers(len(top)))]
        after = {**values[donor], **perturb(plan, values[donor], rng)}
        before = dict(values[trial])
        exploits.append(Exploit(epoch, trial, donor, before, after))
    return exploits


def perturb(
    plan: PbtPlan, values: Mapping[str, Scalar], rng: np.random.Generator
) -> dict[str, Scalar]:
    """``values`` explored: each perturbed parameter resampled from its domain (with
    ``resample_probability``) or moved by one of ``factors`` in its scale's quantity."""
    moved: dict[str, Scalar] = {}
    for domain in plan.perturbed:
        value = values[domain.name]
        resample = rng.random() < plan.resample_probability
        factor = plan.factors[int(rng.integers(len(plan.factors)))]
        if resample:
            moved[domain.name] = domain.sample(rng, 1)[0]
        elif isinstance(domain, RangeDomain):
            moved[domain.name] = scaled(domain, value, factor)
        else:
            moved[domain.name] = neighbour(domain, value, factor)
    return moved


def scaled(domain: RangeDomain, value: Scalar, factor: float) -> float | int:
    """``value`` times ``factor`` in its scale's quantity (``log1m``: 1 - value), clipped to
    the range; an integer moves at least one step."""
    x = float(value)  # type: ignore[arg-type]
    if domain.scale == "log1m":
        moved = 1.0 - (1.0 - x) * factor
    else:
        moved = x * factor
    if domain.integer:
        step = round(moved)
        if step == round(x) and factor != 1.0:
            step += 1 if factor > 1.0 else -1
        return int(min(max(step, domain.low), domain.high))
    return float(min(max(moved, domain.low), domain.high))


def neighbour(domain: ChoiceDomain, value: Scalar, factor: float) -> Scalar:
    """A listed value's neighbour in the list (the next one up for a factor above 1)."""
    choices = list(domain.values)
    position = choices.index(value) if value in choices else 0
    position += 1 if factor > 1.0 else -1
    return choices[min(max(position, 0), len(choices) - 1)]


@dataclass(frozen=True)
class Segment:
    """Epochs ``start``+1 .. ``end`` of a line, trained by ``trial`` with ``values``."""

    start: int
    end: int
    trial: int
    values: Mapping[str, Scalar]


def line_of(
    trial: int,
    final_epoch: int,
    exploits: Sequence[Exploit],
    initial: Mapping[int, Mapping[str, Scalar]],
) -> list[Segment]:
    """The schedule that produced ``trial``'s final weights, oldest segment first.

    Walks back from ``final_epoch``: after its latest exploit at epoch e the trial trained with
    that exploit's values; before e its weights were the donor's, so the line continues along
    the donor's history up to e, and so on to epoch 0. ``initial`` holds each trial's starting
    values.
    """
    by_trial: dict[int, list[Exploit]] = {}
    for event in exploits:
        by_trial.setdefault(event.trial, []).append(event)
    segments: list[Segment] = []
    current, end = trial, final_epoch
    while end > 0:
        earlier = [e for e in by_trial.get(current, ()) if e.epoch < end]
        if not earlier:
            segments.append(Segment(0, end, current, dict(initial.get(current, {}))))
            break
        last = max(earlier, key=lambda e: e.epoch)
        segments.append(Segment(last.epoch, end, current, dict(last.after)))
        current, end = last.from_trial, last.epoch
    return segments[::-1]
