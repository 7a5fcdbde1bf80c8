"""What the built-in MLP's session may change between epochs (panda mode), without torch.

Kept apart from ``train.py`` so a command that only checks a change (``caviar panda adjust``
in another shell) answers without importing torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ADJUSTABLE", "adjustable_of"]

ADJUSTABLE: frozenset[str] = frozenset(
    {
        "learning_rate",
        "lr_decay",
        "momentum",
        "beta1",
        "beta2",
        "weight_decay",
        "batch_size",
        "bn_momentum",
        "epochs",
    }
)
"""What ``TrainingSession.adjust`` may change between epochs: the optimizer's and the schedule's
numbers, the batch size, BN's averaging weight and the epoch budget. Everything else fixes the
network's shape, the optimizer's kind or the random streams, so a checkpoint would no longer
describe the same training."""


def adjustable_of(definition: Any) -> frozenset[str]:
    """What a trainable's session can change between epochs: :data:`ADJUSTABLE` for the
    built-in MLP, else the definition's ``adjustable`` (none when it has no ``adjust``)."""
    from trainables.config import MlpConfig

    if getattr(definition, "config_model", None) is MlpConfig:
        return ADJUSTABLE
    return frozenset(getattr(definition, "adjustable", frozenset()))
