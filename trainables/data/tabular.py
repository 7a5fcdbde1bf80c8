"""CSV and Parquet tables: one row per sample, one label column, numeric feature columns.

pandas reads both formats, imported only when a table is read (it comes with MLflow, so it
is installed wherever caviar is; Parquet also needs pyarrow, the ``parquet`` extra). The
checks here are the ones that need column names to be useful: a missing label column, text
in a feature column, an empty cell. Each is reported with the file, the column and the
lines or rows to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from trainables.data.files import closest, positions, require_file
from trainables.data.labels import class_labels
from trainables.data.splits import DataError, Dataset

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TABLE_FORMATS", "load_table"]

TABLE_FORMATS = ("csv", "parquet")
TableFormat = Literal["csv", "parquet"]


def load_table(
    path: Path,
    *,
    label: str,
    features: Sequence[str] | None = None,
    classes: Sequence[str | int] | None = None,
    file_format: TableFormat = "csv",
    delimiter: str = ",",
) -> Dataset:
    """Read a table and return ``(X, y, class_names, feature_names)``.

    ``features`` defaults to every numeric column but the label: text columns are left out
    (an MLP needs numbers), as are columns without a header name (the index pandas writes by
    default, which would leak the row order into training). A column that is mostly numbers
    with a few text cells is an error rather than silently dropped: it is nearly always a
    typo or a placeholder such as "?" in the data.
    """
    require_file(path)
    frame = _read(path, file_format, delimiter)
    frame.columns = [str(c) for c in frame.columns]
    if len(frame) == 0:
        raise DataError(f"{path}: has column names but no rows")
    where = (
        partial(positions, first=2, what="line")  # line 1 is the header
        if file_format == "csv"
        else partial(positions, first=0, what="row")
    )
    columns = list(frame.columns)
    if label not in columns:
        raise DataError(
            f"{path}: has no column {label!r} for data.label "
            f"(its columns: {_listed(columns)}){closest(label, columns)}"
        )
    y, class_names = _labels(frame[label], f"{path}: label column {label!r}", where, classes)
    names = _feature_columns(path, frame, label, features, where)
    x = frame[names].to_numpy(dtype=np.float64, na_value=np.nan)
    _require_finite(path, x, names, where)
    return x, y, class_names, tuple(names)


def _read(path: Path, file_format: TableFormat, delimiter: str) -> pd.DataFrame:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas comes with mlflow
        raise DataError(
            f"{path}: reading {file_format} files needs pandas: pip install pandas"
        ) from None
    if file_format == "parquet":
        return _read_parquet(path, pd)
    try:
        return pd.read_csv(path, sep=delimiter, low_memory=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: is empty; a CSV file needs a header line and rows") from None
    except pd.errors.ParserError as error:
        raise DataError(f"{path}: cannot be parsed as CSV: {_first_line(error)}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: is not UTF-8 text; save the CSV as UTF-8") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read: {error.strerror or error}") from None


def _read_parquet(path: Path, pd: Any) -> pd.DataFrame:
    try:
        return pd.read_parquet(path, engine="pyarrow")
    except ImportError:  # pandas' message when its Parquet engine, pyarrow, is missing
        raise DataError(
            f"{path}: reading Parquet needs pyarrow, which is not installed; "
            "install it with: pip install 'caviar[parquet]' (or: pip install pyarrow)"
        ) from None
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: cannot be read as Parquet: {_first_line(error)}") from None


def _labels(
    series: pd.Series,
    what: str,
    where: Any,
    classes: Sequence[str | int] | None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    import pandas as pd

    missing = series.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"{what} is empty in {where(missing)}; every row needs a label: fill or drop those rows"
        )
    if pd.api.types.is_bool_dtype(series):
        values = series.astype(str).to_numpy()
    elif pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64 if series.dtype.kind == "f" else np.int64)
    else:
        values = series.astype(str).to_numpy()
    return class_labels(values, what=what, where=where, classes=classes)


def _feature_columns(
    path: Path,
    frame: pd.DataFrame,
    label: str,
    features: Sequence[str] | None,
    where: Any,
) -> list[str]:
    """The columns to train on, each numeric (or an error saying which is not, and where)."""
    columns = list(frame.columns)
    if features is not None:
        unknown = [f for f in features if f not in columns]
        if unknown:
            hint = closest(unknown[0], columns)
            raise DataError(
                f"{path}: has no column {_listed(unknown)} from data.features "
                f"(its columns: {_listed(columns)}){hint}"
            )
        if label in features:
            raise DataError(
                f"{path}: the label column {label!r} is also listed in data.features; "
                "a model must not see its own target"
            )
        for name in features:
            if not _is_numeric(frame[name]):
                raise DataError(_text_column_problem(path, frame[name], name, where))
        return list(features)

    chosen: list[str] = []
    for name in columns:
        if name == label or name.startswith("Unnamed: "):
            continue
        column = frame[name]
        if _is_numeric(column):
            chosen.append(name)
        elif _mostly_numbers(column):
            raise DataError(_text_column_problem(path, column, name, where))
    if not chosen:
        others = [c for c in columns if c != label]
        raise DataError(
            f"{path}: has no numeric feature columns besides the label {label!r} "
            f"(text columns: {_listed(others) or 'none'}); encode categories as numbers, "
            "e.g. one 0/1 column per category"
        )
    return chosen


def _is_numeric(column: pd.Series) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column))


def _mostly_numbers(column: pd.Series) -> bool:
    import pandas as pd

    present = column.notna()
    parsed = pd.to_numeric(column, errors="coerce").notna()
    return bool(parsed.sum() > (present & ~parsed).sum())


def _text_column_problem(path: Path, column: pd.Series, name: str, where: Any) -> str:
    import pandas as pd

    text = (column.notna() & pd.to_numeric(column, errors="coerce").isna()).to_numpy()
    examples = ", ".join(repr(str(v)) for v in column[text].unique()[:3])
    if _mostly_numbers(column):
        return (
            f"{path}: feature column {name!r} is numbers except for text ({examples}) in "
            f"{where(text)}; fix those cells (leave a cell empty for a missing value), "
            "or leave the column out with data.features"
        )
    return (
        f"{path}: feature column {name!r} is not numeric (values like {examples}); "
        "encode it as numbers (e.g. one 0/1 column per category) or leave it out of "
        "data.features"
    )


def _require_finite(path: Path, x: np.ndarray, names: Sequence[str], where: Any) -> None:
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    columns = [i for i in range(x.shape[1]) if bad[:, i].any()]
    details = "; ".join(f"{names[i]!r} in {where(bad[:, i])}" for i in columns[:3])
    more = f"; and {len(columns) - 3} more columns" if len(columns) > 3 else ""
    raise DataError(
        f"{path}: missing or infinite feature values: {details}{more}; "
        "fill or drop those rows (caviar does not guess missing values)"
    )


def _listed(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
