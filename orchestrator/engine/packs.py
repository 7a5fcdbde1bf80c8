"""Fused packs in a sweep: how a sweep packs (``packer_for``).

A pack is one Tune trial training several caviar trials (its members) as one model
(``trainables.pack``). The searcher plans the packs (``orchestrator.search.packing``); the
observer records each member as its own trial; the halving scheduler judges each member at its
rungs, and its stops reach the pack through the sweep's mailbox (``engine/mailbox.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.search.packing import Packer
from orchestrator.spec import PbtScheduler, SweepSpec
from trainables import get_trainable

# ``auto`` packs a round into at least this many packs per slot: packs of one shape share
# their shape draw, so fewer packs would explore fewer shapes, and leave slots idle while the
# last packs' survivors train on.
PACKS_PER_SLOT = 4


def packer_for(
    spec: SweepSpec,
    *,
    n_features: int,
    n_classes: int,
    slots: int,
    search_path: tuple[str, ...] = (),
) -> Packer | None:
    """How this sweep packs its trials; None when it does not (pack_size 1, or a trainable
    without fused training under ``auto``).

    ``auto`` asks the trainable for the pack size of each shape on the trials' device, and
    caps it so that every slot of the cluster gets at least ``PACKS_PER_SLOT`` packs a round.

    Population-based training packs only a population of one shape (no sampled shape field):
    a copy takes its donor's configuration, and a member cannot change shape inside its pack.
    Its ``auto`` cap is a pack per slot: nothing stops early, so no tail of survivors idles
    a slot, and every member waits for the whole population at each boundary anyway.
    """
    requested = spec.resources.pack_size
    if requested == 1:
        return None
    packing = get_trainable(spec.trainable, search_path).packing
    if packing is None:
        return None  # validation refuses an integer pack size for such a trainable
    sampled = {domain.name for domain in spec.search_space().sampled}
    device_kind = "cuda" if spec.resources.gpus_per_trial > 0 else "cpu"
    round_size = spec.search_space().grid_size() * spec.search.samples_per_point()
    cap = max(1, round_size // (PACKS_PER_SLOT * max(1, slots)))
    if isinstance(spec.scheduler, PbtScheduler):
        if sampled & set(packing.shape_fields):
            return None  # validation refuses an integer pack size for such a population
        cap = -(-round_size // max(1, slots))

    def size_for(config: Mapping[str, Any], waiting: int) -> int:
        if isinstance(requested, int):
            return min(requested, waiting)
        chosen = packing.auto_size(config, device_kind, waiting, n_features, n_classes)
        return max(1, min(chosen, cap, waiting))

    return Packer(
        shape_fields=packing.shape_fields,
        sampled=frozenset(sampled & set(packing.shape_fields)),
        shape_key=packing.shape_key,
        size_for=size_for,
    )
