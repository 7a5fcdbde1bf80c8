"""Small data files in the formats users bring, written by the tests themselves.

Each builder writes the format from its published description (IDX by its header layout,
CIFAR-10 as pickled dicts), not through caviar's readers, so a reader bug cannot hide behind
a matching writer bug. Every dataset is learnable: a class shifts some features.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pandas as pd

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file: 0, 0, type code, ndim, big-endian uint32 dims, big-endian values."""
    data = np.asarray(array)
    if data.dtype != np.uint8:
        data = data.astype(data.dtype.newbyteorder(">"))
    header = bytes([0, 0, IDX_CODES[data.dtype], data.ndim])
    header += struct.pack(f">{data.ndim}I", *data.shape)
    payload = header + data.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def class_images(n: int, shape: tuple[int, ...], n_classes: int, seed: int) -> tuple:
    """uint8 images whose class lights up its own band of pixels, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, *shape), dtype=np.uint8)
    flat = images.reshape(n, -1)
    band = flat.shape[1] // n_classes
    for row, label in enumerate(labels):
        flat[row, label * band : (label + 1) * band] += 150
    return images, labels.astype(np.uint8)


def fake_mnist(
    root: Path,
    folder: str = "MNIST/raw",
    n_train: int = 120,
    n_test: int = 40,
    gz: bool = False,
    seed: int = 0,
) -> Path:
    """A torchvision-layout MNIST copy: ``<root>/MNIST/raw/{train,t10k}-*-idx?-ubyte``."""
    raw = root / folder
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = class_images(n, (28, 28), 10, seed + n)
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return raw


def fake_cifar10(root: Path, per_batch: int = 20, n_test: int = 30, seed: int = 0) -> Path:
    """``<root>/cifar-10-batches-py/`` with data_batch_1..5 and test_batch, as pickled dicts
    with bytes keys (what Python 2's pickles of the real files read back as)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        n = n_test if name == "test_batch" else per_batch
        images, labels = class_images(n, (3, 32, 32), 10, seed + i)
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in labels],
            b"data": images.reshape(n, 3072),
            b"filenames": [f"img_{k}.png".encode() for k in range(n)],
        }
        with (folder / name).open("wb") as stream:
            pickle.dump(batch, stream, protocol=2)
    return folder


def fruit_table(n: int = 90, seed: int = 0) -> pd.DataFrame:
    """Three text classes, three numeric features, a text column to be left out."""
    rng = np.random.default_rng(seed)
    fruit = np.array(["pear", "apple", "orange"])[np.arange(n) % 3]
    centre = {"apple": 0.0, "orange": 3.0, "pear": 6.0}
    shift = np.array([centre[f] for f in fruit])
    return pd.DataFrame(
        {
            "weight": np.round(rng.normal(shift, 1.0), 3),
            "colour": np.where(fruit == "orange", "orange", "green"),
            "height": np.round(rng.normal(-shift, 1.0), 3),
            "sugar": rng.integers(0, 10, size=n),
            "fruit": fruit,
        }
    )


def write_csv(path: Path, frame: pd.DataFrame, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, **options)  # type: ignore[arg-type]
    return path


def write_npz(path: Path, n: int = 90, seed: int = 0, **arrays: np.ndarray) -> Path:
    """``X`` (n, 4) floats and ``y`` integer labels 0..2, unless given other arrays."""
    if not arrays:
        rng = np.random.default_rng(seed)
        y = np.arange(n) % 3
        x = rng.normal(size=(n, 4)) + y[:, None] * 2.0
        arrays = {"X": x, "y": y}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path
