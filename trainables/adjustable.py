"""What the built-in MLP's session may change between epochs (panda mode), without torch.

Kept apart from ``train.py`` so a command that only checks a change (``caviar panda adjust``
in another shell) answers without importing torch.
"""

from __future__ import annotations

__all__ = ["ADJUSTABLE"]

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
