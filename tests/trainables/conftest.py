"""Shared fixtures for the trainables tests.

Data fixtures are session-scoped because loading and splitting is
deterministic and the tensors are never mutated by the code under test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from trainables import TensorSplits, load_bundled, split_and_scale
from trainables.data import DataSplits


@pytest.fixture(autouse=True)
def _single_torch_thread() -> Iterator[None]:
    """One intra-op thread keeps tests fast on small CI runners and timing stable;
    restored afterwards because the thread count is process-global."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits_splits() -> DataSplits:
    x, y, class_names, feature_names = load_bundled("digits")
    return split_and_scale(
        x,
        y,
        val_fraction=0.2,
        test_fraction=0.2,
        seed=0,
        standardize=True,
        class_names=class_names,
        feature_names=feature_names,
    )


@pytest.fixture(scope="session")
def digits_tensors(digits_splits: DataSplits) -> TensorSplits:
    return TensorSplits.from_splits(digits_splits, "cpu")


@pytest.fixture(scope="session")
def small_tensors() -> TensorSplits:
    """Wine: 178 rows, 13 features, 3 classes; learnable in a few cheap epochs."""
    x, y, class_names, feature_names = load_bundled("wine")
    splits = split_and_scale(
        x,
        y,
        val_fraction=0.2,
        test_fraction=0.2,
        seed=0,
        standardize=True,
        class_names=class_names,
        feature_names=feature_names,
    )
    return TensorSplits.from_splits(splits, "cpu")
