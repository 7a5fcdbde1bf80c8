"""What every file-based data source shares: finding the file, and pointing at bad rows.

A user's data problem is fixed in the user's file, so each message names the file and says
where in it to look (which rows, which column) instead of echoing a numpy error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainables.data.splits import DataError

__all__ = ["closest", "positions", "require_file"]


def require_file(path: Path) -> Path:
    """Fail with the path in the message when ``path`` is not a readable file."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder; data.path must name a file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path


def positions(mask: np.ndarray, *, first: int, what: str = "row", limit: int = 5) -> str:
    """Describe where ``mask`` is true: "3 rows (row 4, 9, 17)".

    ``first`` is the number the first row gets (1 for a table's data rows, counted after
    the header; 0 for numpy arrays, whose users index from 0), so the text matches what the
    user sees when they open the file.
    """
    where = np.flatnonzero(np.asarray(mask).reshape(len(mask), -1).any(axis=1))
    shown = ", ".join(str(int(i) + first) for i in where[:limit])
    more = ", ..." if len(where) > limit else ""
    noun = what if len(where) == 1 else f"{what}s"
    return f"{len(where)} {noun} ({what} {shown}{more})"


def closest(name: str, candidates: Sequence[str]) -> str:
    """The "; did you mean 'x'?" hint for a near miss, else an empty string."""
    import difflib

    match = difflib.get_close_matches(name, list(candidates), n=1)
    return f"; did you mean {match[0]!r}?" if match else ""
