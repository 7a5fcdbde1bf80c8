"""A CSV is text: binary content is refused at its first bad byte, large files stay bounded.

Issue 24 item 5: a 2 GB file of NUL bytes given as a CSV used ~15 GB of memory for 16 s and
then said "has column names but no rows". These tests write the bad files themselves.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from user_data_files import fruit_table, write_csv

from trainables import DataError, load_table
from trainables.data import tabular


def _error(path: Path, **options: object) -> str:
    with pytest.raises(DataError) as excinfo:
        load_table(path, label="fruit", **options)  # type: ignore[arg-type]
    message = str(excinfo.value)
    assert str(path) in message, message
    return message


def _valid_lines(rows: int) -> bytes:
    lines = ["weight,height,fruit"] + [
        f"{i % 7 + 1},{i % 5 + 2},{'ab'[i % 2]}" for i in range(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


def test_a_file_of_nul_bytes_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "zeros.csv"
    path.write_bytes(bytes(1 << 20))
    started = time.monotonic()
    message = _error(path)
    assert time.monotonic() - started < 2.0
    assert "is not text: byte 0 is 0x00 (NUL); a CSV is text" in message
    assert "no rows" not in message


def test_a_nul_after_valid_lines_in_the_checked_prefix_names_its_offset(tmp_path: Path) -> None:
    head = _valid_lines(20)
    path = tmp_path / "late.csv"
    path.write_bytes(head + b"3,4,a\x00\n" + _valid_lines(5)[20:])
    offset = len(head) + 5
    assert f"is not text: byte {offset} is 0x00 (NUL)" in _error(path)


def test_a_nul_beyond_the_checked_prefix_names_its_offset(tmp_path: Path) -> None:
    """Past the prefix checked before parsing, the reader still finds a NUL where it is."""
    head = _valid_lines(60_000)  # ~ 600 KB, far past the 64 KiB prefix
    assert len(head) > 4 * tabular.TEXT_PREFIX_BYTES
    tail = _valid_lines(1000)[len(b"weight,height,fruit\n") :]
    path = tmp_path / "middle.csv"
    path.write_bytes(head + b"\x00\x00\x00" + tail)
    assert f"is not text: byte {len(head)} is 0x00 (NUL); a CSV is text" in _error(path)


def test_other_control_bytes_are_named_in_hex(tmp_path: Path) -> None:
    path = tmp_path / "bell.csv"
    path.write_bytes(b"weight,fruit\n1,a\x07\n")
    assert "is not text: byte 16 is 0x07; a CSV is text" in _error(path)


def test_tabs_carriage_returns_and_a_utf8_bom_are_text(tmp_path: Path) -> None:
    path = tmp_path / "windows.csv"
    rows = "".join(f"{i}\t{i % 3}\t{'ab'[i % 2]}\r\n" for i in range(30))
    path.write_bytes(b"\xef\xbb\xbfweight\theight\tfruit\r\n" + rows.encode())
    x, _, _, features = load_table(path, label="fruit", delimiter="\t")
    assert features == ("weight", "height") and x.shape == (30, 2)


def test_latin1_text_names_the_first_byte_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("weight,fruit\n1,pêche\n".encode("latin-1"))
    message = _error(path)
    assert "is not UTF-8 text: byte 16 is 0xEA; save the CSV as UTF-8" in message


def test_bad_utf8_beyond_the_prefix_names_its_offset(tmp_path: Path) -> None:
    head = _valid_lines(60_000)
    path = tmp_path / "late_latin1.csv"
    path.write_bytes(head + "1,2,pêche\n".encode("latin-1"))
    assert f"is not UTF-8 text: byte {len(head) + 5} is 0xEA" in _error(path)


@pytest.mark.parametrize(
    ("start", "hint"),
    [
        (b"PAR1", "a Parquet file: set data.source: parquet"),
        (b"PK\x03\x04", "a zip archive"),
        (b"\x1f\x8b\x08", "gzip-compressed"),
        (b"\xff\xfew\x00e\x00", "UTF-16"),
    ],
)
def test_known_binary_formats_get_a_hint(tmp_path: Path, start: bytes, hint: str) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(start + bytes(range(256)) * 4)
    message = _error(path)
    assert "is not text: byte" in message and hint in message


def test_a_line_longer_than_the_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One physical line costs the parser several times its length, so lines are bounded."""
    monkeypatch.setattr(tabular, "MAX_LINE_BYTES", 10_000)
    path = tmp_path / "wide.csv"
    path.write_bytes(_valid_lines(3000) + b"1," + b"7" * 20_000 + b",a\n")
    message = _error(path)
    assert "line 3002 is longer than 10000 bytes" in message
    assert "one row per line" in message


def test_text_in_a_numeric_column_far_down_a_large_file(tmp_path: Path) -> None:
    """The reader parses in pieces; a stray text cell in a late piece is still found by line."""
    rng = np.random.default_rng(1)
    n = 200_000
    frame = pd.DataFrame(rng.integers(0, 100, (n, 20)), columns=[f"c{i}" for i in range(20)])
    frame["fruit"] = rng.integers(0, 3, n)
    frame = frame.astype(object)
    frame.loc[190_000, "c3"] = "?"
    path = write_csv(tmp_path / "big.csv", frame)
    message = _error(path)
    assert "feature column 'c3' is numbers except for text ('?') in 1 line (line 190002)" in message
    x, y, _, features = load_table(path, label="fruit", features=["c1", "c2"])
    assert x.shape == (n, 2) and features == ("c1", "c2")
    np.testing.assert_array_equal(x[:, 0], frame["c1"].to_numpy(dtype=np.float64))


def test_valid_tables_read_as_before(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "fruit.csv", fruit_table())
    x, _, _, features = load_table(path, label="fruit")
    assert features == ("weight", "height", "sugar") and x.shape == (90, 3)


_PEAK = """
import json, resource, sys
from pathlib import Path
import pandas, pandas.io.parsers  # imported before measuring: their import is not the read's
from trainables import DataError, load_table
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    x, y, _, _ = load_table(Path(sys.argv[1]), label="y")
    outcome = {"x_bytes": x.nbytes}
except DataError as error:
    outcome = {"error": str(error)}
outcome["peak"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps(outcome))
"""


def _read_in_a_fresh_process(path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout))


def test_peak_memory_is_bounded_by_the_table(tmp_path: Path) -> None:
    """The documented bound: about 16 bytes per cell (the table and its float64 features),
    plus a few MiB for the parser. One-digit cells, the worst case of numbers, make the table
    4 times its file."""
    rows, columns = 1_500_000, 10
    rng = np.random.default_rng(0)
    piece = io.StringIO()
    np.savetxt(piece, rng.integers(0, 10, (100_000, columns)), fmt="%d", delimiter=",")
    path = tmp_path / "digits.csv"
    with path.open("w") as out:
        out.write(",".join(f"c{i}" for i in range(columns - 1)) + ",y\n")
        out.write(piece.getvalue() * (rows // 100_000))
    measured = _read_in_a_fresh_process(path)
    assert measured.get("x_bytes") == rows * (columns - 1) * 8, measured
    cells = rows * columns
    assert measured["peak"] < 16 * cells + 32 * 2**20, measured["peak"] / cells


def test_a_file_without_line_breaks_is_refused_at_the_line_limit(tmp_path: Path) -> None:
    """48 MB of text in one line: refused once a line passes MAX_LINE_BYTES, its memory
    bounded by the limit (the reader used to take 7 times the file, then say "no rows")."""
    assert tabular.MAX_LINE_BYTES == 16 * 2**20
    path = tmp_path / "one_line.csv"
    path.write_bytes(b"a" * (48 * 2**20))
    measured = _read_in_a_fresh_process(path)
    assert "line 1 is longer than 16 MiB; a CSV has one row per line" in measured["error"]
    assert measured["peak"] < 8 * tabular.MAX_LINE_BYTES, measured["peak"] / 2**20
