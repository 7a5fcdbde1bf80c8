"""From a user's label column to class labels: checked, and in a known order.

The network's output ``k`` means "class ``class_names[k]``"; that mapping is what lets anyone
read a logged model's predictions back, so it must be deterministic. By default classes are
sorted (numbers numerically, text alphabetically), which does not depend on row order; a spec
may fix the order instead with ``classes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from trainables.data.splits import DataError

__all__ = ["class_labels"]

Where = Callable[[np.ndarray], str]
"""Describes the rows where a mask is true, in the file's own terms (see files.positions)."""


def class_labels(
    values: np.ndarray,
    *,
    what: str,
    where: Where,
    classes: Sequence[str | int] | None = None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Check labels and return ``(y, class_names)`` ready for split_and_scale.

    Without ``classes`` the names are left to split_and_scale (sorted unique values); with
    them, ``y`` holds each label's position in ``classes``. ``what`` names the file and the
    labels in messages ("data.csv: label column 'species'", "data.npz: array 'y'").
    """
    labels = _normalized(np.asarray(values), what, where)
    if classes is None:
        return labels, ()
    names = tuple(str(c) for c in classes)
    text = labels.astype(str)
    index = {name: i for i, name in enumerate(names)}
    unknown = ~np.isin(text, names)
    if unknown.any():
        odd = ", ".join(repr(str(v)) for v in np.unique(text[unknown])[:5])
        raise DataError(
            f"{what} has values that data.classes does not list: {odd}, in {where(unknown)}; "
            f"add them to data.classes or drop those rows"
        )
    absent = [name for name in names if name not in set(text)]
    if absent:
        raise DataError(
            f"{what} has no row labelled {', '.join(map(repr, absent))}, which data.classes "
            "lists; remove it from data.classes (a class without rows cannot be learned)"
        )
    return np.array([index[t] for t in text], dtype=np.int64), names


def _normalized(labels: np.ndarray, what: str, where: Where) -> np.ndarray:
    """Integer codes stay integers, text stays text; anything ambiguous is an error."""
    if labels.ndim != 1:
        raise DataError(f"{what} must be one label per row, got shape {labels.shape}")
    if labels.dtype.kind == "b":
        return labels.astype(str)
    if labels.dtype.kind in "iu":
        return labels.astype(np.int64)
    if labels.dtype.kind == "f":
        missing = ~np.isfinite(labels)
        if missing.any():
            raise DataError(
                f"{what} is missing (or infinite) in {where(missing)}; "
                "every row needs a label: fill or drop those rows"
            )
        fractional = labels != np.round(labels)
        if fractional.any():
            example = labels[fractional][0]
            raise DataError(
                f"{what} holds non-integer numbers (e.g. {example:g}) in {where(fractional)}; "
                "caviar trains classifiers, so labels must be class names or integer codes"
            )
        return labels.astype(np.int64)
    if labels.dtype.kind == "S":
        return np.char.decode(labels, "utf-8")
    if labels.dtype.kind in "UO":
        missing = np.array([_is_missing(v) for v in labels], dtype=bool)
        if missing.any():
            raise DataError(
                f"{what} is missing in {where(missing)}; "
                "every row needs a label: fill or drop those rows"
            )
        return labels.astype(str)
    raise DataError(f"{what} has dtype {labels.dtype}; labels must be text or integers")


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)
