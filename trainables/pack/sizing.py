"""How many members to fuse into one pack: :func:`auto_pack_size`.

Fusing pays where a trial's step is overhead-bound: each op of a small network costs more in
dispatch (Python, the dispatcher, a kernel launch) than in arithmetic, and a pack pays that
overhead once for K members. Once a member's own matrix products are big enough to keep the
hardware busy, fusing only adds the stacking copies. So the rule works on one number, the
arithmetic of one member's training step,

    step_flops = 6 * batch_size * (n_features*H + (layers-1)*H*H + H*n_classes)

(a multiply-add is 2 flops; forward, input-gradient and weight-gradient products, 3; with no
hidden layer the product is ``n_features*n_classes``), and fills a pack up to a per-device
amount of work per fused step:

    K = largest power of two <= min(n_configs, MAX_K, WORK / step_flops); K < 2 -> 1

CPU, measured with ``python -m bench.pack_bench --epochs 2`` (one thread, batch 64, 64
features, 10 classes, SGD; models/s of the pack over sequential TrainingSessions; noisy on a
shared 2-core machine):

    shape (step Mflop)   K=2    K=4    K=8    K=16   K=32   K=64
    1x64   (1.8)         1.70   2.84   3.89   6.21   4.78   7.87
    2x128  (9.9)         1.48   2.13   2.77   2.61   2.47   2.82
    3x256  (58)          0.80   1.13   0.95   1.31   1.29   0.98
    4x512  (316)         0.84   1.21   1.00   1.18   1.07   1.02

so overhead-bound members (up to 2x128) pack, to 64 and 16 members here, and from 3x256 on
(matmul-bound; the gains are within the noise) K is 1: above ``CPU_PACK_LIMIT``. A pack of
one member runs at about 0.8x a TrainingSession: use the session when K is 1.

GPU: one kernel launch costs microseconds whatever the work; a member's step must reach far
more arithmetic before the launches stop dominating, so packs are larger and every shape up
to ``GPU_PACK_LIMIT`` packs. These constants are an estimate until measured on the GPU
(``--device cuda``): nothing in this rule has been timed on one yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from trainables.config import MlpConfig

__all__ = [
    "CPU_MAX_K",
    "CPU_PACK_LIMIT",
    "CPU_WORK",
    "GPU_MAX_K",
    "GPU_PACK_LIMIT",
    "GPU_WORK",
    "auto_pack_size",
    "member_step_flops",
]

CPU_PACK_LIMIT = 2.5e7
"""Member step flops above which a CPU pack gains nothing (between 2x128 and 3x256)."""
CPU_WORK = 1.6e8
"""Flops per fused CPU step to aim for: 16 members of 2x128, 64 of 1x64."""
CPU_MAX_K = 64

GPU_PACK_LIMIT = 5e9
"""Member step flops above which a GPU pack is assumed to gain nothing (an estimate)."""
GPU_WORK = 2e10
"""Flops per fused GPU step to aim for (an estimate: 64 members of 4x512 at batch 64)."""
GPU_MAX_K = 64


def member_step_flops(
    config: MlpConfig | Mapping[str, Any], *, n_features: int, n_classes: int
) -> float:
    """Arithmetic of one member's training step (the matrix products; see the module doc)."""
    cfg = config if isinstance(config, MlpConfig) else MlpConfig.model_validate(dict(config))
    if cfg.layers == 0:
        macs = n_features * n_classes
    else:
        h = cfg.hidden_units
        macs = n_features * h + (cfg.layers - 1) * h * h + h * n_classes
    return 6.0 * cfg.batch_size * macs


def auto_pack_size(
    config: MlpConfig | Mapping[str, Any],
    device: torch.device | str,
    n_configs: int,
    *,
    n_features: int = 64,
    n_classes: int = 10,
) -> int:
    """Members per pack for configs of ``config``'s shape on ``device`` (1: do not pack).

    ``n_configs`` is how many configs of that shape are waiting (a pack never exceeds it);
    ``n_features``/``n_classes`` are the data's (the defaults are the bundled digits').
    """
    if n_configs < 1:
        raise ValueError(f"n_configs must be >= 1, got {n_configs}")
    flops = member_step_flops(config, n_features=n_features, n_classes=n_classes)
    if torch.device(device).type == "cpu":
        limit, work, max_k = CPU_PACK_LIMIT, CPU_WORK, CPU_MAX_K
    else:
        limit, work, max_k = GPU_PACK_LIMIT, GPU_WORK, GPU_MAX_K
    if flops > limit:
        return 1
    fit = min(n_configs, max_k, int(work // max(flops, 1.0)))
    if fit < 2:
        return 1
    return 1 << (fit.bit_length() - 1)
