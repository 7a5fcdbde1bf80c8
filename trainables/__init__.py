"""Caviar's trainables: datasets, models and the per-trial training loop.

Everything a trial needs, and nothing about how trials are scheduled: this
package imports no orchestrator, Ray or MLflow code, so it can be tested and
reused on its own. Importing it registers the built-in trainables.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trainables.config import MlpConfig
from trainables.data import (
    BUNDLED_DATASETS,
    IMAGE_DATASETS,
    TABLE_FORMATS,
    DataError,
    DataSplits,
    ImageData,
    load_bundled,
    load_images,
    load_npz,
    load_table,
    make_synthetic,
    read_idx,
    split_and_scale,
    split_and_scale_with_test,
)
from trainables.registry import (
    TrainableDefinition,
    UnknownTrainableError,
    get_trainable,
    register,
    trainable_names,
)

if TYPE_CHECKING:
    from trainables.model import BnSoftmaxMLP, recompute_population_statistics
    from trainables.train import TensorSplits, TrainingSession, fit, learning_rate_at

# The names that need torch, imported on first use (PEP 562): the driver validates a spec and
# starts Ray before it pays torch's import, and a spec check alone never pays it.
_TORCH_NAMES = {
    "BnSoftmaxMLP": "trainables.model",
    "recompute_population_statistics": "trainables.model",
    "TensorSplits": "trainables.train",
    "TrainingSession": "trainables.train",
    "fit": "trainables.train",
    "learning_rate_at": "trainables.train",
}


def __getattr__(name: str) -> Any:
    module = _TORCH_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'trainables' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_TORCH_NAMES})


__all__ = [
    "BUNDLED_DATASETS",
    "BnSoftmaxMLP",
    "DataError",
    "DataSplits",
    "IMAGE_DATASETS",
    "ImageData",
    "MlpConfig",
    "TABLE_FORMATS",
    "TensorSplits",
    "TrainableDefinition",
    "TrainingSession",
    "UnknownTrainableError",
    "fit",
    "get_trainable",
    "learning_rate_at",
    "load_bundled",
    "load_images",
    "load_npz",
    "load_table",
    "make_synthetic",
    "read_idx",
    "recompute_population_statistics",
    "register",
    "split_and_scale",
    "split_and_scale_with_test",
    "trainable_names",
]
