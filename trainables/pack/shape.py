"""Which trial configurations can train in one fused pack: :func:`shape_key`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainables.config import SHAPE_FIELDS, MlpConfig


def validated(config: MlpConfig | Mapping[str, Any]) -> MlpConfig:
    return config if isinstance(config, MlpConfig) else MlpConfig.model_validate(dict(config))


def shape_key(config: MlpConfig | Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Which configs can share a pack: equal keys, same pack. A hashable tuple of
    ``(field, value)`` over SHAPE_FIELDS; with ``layers == 0`` (softmax regression) the
    hidden-layer fields do not change the network and are left out."""
    cfg = validated(config)
    key = []
    for name in SHAPE_FIELDS:
        value = getattr(cfg, name)
        if cfg.layers == 0 and name in ("hidden_units", "activation", "batch_norm"):
            value = None
        key.append((name, value))
    return tuple(key)
