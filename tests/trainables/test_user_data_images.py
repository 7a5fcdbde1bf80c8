"""IDX files, and MNIST / Fashion-MNIST / CIFAR-10 from local copies in torchvision's layout."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from user_data_files import fake_cifar10, fake_mnist, write_idx

from trainables import DataError, load_images, read_idx
from trainables.data import expected_files, missing_files


@pytest.mark.parametrize("dtype", [np.uint8, ">i4", ">f4"])
def test_read_idx_round_trips_the_format(tmp_path: Path, dtype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    back = read_idx(write_idx(tmp_path / "a-idx3", array))
    np.testing.assert_array_equal(back, array)
    assert back.dtype.isnative


def test_read_idx_gzip(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "l-idx1.gz", labels)), labels)


def test_read_idx_truncated_and_foreign_files(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "a", np.zeros((4, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"promises shape \(4, 5\).*truncated or corrupt"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04not idx")
    with pytest.raises(DataError, match="is not an IDX file"):
        read_idx(path)
    gz = tmp_path / "b.gz"
    gz.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot be read"):
        read_idx(gz)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_a_torchvision_layout(tmp_path: Path, gz: bool) -> None:
    fake_mnist(tmp_path, n_train=50, n_test=20, gz=gz)
    data = load_images("mnist", tmp_path)
    x, y, classes, features = data.train
    x_test, y_test, _, _ = data.test
    assert x.shape == (50, 784) and x_test.shape == (20, 784)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert classes == tuple("0123456789") and len(features) == 784
    assert y.dtype == np.int64 and set(y) <= set(range(10)) and len(y_test) == 20


def test_root_may_be_the_raw_folder_itself(tmp_path: Path) -> None:
    raw = fake_mnist(tmp_path, n_train=30, n_test=10)
    assert load_images("mnist", raw).train[0].shape == (30, 784)


def test_fashion_mnist_layout_and_names(tmp_path: Path) -> None:
    fake_mnist(tmp_path, folder="FashionMNIST/raw", n_train=30, n_test=10)
    data = load_images("fashion_mnist", tmp_path)
    assert data.train[2][0] == "T-shirt/top" and data.train[2][9] == "Ankle boot"


def test_missing_copy_says_which_files_go_where(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_images("mnist", tmp_path)
    message = str(excinfo.value)
    assert f"in {tmp_path / 'MNIST' / 'raw'}" in message
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in message
    assert ".gz" in message and "never downloads" in message
    assert expected_files("mnist", tmp_path)[0] == tmp_path / "MNIST/raw/train-images-idx3-ubyte"


def test_one_missing_file_is_named(tmp_path: Path) -> None:
    raw = fake_mnist(tmp_path, n_train=30, n_test=10)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    problem = missing_files("mnist", tmp_path)
    assert problem is not None and "missing: t10k-labels-idx1-ubyte" in problem


def test_images_and_labels_of_different_lengths(tmp_path: Path) -> None:
    raw = fake_mnist(tmp_path, n_train=30, n_test=10)
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(29, dtype=np.uint8))
    with pytest.raises(DataError, match="holds 30 images but .* holds 29 labels"):
        load_images("mnist", tmp_path)


def test_labels_out_of_range(tmp_path: Path) -> None:
    raw = fake_mnist(tmp_path, n_train=30, n_test=10)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(10, 12, dtype=np.uint8))
    with pytest.raises(DataError, match=r"class indices 0\.\.9"):
        load_images("mnist", tmp_path)


def test_cifar10_batches(tmp_path: Path) -> None:
    fake_cifar10(tmp_path, per_batch=8, n_test=12)
    data = load_images("cifar10", tmp_path)
    x, y, classes, _ = data.train
    assert x.shape == (40, 3072) and data.test[0].shape == (12, 3072)
    assert classes[0] == "airplane" and classes[9] == "truck"
    assert x.dtype == np.float32 and x.max() <= 1.0


def test_cifar10_missing_batches(tmp_path: Path) -> None:
    folder = fake_cifar10(tmp_path, per_batch=4, n_test=4)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"in .*cifar-10-batches-py.*missing: data_batch_3\."):
        load_images("cifar10", tmp_path)


class _Exploit:
    """Unpickling this would run a command; the batch reader must refuse it."""

    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_cifar10_reader_runs_no_code_from_the_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = fake_cifar10(tmp_path, per_batch=4, n_test=4)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="refusing to load .*system"):
        load_images("cifar10", tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar10_wrong_shape(tmp_path: Path) -> None:
    folder = fake_cifar10(tmp_path, per_batch=4, n_test=4)
    batch = {b"data": np.zeros((4, 100), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="data_batch_2: 'data' has shape"):
        load_images("cifar10", tmp_path)


def test_gzip_helper_is_real_gzip(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.gz", np.zeros(3, dtype=np.uint8))
    assert gzip.decompress(path.read_bytes())[:4] == bytes([0, 0, 8, 1])


def test_cifar10_batches_pickled_by_old_numpy_still_load(tmp_path: Path) -> None:
    """The published files name numpy.core.multiarray (numpy 1.x); numpy 2 moved it."""
    folder = fake_cifar10(tmp_path, per_batch=4, n_test=4)
    batch = {b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    old = pickle.dumps(batch, protocol=2).replace(
        b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"
    )
    assert b"numpy.core.multiarray\n" in old
    (folder / "test_batch").write_bytes(old)
    assert load_images("cifar10", tmp_path).test[0].shape == (4, 3072)
