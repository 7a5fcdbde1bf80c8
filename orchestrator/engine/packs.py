"""Fused packs in a sweep: how a sweep packs, and how the scheduler's stops reach a pack.

A pack is one Tune trial training several caviar trials (its members) as one model
(``trainables.pack``). The searcher plans the packs (``orchestrator.search.packing``); the
observer records each member as its own trial; the halving scheduler judges each member at its
rungs. A member the scheduler stops must leave its pack before the pack trains another epoch,
but a Tune trainable receives nothing from the driver between steps. The :class:`PackMailbox`
actor carries those decisions: the scheduler posts, for every result of a pack, the members it
stopped there (possibly none), keyed by the pack and the result's ``training_iteration``; the
pack's actor takes that post before its next step, waiting for it if it has not arrived. So a
pack trains exactly the epochs an unpacked sweep's scheduler would let its members train.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import ray

from orchestrator.search.packing import Packer
from orchestrator.spec.models import SweepSpec
from trainables import get_trainable

# A pack waits this long for the scheduler's post before training on as if nothing had been
# stopped (the driver then ignores the stopped members' extra epochs): only a driver that is
# gone or wedged takes this long, and the actor must not hang forever on it.
MAILBOX_WAIT_S = 600.0


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
    caps it so that every slot of the cluster gets at least two packs a round: fewer, larger
    packs would leave slots idle while one pack trains on."""
    requested = spec.resources.pack_size
    if requested == 1:
        return None
    packing = get_trainable(spec.trainable, search_path).packing
    if packing is None:
        return None  # validation refuses an integer pack size for such a trainable
    device_kind = "cuda" if spec.resources.gpus_per_trial > 0 else "cpu"
    round_size = spec.search_space().grid_size() * spec.search.samples_per_point()
    cap = max(1, round_size // (2 * max(1, slots)))

    def size_for(config: Mapping[str, Any], waiting: int) -> int:
        if isinstance(requested, int):
            return min(requested, waiting)
        chosen = packing.auto_size(config, device_kind, waiting, n_features, n_classes)
        return max(1, min(chosen, cap, waiting))

    sampled = {domain.name for domain in spec.search_space().sampled}
    return Packer(
        shape_fields=packing.shape_fields,
        sampled=frozenset(sampled & set(packing.shape_fields)),
        shape_key=packing.shape_key,
        size_for=size_for,
    )


@ray.remote(num_cpus=0, max_concurrency=1000)
class PackMailbox:
    """The scheduler's stops, from the driver to the packs' actors (see the module doc)."""

    def __init__(self) -> None:
        self._posts: dict[tuple[int, int], list[int]] = {}
        self._arrived: dict[tuple[int, int], asyncio.Event] = {}

    def _event(self, key: tuple[int, int]) -> asyncio.Event:
        return self._arrived.setdefault(key, asyncio.Event())

    async def post(self, pack: int, iteration: int, stopped: list[int]) -> None:
        """The members of ``pack`` stopped at its result ``iteration`` (a repeated post, after
        a restored trial reports that iteration again, replaces the first)."""
        key = (pack, iteration)
        self._posts[key] = list(stopped)
        self._event(key).set()

    async def take(self, pack: int, iteration: int, timeout_s: float) -> list[int] | None:
        """The post for ``(pack, iteration)``, waiting up to ``timeout_s`` for it; None if
        none came. Posts are kept: a trial restored from a checkpoint takes again the posts
        of the iterations after it."""
        key = (pack, iteration)
        try:
            await asyncio.wait_for(self._event(key).wait(), timeout_s)
        except asyncio.TimeoutError:
            return None
        return list(self._posts[key])


def start_mailbox() -> Any:
    """A mailbox for this sweep (it holds no resources; it goes when the sweep's Ray does)."""
    return PackMailbox.remote()  # type: ignore[attr-defined]


def stop_mailbox(mailbox: Any) -> None:
    if mailbox is not None:
        try:
            ray.kill(mailbox)
        except Exception:  # Ray already shut down: the actor went with it
            pass
