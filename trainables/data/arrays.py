"""NumPy ``.npz`` archives: a feature array and a label array, saved with ``np.savez``.

The archive is opened with ``allow_pickle=False``: an ``.npz`` can carry pickled Python
objects, and unpickling runs code, so arrays of objects are refused with a message that
says how to save them as plain arrays instead.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from trainables.data.files import closest, positions, require_file
from trainables.data.labels import class_labels
from trainables.data.splits import DataError, Dataset

__all__ = ["load_npz"]


def load_npz(
    path: Path,
    *,
    x_key: str = "X",
    y_key: str = "y",
    classes: Sequence[str | int] | None = None,
) -> Dataset:
    """Read ``X`` (rows first; images of any shape are flattened per row) and ``y``."""
    require_file(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: is not a readable .npz archive ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path}: holds a single array (.npy), not named arrays; "
            f"save features and labels together with np.savez(path, {x_key}=X, {y_key}=y)"
        )
    with archive:
        x = _array(path, archive, x_key, "data.x_key")
        y = _array(path, archive, y_key, "data.y_key")

    where = partial(positions, first=0, what="row")
    if x.ndim < 2:
        raise DataError(
            f"{path}: array {x_key!r} has shape {x.shape}; features need one row per sample, "
            "e.g. shape (n_samples, n_features) (reshape a single feature to (n, 1))"
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            f"{path}: array {y_key!r} has shape {y.shape}; labels need one value per row "
            "(class indices or names, not one-hot)"
        )
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"{path}: array {x_key!r} has {x.shape[0]} rows but {y_key!r} has {y.shape[0]}; "
            "features and labels must match row for row"
        )
    if x.dtype.kind == "b":
        x = x.astype(np.float32)
    if x.dtype.kind not in "iuf":
        raise DataError(f"{path}: array {x_key!r} has dtype {x.dtype}; features must be numbers")
    x = x.reshape(x.shape[0], -1)
    bad = ~np.isfinite(x)
    if bad.any():
        raise DataError(
            f"{path}: array {x_key!r} has nan or infinite values in {where(bad)}; "
            "fill or drop those rows"
        )
    y, class_names = class_labels(y, what=f"{path}: array {y_key!r}", where=where, classes=classes)
    feature_names = tuple(f"{x_key}[{i}]" for i in range(x.shape[1]))
    return x, y, class_names, feature_names


def _array(path: Path, archive: np.lib.npyio.NpzFile, key: str, field: str) -> np.ndarray:
    keys = list(archive.files)
    if key not in keys:
        raise DataError(
            f"{path}: has no array {key!r} ({field}); its arrays: "
            f"{', '.join(map(repr, keys)) or 'none'}{closest(key, keys)}"
        )
    try:
        return np.asarray(archive[key])
    except ValueError:
        raise DataError(
            f"{path}: array {key!r} holds Python objects, which caviar does not unpickle; "
            "save it as numbers or fixed-width text, e.g. np.asarray(labels, dtype=str)"
        ) from None
