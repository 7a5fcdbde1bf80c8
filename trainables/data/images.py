"""MNIST, Fashion-MNIST and CIFAR-10 from a local copy, in the layout torchvision leaves.

torchvision's ``MNIST(root, download=True)`` leaves ``<root>/MNIST/raw/*-ubyte`` and
``CIFAR10(root, download=True)`` leaves ``<root>/cifar-10-batches-py/``; a copy made that way
(or by hand from the datasets' sites) is read here directly, with no torchvision import:
nothing is downloaded, and the optional dependency cannot break on a torch version mismatch.

Each dataset keeps its own test set (``test`` below); images are flattened to one row of
pixels and scaled to [0, 1] as float32, which is what the MLP takes.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainables.data.idx import read_idx
from trainables.data.splits import DataError, Dataset

__all__ = ["IMAGE_DATASETS", "ImageData", "expected_files", "load_images", "missing_files"]


@dataclass(frozen=True)
class _Layout:
    title: str
    folder: str  # under root
    train: tuple[str, ...]  # files, in order; for IDX: images then labels
    test: tuple[str, ...]
    classes: tuple[str, ...]
    compressed_ok: bool  # the IDX files may also be gzip-compressed (.gz)


_MNIST_FILES = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)

_LAYOUTS: dict[str, _Layout] = {
    "mnist": _Layout("MNIST", "MNIST/raw", *_MNIST_FILES, tuple(str(d) for d in range(10)), True),
    "fashion_mnist": _Layout(
        "Fashion-MNIST",
        "FashionMNIST/raw",
        *_MNIST_FILES,
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        True,
    ),
    "cifar10": _Layout(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        (
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        False,
    ),
}

IMAGE_DATASETS: tuple[str, ...] = tuple(_LAYOUTS)


@dataclass(frozen=True, eq=False)
class ImageData:
    """A dataset with its own train/test split, as its authors published it."""

    train: Dataset
    test: Dataset


def expected_files(name: str, root: Path) -> list[Path]:
    """Where the files must be, for messages: ``<root>/<folder>/<file>``."""
    layout = _layout(name)
    return [root / layout.folder / f for f in (*layout.train, *layout.test)]


def missing_files(name: str, root: Path) -> str | None:
    """None when a full copy is found, else a message saying which files are expected where.

    ``root`` may also be the folder holding the files itself (``.../MNIST/raw``).
    """
    layout = _layout(name)
    folder = _folder(layout, root)
    absent = [f for f in (*layout.train, *layout.test) if _find(layout, folder, f) is None]
    if not absent:
        return None
    gz = " (each may also be gzip-compressed, ending in .gz)" if layout.compressed_ok else ""
    where = root / layout.folder
    found = "" if where.is_dir() else f"; {where} does not exist"
    return (
        f"no local copy of {layout.title} under {root}: expected the files "
        f"{', '.join(layout.train + layout.test)}{gz} in {where}, the layout torchvision's "
        f"download leaves; missing: {', '.join(absent)}{found}. caviar never downloads data: "
        "copy the files there from a machine with network access"
    )


def load_images(name: str, root: Path) -> ImageData:
    """Read the train and test files of ``name`` under ``root``."""
    layout = _layout(name)
    problem = missing_files(name, root)
    if problem:
        raise DataError(problem)
    folder = _folder(layout, root)
    files = {f: _find(layout, folder, f) for f in (*layout.train, *layout.test)}
    read = _read_idx_pair if layout.compressed_ok else _read_cifar_batches
    x_train, y_train = read([files[f] for f in layout.train], len(layout.classes))
    x_test, y_test = read([files[f] for f in layout.test], len(layout.classes))
    features = tuple(f"px{i}" for i in range(x_train.shape[1]))
    return ImageData(
        train=(x_train, y_train, layout.classes, features),
        test=(x_test, y_test, layout.classes, features),
    )


def _layout(name: str) -> _Layout:
    layout = _LAYOUTS.get(name)
    if layout is None:
        raise DataError(f"unknown image dataset {name!r}; valid names: {', '.join(IMAGE_DATASETS)}")
    return layout


def _folder(layout: _Layout, root: Path) -> Path:
    """The torchvision layout under root, or root itself when it already holds the files."""
    nested = root / layout.folder
    if nested.is_dir() or _find(layout, root, layout.train[0]) is None:
        return nested
    return root


def _find(layout: _Layout, folder: Path, name: str) -> Path | None:
    candidates = [folder / name] + ([folder / f"{name}.gz"] if layout.compressed_ok else [])
    return next((c for c in candidates if c.is_file()), None)


def _read_idx_pair(files: list[Path | None], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images_file, labels_file = files
    assert images_file is not None and labels_file is not None
    images = read_idx(images_file)
    labels = read_idx(labels_file)
    if images.ndim != 3:
        raise DataError(
            f"{images_file}: holds an array of shape {images.shape}; "
            "expected images (count, height, width)"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_file}: holds shape {labels.shape}; expected one label per image")
    if len(images) != len(labels):
        raise DataError(
            f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} "
            "labels; the two must come from the same release: copy them again"
        )
    return _pixels(images, images_file), _class_indices(labels, n_classes, labels_file)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches and nothing else.

    A pickle can run any code when loaded; these files only ever need numpy's array
    reconstruction, so every other global is refused and a tampered file cannot run code.
    """

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batches(files: list[Path | None], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for file in files:
        assert file is not None
        batch = _load_batch(file)
        data = np.asarray(batch["data"])
        batch_labels = np.asarray(batch["labels"])
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(
                f"{file}: 'data' has shape {data.shape}; a CIFAR-10 batch holds rows of "
                "3072 pixel values (32x32, red then green then blue)"
            )
        if batch_labels.shape != (len(data),):
            raise DataError(
                f"{file}: holds {len(data)} images but {batch_labels.size} labels; "
                "the file is corrupt, copy it again"
            )
        images.append(_pixels(data, file))
        labels.append(_class_indices(batch_labels, n_classes, file))
    return np.concatenate(images), np.concatenate(labels)


def _load_batch(file: Path) -> dict[str, Any]:
    try:
        with file.open("rb") as stream:
            batch = _BatchUnpickler(stream, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, OSError) as error:
        raise DataError(f"{file}: is not a CIFAR-10 python batch ({error})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{file}: is not a CIFAR-10 python batch (no dictionary inside)")
    batch = {k.decode() if isinstance(k, bytes) else str(k): v for k, v in batch.items()}
    for key in ("data", "labels"):
        if key not in batch:
            raise DataError(f"{file}: is not a CIFAR-10 python batch (no {key!r} entry)")
    return batch


def _pixels(images: np.ndarray, file: Path) -> np.ndarray:
    """One row per image, scaled from bytes to [0, 1]."""
    if images.dtype != np.uint8:
        raise DataError(f"{file}: pixels have dtype {images.dtype}; expected bytes (uint8)")
    flat = images.reshape(len(images), -1).astype(np.float32)
    flat /= 255.0
    return flat


def _class_indices(labels: np.ndarray, n_classes: int, file: Path) -> np.ndarray:
    in_range = labels.dtype.kind in "iu" and (
        labels.size == 0 or (labels.min() >= 0 and labels.max() < n_classes)
    )
    if not in_range:
        raise DataError(
            f"{file}: labels must be class indices 0..{n_classes - 1}; the file is not from "
            "this dataset, or is corrupt"
        )
    return labels.astype(np.int64)
