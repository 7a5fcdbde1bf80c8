"""Fused packs: many small trials of one shape trained as one model, each still its own trial.

- :class:`PackSession` (``session``): K TrainingSessions' worth of members in one fused model;
  ``step()`` returns one result per member, ``member_state_dict()`` a checkpoint a plain
  TrainingSession loads.
- :func:`shape_key`: which configs may share a pack (group by it).
- :func:`auto_pack_size` (``sizing``): how many to fuse on a device (1: do not pack).
- ``model`` (the stacked network) and ``optim`` (per-member optimizers) underneath.

Like the rest of ``trainables`` this imports torch but no orchestrator, Ray or MLflow code.
"""

from trainables.pack.session import SHAPE_FIELDS, PackSession
from trainables.pack.shape import shape_key
from trainables.pack.sizing import auto_pack_size, member_step_flops

__all__ = ["SHAPE_FIELDS", "PackSession", "auto_pack_size", "member_step_flops", "shape_key"]
