"""Coarse to fine: the next round's region from the best trials of this one (pure functions).

The seeds' recipe: sample the whole region at random, find where the good trials are, zoom in,
sample again. The box is taken in each parameter's transformed coordinate (x, log10 x,
log10(1 - x)), so a region shrinks the same way on every scale: a learning rate zooms by
decades, a momentum by its averaging horizon.

Rules, each tested:
- the new box spans the kept trials, widened on each side by ``margin`` times the previous
  box's width, and clipped to the previous box (a region never grows);
- one kept trial gives a box of ``2 * margin`` widths centred on it;
- integers stay integers (bounds rounded outwards);
- a categorical keeps the values seen among the kept trials; grid parameters never change;
- a box narrower than the parameter's resolution is not narrowed further;
- no eligible trial (all diverged or failed): the region stays as it was, with a warning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.search.space import (
    ChoiceDomain,
    Domain,
    GridDomain,
    RangeDomain,
    SearchSpace,
    from_transformed,
    to_transformed,
)

# A float range stops narrowing below this share of its width in the spec (transformed coords).
MIN_RELATIVE_WIDTH = 0.01


@dataclass(frozen=True)
class ZoomStep:
    """The next region and what happened to each parameter on the way there."""

    space: SearchSpace
    notes: tuple[str, ...]


def keep_count(keep_top: float, eligible: int) -> int:
    """How many of the eligible trials to keep: a fraction (< 1) or a count (>= 1)."""
    if eligible == 0:
        return 0
    wanted = math.ceil(keep_top * eligible) if keep_top < 1 else int(keep_top)
    return max(1, min(eligible, wanted))


def next_region(
    current: SearchSpace,
    original: SearchSpace,
    kept: Sequence[Mapping[str, Any]],
    margin: float,
) -> ZoomStep:
    """The region of the next round, from the kept (best) trials' configurations."""
    if not kept:
        return ZoomStep(
            current,
            (
                "no trial of this round can be ranked (all diverged or "
                "failed): the next round keeps the same region",
            ),
        )
    originals = {d.name: d for d in original.domains}
    domains: list[Domain] = []
    notes: list[str] = []
    for domain in current.domains:
        if isinstance(domain, GridDomain):
            domains.append(domain)
        elif isinstance(domain, ChoiceDomain):
            seen = {repr(c[domain.name]) for c in kept}
            values = tuple(v for v in domain.values if repr(v) in seen)
            domains.append(ChoiceDomain(domain.name, values or domain.values))
        else:
            narrowed, note = _narrow_range(
                domain, originals[domain.name], [c[domain.name] for c in kept], margin
            )
            domains.append(narrowed)
            if note:
                notes.append(note)
    return ZoomStep(SearchSpace(tuple(domains), current.fixed), tuple(notes))


def _narrow_range(
    domain: RangeDomain, original: Domain, values: Sequence[float], margin: float
) -> tuple[RangeDomain, str | None]:
    lo_prev, hi_prev = _bounds(domain)
    t = [float(to_transformed(domain.scale, float(v))) for v in values]
    width_prev = hi_prev - lo_prev
    pad = margin * width_prev
    lo = max(lo_prev, min(t) - pad)
    hi = min(hi_prev, max(t) + pad)

    assert isinstance(original, RangeDomain)
    o_lo, o_hi = _bounds(original)
    if not domain.integer and hi - lo < MIN_RELATIVE_WIDTH * (o_hi - o_lo):
        return domain, f"{domain.name}: at its resolution; not narrowed further"

    low, high = sorted(
        (float(from_transformed(domain.scale, lo)), float(from_transformed(domain.scale, hi)))
    )
    if domain.integer:
        low, high = math.floor(low + 1e-9), math.ceil(high - 1e-9)
        low, high = max(low, int(domain.low)), min(high, int(domain.high))
        if high <= low:
            return domain, f"{domain.name}: one integer wide; not narrowed further"
    else:
        low, high = max(low, domain.low), min(high, domain.high)
    return replace(domain, low=low, high=high), None


def _bounds(domain: RangeDomain) -> tuple[float, float]:
    """The range in transformed coordinates, low < high (without the integer half-bins)."""
    a = float(to_transformed(domain.scale, domain.low))
    b = float(to_transformed(domain.scale, domain.high))
    return (a, b) if a <= b else (b, a)


def region_as_dict(space: SearchSpace) -> dict[str, Any]:
    """A JSON-friendly description of a region, for the parent run's artifacts and params."""
    out: dict[str, Any] = {}
    for d in space.domains:
        if isinstance(d, RangeDomain):
            out[d.name] = {"scale": d.scale, "low": d.low, "high": d.high, "integer": d.integer}
        elif isinstance(d, ChoiceDomain):
            out[d.name] = {"values": list(d.values)}
        else:
            out[d.name] = {"grid": list(d.values)}
    return out
