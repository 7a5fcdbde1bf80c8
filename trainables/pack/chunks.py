"""Members in chunks: evaluation and the population pass run a fused pack's members a chunk
at a time, so a big pack over a big split fits in memory."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from trainables.pack.model import MlpShape

_EVAL_ELEMENTS = 1 << 24
"""Evaluation and the population pass run members in chunks whose widest activation holds at
most this many elements (64 MiB in float32), so a big pack over a big split fits in memory."""


def member_chunks(shape: MlpShape, positions: Sequence[int], rows: int) -> Iterable[list[int]]:
    """``positions`` in chunks whose widest activation over ``rows`` rows fits the bound."""
    widest = max(shape.n_features, shape.n_classes, shape.hidden_units if shape.layers else 0)
    size = max(1, _EVAL_ELEMENTS // max(1, rows * widest))
    for start in range(0, len(positions), size):
        yield list(positions[start : start + size])


def contiguous(positions: Sequence[int]) -> bool:
    return all(b == a + 1 for a, b in zip(positions, positions[1:], strict=False))
