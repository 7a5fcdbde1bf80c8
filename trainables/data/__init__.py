"""Every way data reaches a trial: bundled and generated sets, and the user's own files.

``splits`` turns a dataset into the train/val/test arrays every trial of a sweep shares;
``tabular`` (CSV, Parquet), ``arrays`` (NumPy ``.npz``), ``images`` (image folders, IDX, the
CIFAR pickles) and ``idx`` read the user's files; ``files`` and ``labels`` are their shared
checks. Nothing here downloads anything.
"""

from trainables.data.arrays import load_npz
from trainables.data.idx import read_idx
from trainables.data.images import (
    IMAGE_DATASETS,
    ImageData,
    expected_files,
    load_images,
    missing_files,
)
from trainables.data.splits import (
    BUNDLED_DATASETS,
    DataError,
    Dataset,
    DataSplits,
    load_bundled,
    make_synthetic,
    split_and_scale,
    split_and_scale_with_test,
)
from trainables.data.tabular import TABLE_FORMATS, load_table

__all__ = [
    "BUNDLED_DATASETS",
    "IMAGE_DATASETS",
    "TABLE_FORMATS",
    "DataError",
    "DataSplits",
    "Dataset",
    "ImageData",
    "expected_files",
    "load_bundled",
    "load_images",
    "load_npz",
    "load_table",
    "make_synthetic",
    "missing_files",
    "read_idx",
    "split_and_scale",
    "split_and_scale_with_test",
]
