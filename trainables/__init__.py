"""Caviar's trainables: datasets, models and the per-trial training loop.

Everything a trial needs, and nothing about how trials are scheduled: this
package imports no orchestrator, Ray or MLflow code, so it can be tested and
reused on its own. Importing it registers the built-in trainables.
"""

from __future__ import annotations

from trainables.arrays import load_npz
from trainables.config import MlpConfig
from trainables.data import (
    BUNDLED_DATASETS,
    DataError,
    DataSplits,
    load_bundled,
    make_synthetic,
    split_and_scale,
    split_and_scale_with_test,
)
from trainables.idx import read_idx
from trainables.images import IMAGE_DATASETS, ImageData, load_images
from trainables.model import BnSoftmaxMLP, recompute_population_statistics
from trainables.registry import (
    TrainableDefinition,
    UnknownTrainableError,
    get_trainable,
    register,
    trainable_names,
)
from trainables.tabular import TABLE_FORMATS, load_table
from trainables.train import TensorSplits, TrainingSession, fit, learning_rate_at

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
