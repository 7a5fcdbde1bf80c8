"""CSV and Parquet tables: one row per sample, one label column, numeric feature columns.

pandas reads both formats, imported only when a table is read (it comes with MLflow, so it
is installed wherever caviar is; Parquet also needs pyarrow, the ``parquet`` extra). The
checks here are the ones that need column names to be useful: a missing label column, text
in a feature column, an empty cell. Each is reported with the file, the column and the
lines or rows to fix.

A CSV must be text, and is checked as such before and while pandas parses it: a binary file
(a Parquet or zip file named as a CSV, a disk image, a file of NUL bytes) once cost pandas'
tokenizer many times the file's size in memory before ending in a misleading "no rows". The
first 64 KiB are checked byte by byte before parsing (any control byte other than tab and line
breaks, or bytes that are not UTF-8, is refused by its offset); the rest is checked for NUL
bytes, UTF-8 and line length as the parser reads it, at a few percent of the parse's time.

Memory: the parser reads the file in pieces, so its own buffer stays small; what a table
costs is its cells. Peak memory is about 16 bytes per cell (the parsed table plus the float64
features, 8 bytes each), plus a fixed few MiB for the parser, plus one line's text times a
small factor: about twice the file's size for numbers of 6-8 characters, 8 times for
one-digit numbers, and never more than 16 times (a cell takes at least its separator's byte).
There is no limit on a file's size, only on a line's: :data:`MAX_LINE_BYTES`.
"""

from __future__ import annotations

import codecs
import io
import re
import warnings
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

__all__ = ["MAX_LINE_BYTES", "TABLE_FORMATS", "TEXT_PREFIX_BYTES", "load_table"]

TABLE_FORMATS = ("csv", "parquet")
TableFormat = Literal["csv", "parquet"]

TEXT_PREFIX_BYTES = 64 * 1024  # checked for every control byte before parsing starts
MAX_LINE_BYTES = 16 * 2**20  # one physical line; the tokenizer needs ~7 times a line's bytes
_READ_BYTES = 1 << 20  # the most one read hands the parser (never more than a line's limit)
# Control bytes a text table never holds: all below 0x20 but tab, LF, VT, FF and CR; and DEL.
_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")
_BYTE_NAMES = {0x00: "NUL"}
# What a binary file named as a CSV usually is, by its first bytes: the fix to suggest.
_KNOWN_STARTS = (
    (b"PAR1", "this is a Parquet file: set data.source: parquet"),
    (b"PK\x03\x04", "this is a zip archive (.zip, .xlsx, .npz): export the table as CSV"),
    (b"\x1f\x8b", "this is gzip-compressed: decompress it first (gunzip)"),
    (b"\x93NUMPY", "this is a NumPy .npy array: save X and y with np.savez, data.source: npz"),
    (b"\xff\xfe", "it looks like UTF-16 text: save it as UTF-8"),
    (b"\xfe\xff", "it looks like UTF-16 text: save it as UTF-8"),
)


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
        with path.open("rb") as file:
            head = file.read(TEXT_PREFIX_BYTES)
            _require_text(path, head, whole=len(head) < TEXT_PREFIX_BYTES)
            file.seek(0)
            # low_memory (pandas' default): the tokenizer works through the file a piece at a
            # time and each column is joined once at the end, so the text is never held whole.
            # A column whose pieces parse differently (numbers, then a stray "?") becomes an
            # object column holding both, which the checks below handle like a text column;
            # pandas' warning about it says nothing the checks do not say better.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", pd.errors.DtypeWarning)
                return pd.read_csv(_TextStream(path, file), sep=delimiter)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: is empty; a CSV file needs a header line and rows") from None
    except pd.errors.ParserError as error:
        raise DataError(f"{path}: cannot be parsed as CSV: {_first_line(error)}") from None
    except UnicodeDecodeError:  # _TextStream checks first; kept for any decoder it misses
        raise DataError(f"{path}: is not UTF-8 text; save the CSV as UTF-8") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read: {error.strerror or error}") from None


def _require_text(path: Path, head: bytes, *, whole: bool) -> None:
    """Refuse ``head`` (the file's first bytes) unless it is UTF-8 text.

    Every control byte but tab and line breaks is refused, then anything not UTF-8; the
    message names the first bad byte's offset in the file. ``whole=False``: ``head`` may end
    inside a multi-byte character, which the next bytes complete.
    """
    found = _CONTROL.search(head)
    if found is not None:
        raise DataError(_not_text(path, head, found.start(), head[found.start()]))
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        cut_short = error.reason == "unexpected end of data" and not whole
        if not cut_short:
            raise DataError(_not_utf8(path, error.start, head[error.start])) from None


def _not_text(path: Path, start: bytes, offset: int, value: int) -> str:
    name = f" ({_BYTE_NAMES[value]})" if value in _BYTE_NAMES else ""
    hint = next((f"; {fix}" for magic, fix in _KNOWN_STARTS if start.startswith(magic)), "")
    return f"{path}: is not text: byte {offset} is 0x{value:02X}{name}; a CSV is text{hint}"


def _not_utf8(path: Path, offset: int, value: int) -> str:
    return f"{path}: is not UTF-8 text: byte {offset} is 0x{value:02X}; save the CSV as UTF-8"


def _size(count: int) -> str:
    return f"{count // 2**20} MiB" if count % 2**20 == 0 else f"{count} bytes"


class _TextStream(io.RawIOBase):
    """The CSV's bytes as pandas reads them, checked on the way: no NUL byte, UTF-8 only, no
    line longer than :data:`MAX_LINE_BYTES`; a failed check raises :class:`DataError` naming
    the byte's offset (or the line's number) in the file.

    Past the prefix :func:`_require_text` checked, only NUL is looked for among the control
    bytes: ``bytes.find`` is memchr-fast, where a full scan would cost a third of the parse.
    Invariants: ``_offset`` is the number of bytes handed out so far; ``_lines`` the line
    breaks among them; ``_since_break`` the bytes after the last one. Each read hands out at
    most ``MAX_LINE_BYTES``, so a line over the limit always ends in a later read than it
    began (or never ends) and is measured exactly.
    """

    def __init__(self, path: Path, file: io.BufferedReader) -> None:
        super().__init__()
        self._path = path
        self._file = file
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._offset = 0
        self._lines = 0
        self._since_break = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        size = min(len(view), _READ_BYTES, MAX_LINE_BYTES)
        count = self._file.readinto(view[:size]) or 0
        self._check(bytes(view[:count]))
        return count

    def _check(self, block: bytes) -> None:
        if not block:  # the end: a last line without a line break, or a cut-off character
            self._check_line(self._since_break)
            self._decode(b"", final=True)
            return
        nul = block.find(b"\x00")
        self._decode(block if nul < 0 else block[:nul])  # a bad byte before the NUL first
        if nul >= 0:
            raise DataError(_not_text(self._path, b"", self._offset + nul, 0))
        first = block.find(b"\n")
        if first < 0:
            self._since_break += len(block)
            self._check_line(self._since_break)
        else:
            self._check_line(self._since_break + first)
            self._lines += block.count(b"\n")
            self._since_break = len(block) - block.rfind(b"\n") - 1
        self._offset += len(block)

    def _decode(self, block: bytes, final: bool = False) -> None:
        pending = self._utf8.getstate()[0]
        if not pending and block.isascii():  # ASCII is UTF-8: skip the decoder's copy
            return
        try:
            self._utf8.decode(block, final=final)
        except UnicodeDecodeError as error:  # error.start counts from the pending bytes
            offset = self._offset - len(pending) + error.start
            raise DataError(_not_utf8(self._path, offset, error.object[error.start])) from None

    def _check_line(self, length: int) -> None:
        if length > MAX_LINE_BYTES:
            raise DataError(
                f"{self._path}: line {self._lines + 1} is longer than {_size(MAX_LINE_BYTES)}; "
                "a CSV has one row per line (is this file a CSV?)"
            )


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
