"""From the spec's ``data`` section to arrays, on the driver, once per sweep.

The driver loads, checks and splits the data before Ray or MLflow start, so a data problem is
reported before any compute; the result travels to trials through Ray's object store, so
workers never read the user's files themselves.

A data file's path in a spec is relative to the spec's folder, not to wherever ``caviar`` was
started: a spec and its data move together (into a repository, or to a cluster with the job).
The spec models keep paths as written; this module resolves them against the folder it is
given. Problems become :class:`DataLoadError`, which the CLI prints without a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.errors import CaviarError
from orchestrator.spec.data_sources import (
    BundledData,
    CsvData,
    FileData,
    NpzData,
    ParquetData,
    SyntheticData,
    TorchvisionData,
)
from trainables import (
    DataError,
    DataSplits,
    load_bundled,
    make_synthetic,
    split_and_scale,
    split_and_scale_with_test,
)
from trainables.data import Dataset, ImageData, load_images, load_npz, load_table, missing_files

AnyData = BundledData | SyntheticData | FileData

_WHERE_FILES_LIVE = (
    "A relative path is resolved against the spec's folder ({base}); on a cluster, files "
    "under the spec's folder travel with the job, and an absolute path must exist on the "
    "machines the job runs on."
)


class DataLoadError(CaviarError):
    """The dataset named by the spec cannot be loaded or split."""

    exit_code = 2


def resolve(path: str, base_dir: Path) -> Path:
    """A spec's path as an absolute path: ``~`` expanded, relative ones under ``base_dir``."""
    given = Path(path).expanduser()
    return (given if given.is_absolute() else base_dir / given).resolve()


def check_data_files(data: AnyData, base_dir: Path | None = None) -> None:
    """Check that the files the spec names exist, without reading them.

    Cheap enough for ``caviar validate``; ``load_data`` reads and checks the contents.
    """
    base = _base(base_dir)
    if isinstance(data, TorchvisionData):
        root = resolve(data.root, base)
        problem = missing_files(data.dataset, root)
        if problem:
            raise DataLoadError(f"data.root: {problem}. {_WHERE_FILES_LIVE.format(base=base)}")
    elif isinstance(data, CsvData | ParquetData | NpzData):
        path = resolve(data.path, base)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise DataLoadError(
                f"data.path: {data.path!r}: {path} {what}. {_WHERE_FILES_LIVE.format(base=base)}"
            )


def load_data(data: AnyData, base_dir: Path | None = None) -> DataSplits:
    """Load, check and split the spec's dataset; ``base_dir`` is the spec's folder (default:
    the current directory)."""
    base = _base(base_dir)
    check_data_files(data, base)
    label = f"data ({data.source})"
    try:
        loaded = _load(data, base)  # the loaders' messages start with the file
    except DataError as error:
        raise DataLoadError(f"{label}: {error}") from None
    try:
        return _split(data, loaded)
    except DataError as error:  # the splitter's do not: name the file here
        raise DataLoadError(f"{label}: {_origin(data, base)}{error}") from None


def class_names_param(splits: DataSplits) -> str:
    """The class mapping as logged on the parent run: a JSON list, output k is item k.

    JSON rather than Python's repr so any language can read a logged model's outputs back.
    """
    return json.dumps(list(splits.class_names), ensure_ascii=False)


def _load(data: AnyData, base: Path) -> Dataset | ImageData:
    if isinstance(data, TorchvisionData):
        return load_images(data.dataset, resolve(data.root, base))
    if isinstance(data, NpzData):
        return load_npz(
            resolve(data.path, base), x_key=data.x_key, y_key=data.y_key, classes=data.classes
        )
    if isinstance(data, CsvData | ParquetData):
        return load_table(
            resolve(data.path, base),
            label=data.label,
            features=data.features,
            classes=data.classes,
            file_format=data.source,
            delimiter=data.delimiter if isinstance(data, CsvData) else ",",
        )
    if isinstance(data, SyntheticData):
        return make_synthetic(data.n_samples, data.n_features, data.n_classes, data.seed)
    return load_bundled(data.source)


def _split(data: AnyData, loaded: Dataset | ImageData) -> DataSplits:
    if isinstance(loaded, ImageData):
        x, y, classes, features = loaded.train
        x_test, y_test, _, _ = loaded.test
        return split_and_scale_with_test(
            x,
            y,
            x_test,
            y_test,
            val_fraction=data.val_fraction,
            seed=data.seed,
            standardize=data.standardize,
            class_names=classes,
            feature_names=features,
        )
    x, y, classes, features = loaded
    return split_and_scale(
        x,
        y,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.seed,
        standardize=data.standardize,
        class_names=classes,
        feature_names=features,
    )


def _origin(data: AnyData, base: Path) -> str:
    if isinstance(data, TorchvisionData):
        return f"{resolve(data.root, base)}: "
    if isinstance(data, CsvData | ParquetData | NpzData):
        return f"{resolve(data.path, base)}: "
    return ""


def _base(base_dir: Path | None) -> Path:
    return (base_dir if base_dir is not None else Path.cwd()).resolve()
