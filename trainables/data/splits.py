"""Datasets to train/val/test arrays.

Trials only ever see the arrays produced here, so every sweep over one dataset
trains and validates on exactly the same rows: the split and the scaling are a
property of the dataset spec (fractions + seed), never of a trial. Nothing is
ever downloaded (scikit-learn's bundled sets, generated data, and the user's own
files, read by ``tabular``, ``arrays`` and ``images``), so a sweep runs on an
air-gapped cluster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BUNDLED_DATASETS",
    "DataError",
    "DataSplits",
    "load_bundled",
    "make_synthetic",
    "split_and_scale",
    "split_and_scale_with_test",
]

Dataset = tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]
"""X, y, class_names, feature_names: what a dataset source hands to split_and_scale."""


class DataError(ValueError):
    """A dataset spec that cannot produce usable splits.

    A ValueError subclass so callers validating user specs can catch one type
    and still tell data problems apart from other bad values.
    """


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train/val/test arrays, float32 features and int64 labels, numpy.

    float32/int64 are what torch wants for features and cross-entropy targets,
    so the conversion to tensors is a zero-copy view. ``eq=False`` because
    element-wise array comparison has no single truth value.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]

    @property
    def n_features(self) -> int:
        """Input width of the network."""
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        """Output width of the network; taken from the names, since a small
        split may miss a class that the model must still be able to predict."""
        return len(self.class_names)

    def sizes(self) -> dict[str, int]:
        """Row counts, for logging a run's data alongside its metrics."""
        return {
            "train": int(self.x_train.shape[0]),
            "val": int(self.x_val.shape[0]),
            "test": int(self.x_test.shape[0]),
        }


# scikit-learn's loader for each bundled dataset. scikit-learn is imported where it is used,
# never at module level: trial workers import this package too, and they never load or split
# data (the driver does), so they skip its import on every actor start.
_LOADERS: dict[str, str] = {
    "digits": "load_digits",
    "iris": "load_iris",
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
}

BUNDLED_DATASETS: tuple[str, ...] = tuple(_LOADERS)


def load_bundled(name: str) -> Dataset:
    """Load one of scikit-learn's bundled datasets (shipped inside the wheel,
    so no download happens)."""
    loader = _LOADERS.get(name)
    if loader is None:
        raise DataError(
            f"unknown bundled dataset {name!r}; valid names: {', '.join(BUNDLED_DATASETS)}"
        )
    from sklearn import datasets as sk_datasets

    bunch = getattr(sk_datasets, loader)()
    class_names = tuple(str(c) for c in bunch.target_names)
    feature_names = tuple(str(f) for f in bunch.feature_names)
    return np.asarray(bunch.data), np.asarray(bunch.target), class_names, feature_names


def make_synthetic(n_samples: int, n_features: int, n_classes: int, seed: int) -> Dataset:
    """A generated classification problem of any size, for scaling tests and
    for sweeps that must not depend on a particular real dataset.

    make_classification needs n_classes * n_clusters_per_class <= 2**n_informative;
    the informative count is chosen so that holds whenever it can, which keeps
    the problem learnable but not trivial (half the features carry signal,
    some are redundant linear mixes, the rest noise).
    """
    if n_samples < 1:
        raise DataError(f"n_samples must be >= 1, got {n_samples}")
    if n_features < 1:
        raise DataError(f"n_features must be >= 1, got {n_features}")
    if n_classes < 2:
        raise DataError(f"n_classes must be >= 2, got {n_classes}")
    if n_samples < n_classes:
        raise DataError(
            f"n_samples ({n_samples}) must be >= n_classes ({n_classes}) "
            "so that every class gets a row"
        )
    bits_needed = math.ceil(math.log2(n_classes))
    n_informative = min(n_features, max(2, n_features // 2, bits_needed + 1))
    if n_classes > 2**n_informative:
        raise DataError(
            f"{n_classes} classes need at least {bits_needed} informative features, "
            f"but only n_features={n_features} are available; add features or drop classes"
        )
    n_clusters_per_class = 2 if 2 * n_classes <= 2**n_informative else 1
    n_redundant = min(2, n_features - n_informative)
    from sklearn import datasets as sk_datasets

    x, y = sk_datasets.make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_informative,
        n_redundant=n_redundant,
        n_repeated=0,
        n_classes=n_classes,
        n_clusters_per_class=n_clusters_per_class,
        random_state=seed,
    )
    class_names = tuple(f"class_{i}" for i in range(n_classes))
    feature_names = tuple(f"x{i}" for i in range(n_features))
    return x, y, class_names, feature_names


def split_and_scale(
    x: np.ndarray,
    y: np.ndarray,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    standardize: bool,
    class_names: Sequence[str] = (),
    feature_names: Sequence[str] = (),
) -> DataSplits:
    """Split into train/val/test (stratified where possible) and standardize.

    The scaler is fitted on the train split only: fitting it on all rows would
    leak validation statistics into training and flatter the val metrics that
    the sweep selects on. Labels are remapped to 0..n_classes-1 because
    cross-entropy indexes the logits with them.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    _check_shapes(x, y)
    y_index, class_names_out = _remap_labels(y, class_names)
    feature_names_out = _feature_names(feature_names, x.shape[1])
    n_classes = len(class_names_out)
    _require_two_classes(class_names_out)

    n_val, n_test = _split_counts(len(y_index), n_classes, val_fraction, test_fraction)
    x_rest, x_test, y_rest, y_test = _split(x, y_index, n_test, seed)
    x_train, x_val, y_train, y_val = _split(x_rest, y_rest, n_val, seed)
    return _scaled_splits(
        (x_train, y_train),
        (x_val, y_val),
        (x_test, y_test),
        standardize=standardize,
        class_names=class_names_out,
        feature_names=feature_names_out,
    )


def split_and_scale_with_test(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    val_fraction: float,
    seed: int,
    standardize: bool,
    class_names: Sequence[str] = (),
    feature_names: Sequence[str] = (),
) -> DataSplits:
    """Like split_and_scale for a dataset that comes with its own test set (MNIST, CIFAR-10).

    The published test set stays the test split, so results compare with everyone else's on
    that dataset; validation is carved out of the training rows (stratified, seeded), and
    the scaler is again fitted on the training rows only. Labels are mapped over both sets
    together, so an index means the same class in each.
    """
    x, y, x_test, y_test = (np.asarray(a) for a in (x, y, x_test, y_test))
    _check_shapes(x, y)
    _check_shapes(x_test, y_test, "test ")
    if x.shape[1] != x_test.shape[1]:
        raise DataError(
            f"training rows have {x.shape[1]} features but test rows have {x_test.shape[1]}"
        )
    y_all, class_names_out = _remap_labels(np.concatenate([y, y_test]), class_names)
    y_index, y_test_index = y_all[: len(y)], y_all[len(y) :]
    feature_names_out = _feature_names(feature_names, x.shape[1])
    n_classes = len(class_names_out)
    _require_two_classes(class_names_out)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, round(val_fraction * len(y_index)))
    n_train_needed = max(2, n_classes)
    if len(y_index) - n_val < n_train_needed:
        raise DataError(
            f"{len(y_index)} training rows are too few: val takes {n_val}, leaving "
            f"{max(len(y_index) - n_val, 0)} for training, but training needs at least "
            f"{n_train_needed} (at least 2, and one per class for {n_classes} classes)"
        )
    x_train, x_val, y_train, y_val = _split(x, y_index, n_val, seed)
    return _scaled_splits(
        (x_train, y_train),
        (x_val, y_val),
        (x_test, y_test_index),
        standardize=standardize,
        class_names=class_names_out,
        feature_names=feature_names_out,
    )


def _require_two_classes(class_names: Sequence[str]) -> None:
    if len(class_names) < 2:
        raise DataError(
            f"need at least 2 classes to train a classifier, got {len(class_names)} "
            f"({', '.join(class_names)})"
        )


def _scaled_splits(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    standardize: bool,
    class_names: tuple[str, ...],
    feature_names: tuple[str, ...],
) -> DataSplits:
    """Standardize with training statistics and fix the dtypes torch wants.

    Float32 input (images) is scaled in float32 so a large image set is not copied at
    twice its size; anything else is scaled in float64 for precision. The statistics are
    accumulated in float64 either way.
    """
    work = np.float32 if train[0].dtype == np.float32 else np.float64
    # Train and val are fresh arrays from the split; test may be the caller's, so it is copied
    # before being scaled in place.
    xs = [np.asarray(train[0], dtype=work), np.asarray(val[0], dtype=work)]
    xs.append(np.array(test[0], dtype=work, copy=True))
    if standardize:
        mean = xs[0].mean(axis=0, dtype=np.float64)
        std = xs[0].std(axis=0, dtype=np.float64)
        # A constant feature has std 0; dividing by 1 leaves it at 0 instead of nan.
        std[std == 0] = 1.0
        for array in xs:
            array -= mean.astype(work)
            array /= std.astype(work)
    x_train, x_val, x_test = xs
    return DataSplits(
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=np.ascontiguousarray(train[1], dtype=np.int64),
        x_val=np.ascontiguousarray(x_val, dtype=np.float32),
        y_val=np.ascontiguousarray(val[1], dtype=np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=np.ascontiguousarray(test[1], dtype=np.int64),
        class_names=class_names,
        feature_names=feature_names,
    )


def _check_shapes(x: np.ndarray, y: np.ndarray, which: str = "") -> None:
    """Fail early with the shapes in the message, rather than deep inside sklearn."""
    if x.ndim != 2:
        raise DataError(
            f"{which}features must be a 2-D array (rows, features), got shape {x.shape}"
        )
    if y.ndim != 1:
        raise DataError(f"{which}labels must be a 1-D array, got shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{which}features have {x.shape[0]} rows but labels have {y.shape[0]}")
    if x.shape[1] < 1:
        raise DataError(f"{which}features have no columns")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{which}features must be numeric, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{which}features contain nan or infinite values")


def _remap_labels(y: np.ndarray, class_names: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map the labels present to 0..k-1 and keep the names that go with them.

    Names are looked up by label value when the labels are indices into
    ``class_names`` (sklearn's convention), otherwise matched in sorted order.
    """
    present, y_index = np.unique(y, return_inverse=True)
    names = tuple(str(c) for c in class_names)
    if not names:
        return y_index.astype(np.int64), tuple(str(v) for v in present)
    is_index = np.issubdtype(present.dtype, np.integer) and (
        present.min() >= 0 and present.max() < len(names)
    )
    if is_index:
        return y_index.astype(np.int64), tuple(names[int(v)] for v in present)
    if len(names) == len(present):
        return y_index.astype(np.int64), names
    raise DataError(
        f"got {len(names)} class names for {len(present)} distinct labels "
        f"({', '.join(map(str, present[:10]))}{', ...' if len(present) > 10 else ''})"
    )


def _feature_names(feature_names: Sequence[str], n_features: int) -> tuple[str, ...]:
    """Names default to x0, x1, ... so reports always have a column label."""
    names = tuple(str(f) for f in feature_names)
    if not names:
        return tuple(f"x{i}" for i in range(n_features))
    if len(names) != n_features:
        raise DataError(f"got {len(names)} feature names for {n_features} feature columns")
    return names


def _split_counts(
    n_rows: int, n_classes: int, val_fraction: float, test_fraction: float
) -> tuple[int, int]:
    """Rows for (val, test); every split gets at least one row, and train must
    keep at least two rows (BatchNorm needs a batch of 2) and one per class."""
    for label, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < fraction < 1.0:
            raise DataError(f"{label} must be in (0, 1), got {fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(
            f"val_fraction + test_fraction must be < 1 to leave rows for training, "
            f"got {val_fraction} + {test_fraction}"
        )
    n_val = max(1, round(val_fraction * n_rows))
    n_test = max(1, round(test_fraction * n_rows))
    n_train = n_rows - n_val - n_test
    n_train_needed = max(2, n_classes)
    if n_train < n_train_needed:
        raise DataError(
            f"{n_rows} rows are too few: val takes {n_val} and test {n_test}, leaving "
            f"{max(n_train, 0)} for training, but training needs at least {n_train_needed} "
            f"(at least 2, and one per class for {n_classes} classes)"
        )
    return n_val, n_test


def _split(
    x: np.ndarray, y: np.ndarray, n_holdout: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out ``n_holdout`` rows, stratified when sklearn can stratify.

    Stratification keeps class proportions equal across splits, which matters
    for small or imbalanced sets; it is impossible when a class has a single
    row or when a side is smaller than the number of classes, and only then
    is the split plain random.
    """
    n_classes = len(np.unique(y))
    min_class_count = _min_count(y)
    can_stratify = (
        min_class_count >= 2 and n_holdout >= n_classes and len(y) - n_holdout >= n_classes
    )
    from sklearn.model_selection import train_test_split

    x_keep, x_out, y_keep, y_out = train_test_split(
        x,
        y,
        test_size=n_holdout,
        random_state=seed,
        shuffle=True,
        stratify=y if can_stratify else None,
    )
    return x_keep, x_out, y_keep, y_out


def _min_count(y: np.ndarray) -> int:
    """Size of the smallest class present (absent classes are not counted)."""
    _, counts = np.unique(y, return_counts=True)
    return int(counts.min())
