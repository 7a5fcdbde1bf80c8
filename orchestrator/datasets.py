"""From the spec's ``data`` section to arrays, on the driver, once per sweep.

The driver loads and splits the data before Ray or MLflow start, so a data problem is reported
before any compute; the result travels to trials through Ray's object store.
"""

from __future__ import annotations

from orchestrator.errors import CaviarError
from orchestrator.spec import BundledData, SyntheticData
from trainables import DataError, DataSplits, load_bundled, make_synthetic, split_and_scale


class DataLoadError(CaviarError):
    """The dataset named by the spec cannot be loaded or split."""

    exit_code = 2


def load_data(data: BundledData | SyntheticData) -> DataSplits:
    try:
        if isinstance(data, SyntheticData):
            x, y, classes, features = make_synthetic(
                data.n_samples, data.n_features, data.n_classes, data.seed
            )
        else:
            x, y, classes, features = load_bundled(data.source)
        return split_and_scale(
            x,
            y,
            val_fraction=data.val_fraction,
            test_fraction=data.test_fraction,
            seed=data.seed,
            standardize=data.standardize,
            class_names=classes,
            feature_names=features,
        )
    except DataError as error:
        raise DataLoadError(f"data ({data.source}): {error}") from None
