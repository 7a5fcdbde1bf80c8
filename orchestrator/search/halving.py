"""Asynchronous successive halving (ASHA, https://arxiv.org/abs/1810.05934), decided by caviar.

Decision for decision the algorithm of Ray Tune 2.60's ``ASHAScheduler``, which caviar drove
through its private attributes before, with the bracket draw caviar already made its own:

- Bracket ``s`` (of ``brackets``) has rungs at ``grace_period * reduction_factor ** (k + s)``
  epochs, up to ``max_epochs``. A trial's bracket is drawn with ASHA's odds (a bracket with
  more rungs is likelier, ``e ** rungs``) from a generator seeded by the sweep seed and the
  trial's index: the same trial gets the same bracket live and replayed, in any order.
- A result at or beyond ``max_epochs`` stops the trial and is not recorded (``complete``
  records it). Any other result is judged at the highest rung it reached and is not yet
  recorded at: it stops when its score is below the rung's cutoff, the ``1 - 1 /
  reduction_factor`` quantile of the scores recorded there before it (linear interpolation,
  NaN ignored; none recorded, or all NaN: no cutoff), and is then recorded there. A score
  equal to the cutoff goes on; a NaN score goes on and is recorded.
- A score is the value, negated when ``mode`` is ``"min"``: larger is better.

One rule is caviar's own, for results that arrive together (``decide_together``): the members
of a fused pack reach a rung in the same step. Judged one by one, the first to be judged at an
empty rung would always go on, whatever its score, and the order (the members' indices) would
decide who else does. Judged together, as ASHA's paper promotes (the top ``1 /
reduction_factor`` of every trial that reached the rung), their scores are all recorded first,
and each stops when it is below the cutoff of the rung's scores with theirs among them: a
first pack of 8 at reduction factor 3 sends its best 3 on, not its first one plus chance. A
single result is judged exactly as above.

The state is each known trial's bracket and each rung's recorded scores, and nothing else: the
same calls in the same order rebuild it exactly (``HalvingScheduler.replay``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Literal

import numpy as np


class Decision(Enum):
    CONTINUE = "CONTINUE"
    STOP = "STOP"


@dataclass(frozen=True)
class Rung:
    """A read-only view of one rung: the scores recorded there, by trial index."""

    epoch: float
    scores: Mapping[int, float]
    quantile: float  # percent: 100 * (1 - 1 / reduction_factor)

    @property
    def cutoff(self) -> float | None:
        """The score a trial reaching the rung now must not fall below (None: none)."""
        return _cutoff(self.scores, self.quantile)


class SuccessiveHalving:
    """ASHA's bookkeeping and decisions, keyed by caviar trial index."""

    def __init__(
        self,
        max_epochs: int,
        grace_period: int = 1,
        reduction_factor: float = 4,
        brackets: int = 1,
        mode: Literal["min", "max"] = "max",
        seed: int = 0,
        stop_last_trials: bool = True,
    ) -> None:
        if not (0 < grace_period <= max_epochs and reduction_factor > 1 and brackets > 0):
            raise ValueError(
                "successive halving needs 0 < grace_period <= max_epochs, reduction_factor > 1 "
                f"and brackets > 0 (got {grace_period}, {max_epochs}, {reduction_factor}, "
                f"{brackets})"
            )
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self.max_epochs = max_epochs
        self.reduction_factor = reduction_factor
        self._quantile = (1 - 1 / reduction_factor) * 100
        self.seed = seed
        # Ray's ``stop_last_trials``: results at max_epochs stop, and a trial that skipped a
        # rung on its way up is still judged there. False: neither.
        self.stop_last_trials = stop_last_trials
        self._sign = 1.0 if mode == "max" else -1.0
        levels = np.log(max_epochs / grace_period) / np.log(reduction_factor)  # Ray's float math
        # Per bracket, (epoch, scores by index) from the lowest rung up.
        self._rungs: list[list[tuple[float, dict[int, float]]]] = [
            [(grace_period * reduction_factor ** (k + s), {}) for k in range(int(levels - s + 1))]
            for s in range(brackets)
        ]
        self._bracket: dict[int, int] = {}  # the trials added and not yet completed or removed

    def add(self, index: int) -> None:
        """A trial starts, or starts again after a resume (it keeps its bracket)."""
        if index not in self._bracket:
            self._bracket[index] = self._draw(index)

    def decide(self, index: int, epoch: float, value: float) -> Decision:
        """Judge one result of a running trial (added before, unless ``epoch`` is final)."""
        if epoch >= self.max_epochs and self.stop_last_trials:
            return Decision.STOP
        return self._judge(index, epoch, value)

    def decide_together(self, results: Sequence[tuple[int, float, float]]) -> list[Decision]:
        """Judge results that arrived together, ``(index, epoch, value)`` each: the members of
        a pack at one step. Each is judged at its rung against the scores recorded there with
        all of these among them (module docstring); one result is judged as ``decide`` does."""
        if len(results) == 1:
            return [self.decide(*results[0])]
        decisions = [Decision.CONTINUE] * len(results)
        recorded: list[tuple[int, dict[int, float], float]] = []
        for position, (index, epoch, value) in enumerate(results):
            if epoch >= self.max_epochs and self.stop_last_trials:
                decisions[position] = Decision.STOP
                continue
            scores = self._rung_to_record(index, epoch)
            if scores is not None:  # else it goes on unjudged
                scores[index] = self._sign * value
                recorded.append((position, scores, scores[index]))
        for position, scores, score in recorded:  # every score is in: now the cutoffs
            cutoff = _cutoff(scores, self._quantile)
            if cutoff is not None and score < cutoff:
                decisions[position] = Decision.STOP
        return decisions

    def complete(self, index: int, epoch: float, value: float) -> None:
        """A trial ended with this last result: recorded like a result, then forgotten."""
        if index in self._bracket:
            self._judge(index, epoch, value)
            del self._bracket[index]

    def remove(self, index: int) -> None:
        """A trial ended before running on (its recorded scores stay)."""
        self._bracket.pop(index, None)

    def bracket_of(self, index: int) -> int | None:
        return self._bracket.get(index)

    @property
    def rungs(self) -> tuple[tuple[Rung, ...], ...]:
        """Per bracket, its rungs from the lowest up."""
        return tuple(
            tuple(Rung(e, MappingProxyType(dict(s)), self._quantile) for e, s in bracket)
            for bracket in self._rungs
        )

    def _judge(self, index: int, epoch: float, value: float) -> Decision:
        scores = self._rung_to_record(index, epoch)
        if scores is None:
            return Decision.CONTINUE
        score = self._sign * value
        cutoff = _cutoff(scores, self._quantile)
        scores[index] = score
        stop = cutoff is not None and score < cutoff
        return Decision.STOP if stop else Decision.CONTINUE

    def _rung_to_record(self, index: int, epoch: float) -> dict[int, float] | None:
        """The scores of the rung this result is judged at, or None: it goes on unjudged."""
        for milestone, scores in reversed(self._rungs[self._bracket[index]]):
            if epoch >= milestone and index in scores and not self.stop_last_trials:
                return None  # it passed this rung already: it goes on
            if epoch < milestone or index in scores:
                continue
            return scores
        return None

    def _draw(self, index: int) -> int:
        sizes = np.array([len(rungs) for rungs in self._rungs])
        weights = np.e ** (sizes - sizes.max())
        rng = np.random.default_rng([self.seed, index])
        return int(rng.choice(len(self._rungs), p=weights / weights.sum()))


def _cutoff(scores: Mapping[int, float], quantile: float) -> float | None:
    if not scores:
        return None
    return np.nanpercentile(list(scores.values()), quantile)
