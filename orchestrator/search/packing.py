"""Grouping a round's configurations into fused packs, without changing what each trial samples.

A pack trains its members as one model, so they must share the network's shape (the
trainable's ``shape_fields``: layers, units, batch size...). The round's configurations are
planned exactly as without packs (``space.sample_configs``); then each pack takes the shape
values its first member drew, and its other members keep every other value they drew. Every
trial's shape is thus one independent draw from the same distribution as before (the draw of
its pack's first member), and every other parameter is the trial's own draw: each parameter's
marginal distribution is unchanged, only shape values repeat within a pack. A shape parameter
on a grid is not redrawn: members join a pack only where their grid values give the same shape.

With packs of one member the configurations are exactly those planned without packs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Packer:
    """How one sweep packs: which fields are shape, which of them the sweep samples, equality
    of shape, and how many members a pack of a given shape gets (given how many configs of the
    round are still unpacked)."""

    shape_fields: tuple[str, ...]
    sampled: frozenset[str]
    shape_key: Callable[[Mapping[str, Any]], Hashable]
    size_for: Callable[[Mapping[str, Any], int], int]


def pack_round(
    configs: Sequence[dict[str, Any]], packer: Packer | None
) -> list[list[dict[str, Any]]]:
    """The round's configurations as packs (lists of member configs), in planning order.

    A pack starts at the first unpacked configuration and takes the next unpacked ones whose
    shape equals its own once its sampled shape values are imposed, up to its size."""
    if packer is None:
        return [[dict(config)] for config in configs]
    units: list[list[dict[str, Any]]] = []
    waiting = list(range(len(configs)))
    while waiting:
        head = dict(configs[waiting[0]])
        size = max(1, packer.size_for(head, len(waiting)))
        imposed = {name: head[name] for name in packer.sampled if name in head}
        key = packer.shape_key(head)
        unit, taken = [head], [waiting[0]]
        for position in waiting[1:]:
            if len(unit) >= size:
                break
            member = {**configs[position], **imposed}
            if packer.shape_key(member) == key:
                unit.append(member)
                taken.append(position)
        units.append(unit)
        taken_set = set(taken)
        waiting = [p for p in waiting if p not in taken_set]
    return units
