"""NumPy .npz archives: what is read, and each bad-data case's message."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from user_data_files import write_npz

from trainables import DataError, load_npz


def _error(path: Path, **options: object) -> str:
    with pytest.raises(DataError) as excinfo:
        load_npz(path, **options)  # type: ignore[arg-type]
    message = str(excinfo.value)
    assert str(path) in message, message
    return message


def test_reads_x_and_y(tmp_path: Path) -> None:
    x, y, classes, features = load_npz(write_npz(tmp_path / "d.npz"))
    assert x.shape == (90, 4) and y.shape == (90,)
    assert classes == () and features == ("X[0]", "X[1]", "X[2]", "X[3]")
    assert set(y) == {0, 1, 2}


def test_configurable_keys_text_labels_and_images_flattened(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 255, size=(12, 4, 4), dtype=np.uint8)
    names = np.array(["cat", "dog"] * 6)
    path = write_npz(tmp_path / "d.npz", pixels=images, animal=names)
    x, y, classes, _ = load_npz(path, x_key="pixels", y_key="animal", classes=["dog", "cat"])
    assert x.shape == (12, 16)
    np.testing.assert_array_equal(x[3], images[3].ravel())
    assert classes == ("dog", "cat") and list(y[:2]) == [1, 0]


def test_column_vector_labels_are_accepted(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", X=np.ones((6, 2)), y=np.arange(6).reshape(6, 1) % 2)
    assert load_npz(path)[1].shape == (6,)


def test_missing_file(tmp_path: Path) -> None:
    assert "file not found" in _error(tmp_path / "none.npz")


def test_missing_array_lists_the_arrays(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", features=np.ones((4, 2)), y=np.arange(4))
    message = _error(path)
    assert "has no array 'X' (data.x_key)" in message and "'features'" in message


def test_mismatched_lengths(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", X=np.ones((10, 2)), y=np.arange(9) % 2)
    message = _error(path)
    assert "array 'X' has 10 rows but 'y' has 9" in message


def test_nan_rows_are_named(tmp_path: Path) -> None:
    x = np.ones((10, 2))
    x[4, 1] = np.nan
    x[7, 0] = np.inf
    message = _error(write_npz(tmp_path / "d.npz", X=x, y=np.arange(10) % 2))
    assert "nan or infinite values in 2 rows (row 4, 7)" in message


def test_non_numeric_features(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", X=np.array([["a", "b"]] * 4), y=np.arange(4) % 2)
    assert "features must be numbers" in _error(path)


class _Exploit:
    """Unpickling this would run a command; the reader must refuse the array unread."""

    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_object_arrays_are_not_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_npz(
        tmp_path / "d.npz", X=np.ones((4, 2)), y=np.array(["a", None, "b", "a"], dtype=object)
    )
    message = _error(path)
    assert "holds Python objects" in message and "dtype=str" in message
    # An object array whose unpickling would leave a file behind: refused, and no file.
    exploit = np.empty(4, dtype=object)
    exploit[:] = [_Exploit(), "a", "b", "a"]
    path = write_npz(tmp_path / "e.npz", X=np.ones((4, 2)), y=exploit)
    monkeypatch.chdir(tmp_path)
    assert "holds Python objects" in _error(path)
    assert not (tmp_path / "pwned").exists()


def test_one_hot_labels_are_refused(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", X=np.ones((4, 2)), y=np.eye(4))
    assert "not one-hot" in _error(path)


def test_single_feature_vector_is_refused(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", X=np.ones(4), y=np.arange(4) % 2)
    assert "reshape a single feature to (n, 1)" in _error(path)


def test_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_text("X,y\n1,2\n")
    assert "not a readable .npz archive" in _error(path)
    npy = tmp_path / "single.npy"
    np.save(npy, np.ones((3, 2)))
    assert "holds a single array (.npy)" in _error(npy)
