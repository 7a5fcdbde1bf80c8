"""The spec's ``data:`` section: the eight data sources and their splits, told apart by ``source``.

These models only describe the data; ``orchestrator.spec.data`` resolves a file's path against
the spec's folder and reads it, once, on the driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from orchestrator.spec.base import StrictModel

BUNDLED_SOURCES = ("digits", "iris", "wine", "breast_cancer")
FILE_SOURCES = ("csv", "parquet", "npz", "torchvision")
DATA_SOURCES = (*BUNDLED_SOURCES, "synthetic", *FILE_SOURCES)


class _DataCommon(StrictModel):
    val_fraction: Annotated[
        float,
        Field(gt=0, lt=1, description="Share of rows held out for validation (the objective)."),
    ] = 0.2
    test_fraction: Annotated[
        float,
        Field(gt=0, lt=1, description="Share of rows held out for the best model's final test."),
    ] = 0.2
    seed: Annotated[int, Field(description="Seed of the stratified train/val/test split.")] = 0
    standardize: Annotated[
        bool, Field(description="Scale features to mean 0, std 1 using training rows only.")
    ] = True

    @model_validator(mode="after")
    def _splits_leave_training_rows(self) -> _DataCommon:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "val_fraction + test_fraction must leave at least 10% of rows for training, "
                f"got {self.val_fraction:g} + {self.test_fraction:g}"
            )
        return self


class BundledData(_DataCommon):
    """A dataset that ships with scikit-learn: nothing is downloaded."""

    source: Annotated[
        Literal["digits", "iris", "wine", "breast_cancer"],
        Field(description="digits | iris | wine | breast_cancer (scikit-learn's bundled data)."),
    ] = "digits"

    @field_validator("source", mode="before")
    @classmethod
    def _known_source(cls, value: Any) -> Any:
        if value not in DATA_SOURCES:
            hint = (
                f"; {value} is read from a local copy: source: torchvision, dataset: {value}, "
                "root: <folder>"
                if value in ("mnist", "fashion_mnist", "cifar10")
                else ""
            )
            raise ValueError(
                f"unknown data source {value!r}; choose one of {', '.join(DATA_SOURCES)}{hint}"
            )
        return value


class SyntheticData(_DataCommon):
    """A generated classification problem (scikit-learn's make_classification)."""

    source: Annotated[Literal["synthetic"], Field(description="Generated data.")]
    n_samples: Annotated[int, Field(ge=20, le=10_000_000, description="Rows to generate.")] = 1000
    n_features: Annotated[int, Field(ge=2, le=100_000, description="Feature columns.")] = 20
    n_classes: Annotated[int, Field(ge=2, le=1000, description="Number of classes.")] = 3


_PATH_HELP = (
    "relative to the spec file's folder (on a cluster that folder travels with the job); "
    "an absolute path must exist on the machines the job runs on"
)


class _FileData(_DataCommon):
    """The user's own file. Its path is kept as written: the spec's folder, which a relative
    path is resolved against, is known only to whoever loaded the spec (orchestrator.spec.data).
    """

    path: Annotated[str, Field(min_length=1, description=f"The data file, {_PATH_HELP}.")]
    classes: Annotated[
        list[str | int] | None,
        Field(
            min_length=2,
            description=(
                "The label values in output order: class k of the model is classes[k]. "
                "Default: the labels present, sorted (numbers numerically, text "
                "alphabetically). The mapping is logged on the sweep's MLflow run."
            ),
        ),
    ] = None

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: list[str | int] | None) -> list[str | int] | None:
        if value is not None:
            seen: set[str] = set()
            for item in value:
                if str(item) in seen:
                    raise ValueError(f"lists {item!r} twice; each class once")
                seen.add(str(item))
        return value


class _TableData(_FileData):
    label: Annotated[str, Field(min_length=1, description="The column holding the class.")]
    features: Annotated[
        list[str] | None,
        Field(
            min_length=1,
            description=(
                "The columns to train on (default: every numeric column but the label and "
                "unnamed index columns)."
            ),
        ),
    ] = None

    @model_validator(mode="after")
    def _features_exclude_label(self) -> _TableData:
        if self.features is not None:
            if self.label in self.features:
                raise ValueError(
                    f"features lists the label column {self.label!r}; "
                    "a model must not see its own target"
                )
            if len(set(self.features)) != len(self.features):
                raise ValueError("features lists a column twice; each column once")
        return self


class CsvData(_TableData):
    """A CSV file with a header line: one row per sample, one column per feature."""

    source: Annotated[Literal["csv"], Field(description="A CSV file.")]
    delimiter: Annotated[
        str, Field(min_length=1, max_length=1, description="The column separator, e.g. ';'.")
    ] = ","


class ParquetData(_TableData):
    """A Parquet file (needs pyarrow: ``pip install 'caviar[parquet]'``)."""

    source: Annotated[Literal["parquet"], Field(description="A Parquet file.")]


class NpzData(_FileData):
    """A NumPy ``.npz`` archive (``np.savez``) holding a feature array and a label array."""

    source: Annotated[Literal["npz"], Field(description="A NumPy .npz archive.")]
    x_key: Annotated[
        str, Field(min_length=1, description="The features' array: one row per sample.")
    ] = "X"
    y_key: Annotated[
        str, Field(min_length=1, description="The labels' array: one label per row.")
    ] = "y"

    @model_validator(mode="after")
    def _two_arrays(self) -> NpzData:
        if self.x_key == self.y_key:
            raise ValueError(f"x_key and y_key are both {self.x_key!r}; name two arrays")
        return self


class TorchvisionData(_DataCommon):
    """MNIST, Fashion-MNIST or CIFAR-10 from a local copy in torchvision's layout.

    The files are read directly (torchvision is not needed, nothing is downloaded). These
    datasets come with their own test set, which is the test split; val is carved from the
    training files.
    """

    source: Annotated[Literal["torchvision"], Field(description="A local image dataset.")]
    dataset: Annotated[
        Literal["mnist", "fashion_mnist", "cifar10"],
        Field(description="mnist | fashion_mnist | cifar10"),
    ]
    root: Annotated[
        str,
        Field(
            min_length=1,
            description=(
                "The folder holding MNIST/raw, FashionMNIST/raw or cifar-10-batches-py "
                f"(torchvision's root), {_PATH_HELP}."
            ),
        ),
    ]

    @model_validator(mode="after")
    def _own_test_set(self) -> TorchvisionData:
        if "test_fraction" in self.model_fields_set:
            raise ValueError(
                f"{self.dataset} has its own test set, which is the test split; remove "
                "test_fraction (val_fraction is taken from the training files)"
            )
        return self


FileData = CsvData | ParquetData | NpzData | TorchvisionData

_DATA_TAGS = {source: f"__{source}__" for source in ("synthetic", *FILE_SOURCES)}


def _data_kind(value: Any) -> str:
    source = value.get("source") if isinstance(value, Mapping) else getattr(value, "source", None)
    return _DATA_TAGS.get(source, "__bundled__") if isinstance(source, str) else "__bundled__"


DataSpec = Annotated[
    Annotated[BundledData, Tag("__bundled__")]
    | Annotated[SyntheticData, Tag("__synthetic__")]
    | Annotated[CsvData, Tag("__csv__")]
    | Annotated[ParquetData, Tag("__parquet__")]
    | Annotated[NpzData, Tag("__npz__")]
    | Annotated[TorchvisionData, Tag("__torchvision__")],
    Discriminator(_data_kind),
]
