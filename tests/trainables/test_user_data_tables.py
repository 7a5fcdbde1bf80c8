"""CSV and Parquet tables: what is read, and each bad-data case's message."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from user_data_files import fruit_table, write_csv

from trainables import DataError, load_table, split_and_scale


def _error(path: Path, **options: object) -> str:
    with pytest.raises(DataError) as excinfo:
        load_table(path, **options)  # type: ignore[arg-type]
    message = str(excinfo.value)
    assert str(path) in message, message  # every message names the file
    return message


def test_csv_defaults_to_numeric_columns_and_sorted_text_labels(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "fruit.csv", fruit_table())
    x, y, classes, features = load_table(path, label="fruit")
    assert features == ("weight", "height", "sugar")  # the text column 'colour' is left out
    assert x.shape == (90, 3) and x.dtype == np.float64
    assert classes == ()  # split_and_scale names them: sorted
    splits = split_and_scale(x, y, val_fraction=0.2, test_fraction=0.2, seed=0, standardize=True)
    assert splits.class_names == ("apple", "orange", "pear")


def test_explicit_features_and_class_order(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "fruit.csv", fruit_table())
    x, y, classes, features = load_table(
        path, label="fruit", features=["sugar", "weight"], classes=["pear", "apple", "orange"]
    )
    assert features == ("sugar", "weight")
    assert classes == ("pear", "apple", "orange")
    frame = fruit_table()
    np.testing.assert_array_equal(x[:, 1], frame["weight"])
    expected = frame["fruit"].map({"pear": 0, "apple": 1, "orange": 2}).to_numpy()
    np.testing.assert_array_equal(y, expected)
    splits = split_and_scale(
        x, y, val_fraction=0.2, test_fraction=0.2, seed=0, standardize=True, class_names=classes
    )
    assert splits.class_names == ("pear", "apple", "orange")


def test_integer_labels_sort_numerically(tmp_path: Path) -> None:
    frame = fruit_table().assign(fruit=np.arange(90) % 3 * 5)  # 0, 5, 10
    x, y, _, _ = load_table(write_csv(tmp_path / "t.csv", frame), label="fruit")
    splits = split_and_scale(x, y, val_fraction=0.2, test_fraction=0.2, seed=0, standardize=True)
    assert splits.class_names == ("0", "5", "10")


def test_unnamed_index_column_is_not_a_feature(tmp_path: Path) -> None:
    path = tmp_path / "indexed.csv"
    fruit_table().to_csv(path)  # pandas' default writes the index as an unnamed column
    _, _, _, features = load_table(path, label="fruit")
    assert features == ("weight", "height", "sugar")


def test_delimiter(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "semi.csv", fruit_table(), sep=";")
    x, _, _, features = load_table(path, label="fruit", delimiter=";")
    assert features == ("weight", "height", "sugar") and x.shape == (90, 3)


def test_missing_file(tmp_path: Path) -> None:
    assert "file not found" in _error(tmp_path / "nope.csv", label="fruit")


def test_missing_label_column_suggests_and_lists_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "fruit.csv", fruit_table())
    message = _error(path, label="fruits")
    assert "has no column 'fruits' for data.label" in message
    assert "did you mean 'fruit'?" in message
    assert "'weight'" in message and "'colour'" in message


def test_missing_feature_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "fruit.csv", fruit_table())
    message = _error(path, label="fruit", features=["weight", "hieght"])
    assert "has no column 'hieght' from data.features" in message
    assert "did you mean 'height'?" in message


def test_text_feature_listed_explicitly_is_an_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "fruit.csv", fruit_table())
    message = _error(path, label="fruit", features=["weight", "colour"])
    assert "feature column 'colour' is not numeric" in message
    assert "'green'" in message


def test_numeric_column_with_a_stray_text_cell_names_the_line(tmp_path: Path) -> None:
    frame = fruit_table().astype({"height": object})
    frame.loc[4, "height"] = "?"
    path = write_csv(tmp_path / "fruit.csv", frame)
    message = _error(path, label="fruit")
    assert "feature column 'height' is numbers except for text ('?')" in message
    assert "line 6" in message  # line 1 is the header, row 0 is line 2


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_missing_or_infinite_feature_values_name_column_and_line(
    tmp_path: Path, value: float
) -> None:
    frame = fruit_table()
    frame.loc[[2, 7], "weight"] = value
    message = _error(write_csv(tmp_path / "fruit.csv", frame), label="fruit")
    assert "missing or infinite feature values: 'weight' in 2 lines (line 4, 9)" in message


def test_missing_label_names_the_line(tmp_path: Path) -> None:
    frame = fruit_table()
    frame.loc[10, "fruit"] = None
    message = _error(write_csv(tmp_path / "fruit.csv", frame), label="fruit")
    assert "label column 'fruit' is empty in 1 line (line 12)" in message


def test_fractional_labels_are_refused(tmp_path: Path) -> None:
    frame = fruit_table().assign(price=np.linspace(0.5, 9.5, 90))
    message = _error(write_csv(tmp_path / "t.csv", frame), label="price")
    assert "non-integer numbers" in message and "classifiers" in message


def test_no_numeric_features(tmp_path: Path) -> None:
    frame = fruit_table()[["colour", "fruit"]]
    message = _error(write_csv(tmp_path / "t.csv", frame), label="fruit")
    assert "no numeric feature columns" in message and "'colour'" in message


def test_label_among_features(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "fruit.csv", fruit_table())
    assert "must not see its own target" in _error(path, label="fruit", features=["fruit"])


def test_classes_must_cover_the_labels_and_each_have_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "fruit.csv", fruit_table())
    message = _error(path, label="fruit", classes=["apple", "pear"])
    assert "data.classes does not list: 'orange'" in message
    message = _error(path, label="fruit", classes=["apple", "pear", "orange", "kiwi"])
    assert "has no row labelled 'kiwi', which data.classes lists" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "is empty"),
        ("a,b,label\n", "no rows"),
        ("a,b,label\n1,2,x\n1,2,3,4,5\n", "cannot be parsed as CSV"),
    ],
)
def test_unreadable_csv(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert expected in _error(path, label="label")


def test_parquet_reads_like_csv(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "fruit.parquet"
    fruit_table().to_parquet(path)
    x, y, _, features = load_table(path, label="fruit", file_format="parquet")
    assert features == ("weight", "height", "sugar") and x.shape == (90, 3)
    assert set(y) == {"apple", "orange", "pear"}


def test_parquet_missing_value_names_the_row(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    frame = fruit_table()
    frame.loc[3, "sugar"] = None
    path = tmp_path / "fruit.parquet"
    frame.to_parquet(path)
    message = _error(path, label="fruit", file_format="parquet")
    assert "'sugar' in 1 row (row 3)" in message


def test_parquet_without_pyarrow_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fruit.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    message = _error(path, label="fruit", file_format="parquet")
    assert "needs pyarrow" in message and "pip install 'caviar[parquet]'" in message


def test_corrupt_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "fruit.parquet"
    path.write_text("weight,fruit\n1,apple\n")
    assert "cannot be read as Parquet" in _error(path, label="fruit", file_format="parquet")


def test_pandas_is_imported_only_to_read_a_table(tmp_path: Path) -> None:
    """trainables itself must not need pandas: it is imported by the reader, lazily. In a
    fresh interpreter: not after importing the reader, only once a table is read."""
    import subprocess

    import trainables.data.tabular as tabular

    assert "pandas" not in vars(tabular)
    path = write_csv(tmp_path / "fruit.csv", fruit_table())
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from trainables import load_table\n"
        "print('pandas' in sys.modules)\n"
        f"load_table(Path({str(path)!r}), label='fruit')\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
