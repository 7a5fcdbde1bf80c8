"""The sweep spec: pydantic models, loading from YAML, and the checks that span sections.

The spec is the product's main interface and the single source of truth: nothing downstream
re-validates raw dicts. Every model is strict (``extra="forbid"``), so a typo in a YAML file is
an error instead of a silently ignored key; every field carries a description, which feeds
``caviar schema`` and editors' completion. ``load_spec``/``parse_spec`` are the one parse
boundary: pydantic's ``ValidationError`` leaves this module only as :class:`SpecError`, with
every problem located by its dotted path.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator.errors import Problem, SpecError
from orchestrator.search.space import (
    ChoiceDomain,
    Domain,
    GridDomain,
    RangeDomain,
    Scalar,
    SearchSpace,
)
from orchestrator.search.tpe import TpeSettings
from orchestrator.spec.panda import PandaSpec
from orchestrator.spec.yaml_text import YamlShapeError, load_yaml

BUNDLED_SOURCES = ("digits", "iris", "wine", "breast_cancer")
FILE_SOURCES = ("csv", "parquet", "npz", "torchvision")
DATA_SOURCES = (*BUNDLED_SOURCES, "synthetic", *FILE_SOURCES)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class StrictModel(BaseModel):
    """Base of every spec section: unknown keys are errors and parsed specs are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- space -------------------------------------------------------------------------------


class RangeParameter(StrictModel):
    """An interval sampled uniformly on its scale: ``{scale: log, low: 1e-4, high: 1}``."""

    scale: Annotated[
        Literal["linear", "log", "log1m"],
        Field(
            description=(
                "linear: uniform in x. log: uniform in log10(x) (learning rates). "
                "log1m: uniform in log10(1 - x), for averaging betas such as momentum "
                "(0.9..0.999 gives equal mass to ~10-, ~100- and ~1000-step averages)."
            )
        ),
    ] = "linear"
    integer: Annotated[
        bool, Field(description="Round samples to integers (units, layers, batch size).")
    ] = False
    low: Annotated[float, Field(description="Lower bound, included.")]
    high: Annotated[float, Field(description="Upper bound, included; must be > low.")]

    @field_validator("low", "high")
    @classmethod
    def _bound_fits_scale(cls, value: float, info: ValidationInfo) -> float:
        scale = info.data.get("scale", "linear")
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        if scale == "log" and value <= 0:
            raise ValueError(f"must be > 0 on a log scale, got {value:g}")
        if scale == "log1m" and not 0 < value < 1:
            raise ValueError(
                f"must be in (0, 1) on a log1m scale (it samples log10(1 - x)), got {value:g}"
            )
        if info.data.get("integer") and value != int(value):
            raise ValueError(f"must be a whole number when integer: true, got {value:g}")
        if info.field_name == "high" and "low" in info.data and value <= info.data["low"]:
            raise ValueError(f"must be > low, got low={info.data['low']:g}, high={value:g}")
        return value

    @model_validator(mode="after")
    def _integer_needs_a_numeric_scale(self) -> RangeParameter:
        if self.integer and self.scale == "log1m":
            raise ValueError("integer: true cannot be combined with scale: log1m")
        return self

    def to_domain(self, name: str) -> RangeDomain:
        return RangeDomain(name, self.scale, self.low, self.high, self.integer)

    def corner_values(self) -> list[tuple[str, Scalar]]:
        cast = int if self.integer else float
        return [("low", cast(self.low)), ("high", cast(self.high))]


class ChoiceParameter(StrictModel):
    """A categorical parameter, drawn uniformly at random: ``{values: [32, 64, 128]}``."""

    values: Annotated[
        list[Scalar],
        Field(min_length=1, description="The values to choose from, each equally likely."),
    ]

    @field_validator("values")
    @classmethod
    def _distinct(cls, values: list[Scalar]) -> list[Scalar]:
        return _require_distinct(values)

    def to_domain(self, name: str) -> ChoiceDomain:
        return ChoiceDomain(name, tuple(self.values))

    def corner_values(self) -> list[tuple[str, Scalar]]:
        return [(f"values[{i}]", v) for i, v in enumerate(self.values)]


class GridParameter(StrictModel):
    """An exhaustive parameter: every value is tried, crossed with the other grids."""

    grid: Annotated[
        list[Scalar], Field(min_length=1, description="Every value is tried in every sweep.")
    ]

    @field_validator("grid")
    @classmethod
    def _distinct(cls, values: list[Scalar]) -> list[Scalar]:
        return _require_distinct(values)

    def to_domain(self, name: str) -> GridDomain:
        return GridDomain(name, tuple(self.grid))

    def corner_values(self) -> list[tuple[str, Scalar]]:
        return [(f"grid[{i}]", v) for i, v in enumerate(self.grid)]


def _require_distinct(values: list[Scalar]) -> list[Scalar]:
    seen: list[Scalar] = []
    for value in values:
        if any(value == s and type(value) is type(s) for s in seen):
            raise ValueError(f"lists {value!r} twice; each value once")
        seen.append(value)
    return values


def _parameter_kind(value: Any) -> str:
    """Pick the parameter model by the keys present, so errors name the right fields."""
    if isinstance(value, Mapping):
        if "values" in value:
            return "__choice__"
        if "grid" in value:
            return "__grid__"
        return "__range__"
    if isinstance(value, ChoiceParameter):
        return "__choice__"
    if isinstance(value, GridParameter):
        return "__grid__"
    return "__range__"


Parameter = Annotated[
    Annotated[RangeParameter, Tag("__range__")]
    | Annotated[ChoiceParameter, Tag("__choice__")]
    | Annotated[GridParameter, Tag("__grid__")],
    Discriminator(_parameter_kind),
]


# --- data --------------------------------------------------------------------------------


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


# --- search, scheduler, objective, resources, tracking, storage --------------------------


# Defaults that depend on the strategy. The fields stay None when unset (so a spec's hash,
# and what "set by the user" means, do not change); ``caviar schema`` shows these values.
DEFAULT_SAMPLES_PER_POINT = 16  # random: trials per grid point; zoom: per round per point
DEFAULT_ZOOM_ROUNDS = 3
DEFAULT_KEEP_TOP = 0.25
DEFAULT_MARGIN = 0.1


class TpeSpec(StrictModel):
    """Optuna's Tree-structured Parzen Estimator, searching in caviar's scales."""

    n_startup_trials: Annotated[
        int,
        Field(
            ge=1,
            le=100_000,
            description=(
                "Trials sampled at random before TPE models the results (each with a shape of "
                "its own: fused packs start after them). Under ranking: bohb it is also the "
                "fewest trials that must have a value at an ASHA rung for TPE to rank trials "
                "there (at least parameters + 1)."
            ),
        ),
    ] = 10
    n_ei_candidates: Annotated[
        int,
        Field(
            ge=1,
            le=10_000,
            description=(
                "Candidates TPE draws from its model of the good trials for each proposal; it "
                "proposes the one likeliest to be good rather than bad."
            ),
        ),
    ] = 24
    multivariate: Annotated[
        bool,
        Field(
            description=(
                "Model the parameters jointly (Optuna's multivariate TPE, its default for one "
                "objective) rather than each on its own."
            )
        ),
    ] = True
    ranking: Annotated[
        Literal["asha", "bohb"],
        Field(
            description=(
                "How trials ASHA stopped at different rungs are ranked for TPE. bohb: BOHB's "
                "rule, by the objective at the deepest rung where n_startup_trials trials "
                "have a value; trials stopped below it rank after them, deeper first. asha: "
                "as caviar ranks them, deepest rung first, then the objective there (Optuna's "
                "rule for pruned trials). Diverged and failed trials always rank last."
            )
        ),
    ] = "bohb"

    def settings(self) -> TpeSettings:
        return TpeSettings(
            self.n_startup_trials, self.n_ei_candidates, self.multivariate, self.ranking
        )


class SearchSpec(StrictModel):
    strategy: Annotated[
        Literal["random", "grid", "zoom", "tpe"],
        Field(
            description=(
                "random: each trial samples every parameter on its scale (grid parameters are "
                "still enumerated). grid: every combination of grid and values parameters. "
                "zoom: coarse to fine: rounds of random search, each in the box around the "
                "previous round's best trials. tpe: Optuna's TPE proposes each trial from the "
                "results so far (early-stopped, diverged and running trials included), in "
                "the same scales; settings under tpe."
            )
        ),
    ] = "random"
    num_trials: Annotated[
        int | None,
        Field(
            ge=1,
            le=100_000,
            description=(
                "random, tpe: trials per grid point (default 16). grid: repeats of the whole "
                "grid (default 1). zoom: use trials_per_round."
            ),
            json_schema_extra={"default": DEFAULT_SAMPLES_PER_POINT},
        ),
    ] = None
    seed: Annotated[
        int,
        Field(description="Seed of the sampled configurations (and of every TPE proposal)."),
    ] = 0
    max_concurrent: Annotated[
        int | None,
        Field(ge=1, description="Cap on trials running at once (default: as many as fit)."),
    ] = None
    rounds: Annotated[
        int | None,
        Field(
            ge=1,
            le=100,
            description="zoom: number of rounds (default 3).",
            json_schema_extra={"default": DEFAULT_ZOOM_ROUNDS},
        ),
    ] = None
    trials_per_round: Annotated[
        int | None,
        Field(
            ge=1,
            le=100_000,
            description="zoom: trials per round per grid point (default 16).",
            json_schema_extra={"default": DEFAULT_SAMPLES_PER_POINT},
        ),
    ] = None
    keep_top: Annotated[
        float | None,
        Field(
            gt=0,
            description=(
                "zoom: the best trials that define the next region: a fraction (< 1) of the "
                "round's ranked trials, or a count (>= 1). Default 0.25."
            ),
            json_schema_extra={"default": DEFAULT_KEEP_TOP},
        ),
    ] = None
    margin: Annotated[
        float | None,
        Field(
            ge=0,
            le=1,
            description=(
                "zoom: widen the box around the kept trials by this share of the previous "
                "region's width on each side (in the scale's coordinate). Default 0.1."
            ),
            json_schema_extra={"default": DEFAULT_MARGIN},
        ),
    ] = None
    tpe: Annotated[
        TpeSpec | None,
        Field(
            description=(
                "tpe: the sampler's settings (n_startup_trials, n_ei_candidates, "
                "multivariate, ranking); the seed is search.seed."
            ),
            json_schema_extra={"default": TpeSpec().model_dump()},
        ),
    ] = None

    @model_validator(mode="after")
    def _zoom_fields_only_for_zoom(self) -> SearchSpec:
        zoom_fields = {"rounds", "trials_per_round", "keep_top", "margin"} & self.model_fields_set
        if self.strategy != "zoom" and zoom_fields:
            raise ValueError(
                f"{', '.join(sorted(zoom_fields))} only apply to strategy: zoom "
                f"(this spec uses strategy: {self.strategy})"
            )
        if self.strategy == "zoom" and self.num_trials is not None:
            raise ValueError(
                "strategy: zoom counts trials with rounds x trials_per_round; remove num_trials"
            )
        if self.keep_top is not None and self.keep_top >= 1 and self.keep_top != int(self.keep_top):
            raise ValueError(f"keep_top >= 1 is a count and must be whole, got {self.keep_top:g}")
        if self.tpe is not None and self.strategy != "tpe":
            raise ValueError(
                f"tpe settings only apply to strategy: tpe (this spec uses strategy: "
                f"{self.strategy}); set strategy: tpe or remove tpe"
            )
        return self

    def samples_per_point(self) -> int:
        if self.strategy == "zoom":
            return self.trials_per_round or DEFAULT_SAMPLES_PER_POINT
        if self.num_trials is not None:
            return self.num_trials
        return DEFAULT_SAMPLES_PER_POINT if self.strategy in ("random", "tpe") else 1

    def rounds_count(self) -> int:
        return (self.rounds or DEFAULT_ZOOM_ROUNDS) if self.strategy == "zoom" else 1

    def keep_top_value(self) -> float:
        return self.keep_top if self.keep_top is not None else DEFAULT_KEEP_TOP

    def margin_value(self) -> float:
        return self.margin if self.margin is not None else DEFAULT_MARGIN

    def tpe_settings(self) -> TpeSettings | None:
        """The TPE sampler's settings under strategy tpe (defaults where unset), else None."""
        if self.strategy != "tpe":
            return None
        return (self.tpe or TpeSpec()).settings()


class AshaScheduler(StrictModel):
    """Asynchronous successive halving: most trials stop early, the promising ones go on."""

    kind: Annotated[Literal["asha"], Field(description="asha | fifo")] = "asha"
    grace_period: Annotated[
        int, Field(ge=1, description="Epochs every trial runs before it can be stopped.")
    ] = 2
    reduction_factor: Annotated[
        float, Field(gt=1, description="Keep 1/reduction_factor of trials at each rung.")
    ] = 3
    max_epochs: Annotated[
        int | None,
        Field(ge=1, description="Epoch budget of a trial (default: fixed.epochs, else 30)."),
    ] = None
    brackets: Annotated[int, Field(ge=1, le=10, description="Number of ASHA brackets.")] = 1


class FifoScheduler(StrictModel):
    """No early stopping: every trial trains its full budget."""

    kind: Annotated[Literal["fifo"], Field(description="asha | fifo")]
    max_epochs: Annotated[
        int | None,
        Field(ge=1, description="Epoch budget of a trial (default: fixed.epochs, else 30)."),
    ] = None


def _scheduler_kind(value: Any) -> str:
    kind = value.get("kind") if isinstance(value, Mapping) else getattr(value, "kind", None)
    return "__fifo__" if kind == "fifo" else "__asha__"


SchedulerSpec = Annotated[
    Annotated[AshaScheduler, Tag("__asha__")] | Annotated[FifoScheduler, Tag("__fifo__")],
    Discriminator(_scheduler_kind),
]


class ObjectiveSpec(StrictModel):
    metric: Annotated[
        str, Field(description="A metric the trainable reports, e.g. val_accuracy or val_loss.")
    ] = "val_accuracy"
    mode: Annotated[
        Literal["max", "min"] | None,
        Field(description="max | min (default: the metric's natural direction)."),
    ] = None


class ResourcesSpec(StrictModel):
    cpus_per_trial: Annotated[
        float, Field(gt=0, le=1024, description="CPUs per trial; also torch's thread count.")
    ] = 1
    gpus_per_trial: Annotated[
        float,
        Field(ge=0, le=64, description="GPUs per trial; a fraction (0.25) packs trials per GPU."),
    ] = 0

    pack_size: Annotated[
        int | Literal["auto"],
        Field(
            description=(
                "Trials trained as one fused model per worker: 1 (one trial per worker), "
                "a number K, or auto (chosen from the network's shape and the device; 1 for "
                "trainables that cannot be packed). Each member is still its own trial."
            ),
            json_schema_extra={"default": "auto"},
        ),
    ] = "auto"

    epoch_timeout_s: Annotated[
        float | None,
        Field(
            gt=0,
            le=7 * 86_400,
            description=(
                "A trial silent this many seconds within one epoch (a dead-locked data loader, "
                "a hung collective) ends failed, 'timed out after N s in epoch E', and the "
                "sweep goes on; null turns the limit off. The default, an hour, is far above "
                "any epoch caviar's networks take; a live notice comes much earlier, when a "
                "trial is silent for many times its usual epoch."
            ),
        ),
    ] = 3600.0

    @field_validator("pack_size")
    @classmethod
    def _pack_size_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 1024:
            raise ValueError(f"must be auto or a whole number from 1 to 1024, got {value}")
        return value

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"above 1 must be a whole number of GPUs, got {value:g}")
        return value


class TrackingSpec(StrictModel):
    uri: Annotated[
        str | None,
        Field(
            description=(
                "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db). "
                "Credentials never go here: use MLFLOW_TRACKING_USERNAME/PASSWORD."
            )
        ),
    ] = None
    experiment: Annotated[
        str | None, Field(description="MLflow experiment (default: the spec's name).")
    ] = None

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).password is not None:
            raise ValueError(
                "holds a password; specs are logged and shared, so set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment instead"
            )
        return value


class StorageSpec(StrictModel):
    path: Annotated[
        str, Field(description="Folder for Ray results and checkpoints (relative to the cwd).")
    ] = "caviar_runs"
    checkpoint_every_s: Annotated[
        float,
        Field(
            ge=0,
            le=86_400,
            description=(
                "Checkpoint a running trial when this many seconds have passed since its last "
                "checkpoint, so a lost worker or a resumed sweep continues instead of starting "
                "over (0: only when the trial ends). Time, not epochs: a 40 ms epoch needs no "
                "checkpoint of its own."
            ),
        ),
    ] = 10.0
    report_every_s: Annotated[
        float,
        Field(
            ge=0,
            le=3_600,
            description=(
                "A trial sends its epochs to the driver (progress, journal, MLflow) at least "
                "this often. Shorter epochs travel in batches, each still logged as its own "
                "step; an ASHA rung epoch and the last epoch are sent at once, so early "
                "stopping decides exactly as with a report per epoch (0: report every epoch)."
            ),
        ),
    ] = 1.0
    max_failures: Annotated[
        int,
        Field(
            ge=0,
            le=100,
            description=(
                "Times a trial whose worker died is restarted from its last checkpoint before "
                "it ends as failed."
            ),
        ),
    ] = 2


# --- the sweep ---------------------------------------------------------------------------

# Fields a resumed sweep may change: they decide how the sweep is run and recorded (its note,
# its timeouts, how often it reports and checkpoints), never what it trains.
RESULT_NEUTRAL = (
    "description",
    "resources.epoch_timeout_s",
    "storage.report_every_s",
    "storage.checkpoint_every_s",
    "storage.max_failures",
)


class SweepSpec(StrictModel):
    """A caviar sweep: what to train, which parameters to vary, how to search and stop."""

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=100,
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
            description="Sweep name: letters, digits, '.', '_' and '-'; the default experiment.",
        ),
    ]
    description: Annotated[str, Field(description="Free text, logged on the parent run.")] = ""
    data: Annotated[DataSpec, Field(description="The dataset and its splits.")] = Field(
        default_factory=BundledData
    )
    trainable: Annotated[
        str,
        Field(
            description=(
                "The trainable to tune: a registered name (default bn_softmax_mlp), an import "
                "path package.module:NAME (the spec's folder first, then sys.path), or a "
                "caviar.trainables entry point."
            )
        ),
    ] = "bn_softmax_mlp"
    space: Annotated[
        dict[str, Parameter],
        Field(min_length=1, description="The parameters to vary, by name."),
    ]
    fixed: Annotated[
        dict[str, Any], Field(description="Constant parameters every trial receives.")
    ] = Field(default_factory=dict)
    search: Annotated[SearchSpec, Field(description="How configurations are chosen.")] = Field(
        default_factory=SearchSpec
    )
    scheduler: Annotated[
        SchedulerSpec, Field(description="Early stopping: asha (default) or fifo.")
    ] = Field(default_factory=AshaScheduler)
    objective: Annotated[ObjectiveSpec, Field(description="What 'best' means.")] = Field(
        default_factory=ObjectiveSpec
    )
    resources: Annotated[ResourcesSpec, Field(description="What each trial gets.")] = Field(
        default_factory=ResourcesSpec
    )
    tracking: Annotated[TrackingSpec, Field(description="Where results are logged.")] = Field(
        default_factory=TrackingSpec
    )
    storage: Annotated[StorageSpec, Field(description="Where Ray keeps results.")] = Field(
        default_factory=StorageSpec
    )
    panda: Annotated[
        PandaSpec, Field(description="caviar panda: babysitting rules and kept checkpoints.")
    ] = Field(default_factory=PandaSpec)

    @model_validator(mode="after")
    def _sections_agree(self, info: ValidationInfo) -> SweepSpec:
        # Not a ValueError on purpose: SpecError passes through pydantic with its paths intact.
        spec_dir = (info.context or {}).get("spec_dir")
        problems = list(_cross_section_problems(self, spec_dir))
        if problems:
            raise SpecError(problems)
        return self

    # Resolved values: the defaults that depend on other sections, in one place.

    @property
    def max_epochs(self) -> int:
        if self.scheduler.max_epochs is not None:
            return self.scheduler.max_epochs
        epochs = self.fixed.get("epochs")
        return int(epochs) if epochs is not None else 30

    @property
    def mode(self) -> Literal["max", "min"]:
        if self.objective.mode is not None:
            return self.objective.mode
        return _natural_mode(self.trainable, self.objective.metric)

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    def tracking_uri(self, environ: Mapping[str, str] = os.environ) -> str:
        return self.tracking.uri or environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI

    def search_space(self) -> SearchSpace:
        """The domains to sample; under ``strategy: grid`` categorical values are enumerated."""
        domains: list[Domain] = []
        for name, parameter in self.space.items():
            domain = parameter.to_domain(name)
            if self.search.strategy == "grid" and isinstance(domain, ChoiceDomain):
                domain = GridDomain(name, domain.values)
            domains.append(domain)
        return SearchSpace(tuple(domains), {**self.fixed, "epochs": self.max_epochs})

    def num_trials(self) -> int:
        per_round = self.search_space().grid_size() * self.search.samples_per_point()
        return per_round * self.search.rounds_count()

    def results_fields(self) -> dict[str, Any]:
        """The spec in canonical form, less the fields that cannot change its results
        (``RESULT_NEUTRAL``): what a resumed sweep must share with the one it finishes.

        Fields at their defaults are left out, so a caviar that adds a field (with a default
        that keeps today's behaviour) still resumes the sweeps an older one started."""
        fields = self.model_dump(mode="json", exclude_defaults=True)
        for path in RESULT_NEUTRAL:
            section, _, key = path.rpartition(".")
            holder = fields.get(section) if section else fields
            if isinstance(holder, dict):
                holder.pop(key, None)
                if section and not holder:  # a section that only set neutral fields
                    fields.pop(section)
        return fields

    def spec_hash(self) -> str:
        canonical = json.dumps(self.results_fields(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def summary(self) -> str:
        space = self.search_space()
        params = ", ".join(f"{d.name} {d.describe()}" for d in space.domains)
        grid = space.grid_size()
        per_point = self.search.samples_per_point()
        rounds = self.search.rounds_count()
        factors = ([f"{rounds} rounds"] if self.search.strategy == "zoom" else []) + (
            [f"{grid} grid points"] if grid > 1 else []
        )
        trials = (
            f"{' x '.join([*factors, str(per_point)])} = {self.num_trials()} trials"
            if factors
            else f"{self.num_trials()} trials"
        )
        sched = self.scheduler
        if isinstance(sched, AshaScheduler):
            stopping = (
                f"asha (grace {sched.grace_period}, reduction {sched.reduction_factor:g}, "
                f"max {self.max_epochs} epochs)"
            )
        else:
            stopping = f"fifo ({self.max_epochs} epochs)"
        return (
            f"{self.name}: {len(space.domains)} parameters ({params}); "
            f"{self.search.strategy} search, {trials}; {stopping}; "
            f"objective {self.mode} {self.objective.metric}"
        )


def _natural_mode(trainable: str, metric: str) -> Literal["max", "min"]:
    from trainables import get_trainable

    mode = get_trainable(trainable).metrics.get(metric, "max")
    return "min" if mode == "min" else "max"


def _cross_section_problems(spec: SweepSpec, spec_dir: Path | None = None) -> Iterable[Problem]:
    """Checks that need more than one section; each problem carries the path to fix.

    A trainable named by import path is imported here, the spec's folder first."""
    from trainables import UnknownTrainableError, get_trainable

    try:
        definition = get_trainable(spec.trainable, [spec_dir] if spec_dir else [])
    except UnknownTrainableError as error:
        yield Problem("trainable", str(error.args[0]) if error.args else str(error))
        return

    known = set(definition.parameter_names())
    for section, names in (("space", spec.space), ("fixed", spec.fixed)):
        for name in names:
            if name not in known:
                yield Problem(
                    f"{section}.{name}",
                    f"{spec.trainable} has no parameter {name!r}; "
                    f"its parameters are {', '.join(sorted(known))}",
                )
    for name in spec.space:
        if name in spec.fixed:
            yield Problem(
                f"fixed.{name}", "is also in space; a parameter is sampled or fixed, not both"
            )

    if "epochs" in spec.space:
        yield Problem(
            "space.epochs",
            "the epoch budget is the scheduler's to spend; set scheduler.max_epochs instead",
        )
    fixed_epochs = spec.fixed.get("epochs")
    if (
        spec.scheduler.max_epochs is not None
        and fixed_epochs is not None
        and fixed_epochs != spec.scheduler.max_epochs
    ):
        yield Problem(
            "scheduler.max_epochs",
            f"is {spec.scheduler.max_epochs} but fixed.epochs is {fixed_epochs}; set only one",
        )
    if isinstance(spec.scheduler, AshaScheduler) and spec.scheduler.grace_period > spec.max_epochs:
        yield Problem(
            "scheduler.grace_period",
            f"must be <= max_epochs ({spec.max_epochs}), got {spec.scheduler.grace_period}",
        )

    if spec.objective.metric not in definition.metrics:
        yield Problem(
            "objective.metric",
            f"{spec.trainable} does not report {spec.objective.metric!r}; "
            f"choose one of {', '.join(definition.metrics)}",
        )

    pack_size = spec.resources.pack_size
    if isinstance(pack_size, int) and pack_size > 1 and definition.packing is None:
        yield Problem(
            "resources.pack_size",
            f"{spec.trainable} cannot be packed (it defines no fused training); "
            "use pack_size: 1 or auto",
        )

    if spec.search.strategy == "grid":
        for name, parameter in spec.space.items():
            if isinstance(parameter, RangeParameter):
                yield Problem(
                    f"space.{name}",
                    "a range cannot be enumerated by strategy: grid; "
                    "use grid: [...] or values: [...], or strategy: random",
                )

    yield from _trainable_config_problems(spec, definition.config_model, known)


def _trainable_config_problems(
    spec: SweepSpec, config_model: type[BaseModel], known: set[str]
) -> Iterable[Problem]:
    """Validate fixed values and every range end / listed value against the trainable's config."""
    fixed = {k: v for k, v in spec.fixed.items() if k in known}
    base = {**fixed, "epochs": spec.max_epochs}
    base_errors = _config_errors(config_model, base)
    for loc, message in base_errors:
        yield Problem(f"fixed.{loc}" if loc else "fixed", message)
    if base_errors:
        return
    for name, parameter in spec.space.items():
        if name not in known or name in spec.fixed:
            continue
        field = config_model.model_fields.get(name)
        if isinstance(parameter, RangeParameter) and field is not None:
            if field.annotation is int and not parameter.integer:
                yield Problem(f"space.{name}", f"{name} is a whole number; add integer: true")
                continue
        for where, value in parameter.corner_values():
            for _, message in _config_errors(config_model, {**base, name: value}):
                yield Problem(f"space.{name}.{where}", message)


def _config_errors(config_model: type[BaseModel], config: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        config_model.model_validate(config)
    except ValidationError as error:
        return [(".".join(str(p) for p in e["loc"]), _message(e)) for e in error.errors()]
    return []


# --- loading: the one parse boundary -----------------------------------------------------


def load_spec(path: str | os.PathLike[str]) -> SweepSpec:
    """Read a YAML (or JSON) spec file; any problem becomes a :class:`SpecError`."""
    source = str(path)
    file = Path(path)
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise SpecError([Problem("", f"{source} {what}; pass the path of a YAML spec file")])
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError([Problem("", "is not a text file; a spec is YAML text")], source) from None
    except OSError as error:
        raise SpecError([Problem("", f"cannot be read: {error.strerror}")], source) from None
    return parse_spec_text(text, source, spec_dir=file.resolve().parent)


def parse_spec_text(
    text: str, source: str | None = None, spec_dir: Path | None = None
) -> SweepSpec:
    try:
        # Safe: a spec never constructs Python objects; and bounded: load_yaml refuses a spec
        # nested too deep or whose aliases expand past MAX_EXPANDED_VALUES values, before
        # anything (pydantic, JSON for MLflow) walks every expansion.
        data = load_yaml(text)
    except YamlShapeError as error:
        raise SpecError([Problem("", error.problem)], source) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError([Problem("", f"invalid YAML: {where}{problem}")], source) from None
    if data is None:
        raise SpecError([Problem("", "is empty; a spec needs at least name and space")], source)
    if not isinstance(data, dict):
        raise SpecError(
            [Problem("", f"must be a mapping of sections, got a {type(data).__name__}")], source
        )
    return parse_spec(data, source, spec_dir)


def parse_spec(
    data: Mapping[str, Any], source: str | None = None, spec_dir: Path | None = None
) -> SweepSpec:
    """The validated spec; ``spec_dir`` is where a trainable's import path is looked up first."""
    try:
        return SweepSpec.model_validate(data, context={"spec_dir": spec_dir})
    except ValidationError as error:
        raise SpecError(_problems(error), source) from None
    except SpecError as error:
        raise SpecError(error.problems, source) from None


def _problems(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors():
        # The last part of an unknown key's location is the key the user wrote, even one
        # spelled like a union's tag; anywhere else a tag is pydantic's, and dropped.
        last = len(item["loc"]) - 1 if item["type"] == "extra_forbidden" else -1
        loc = tuple(p for i, p in enumerate(item["loc"]) if i == last or not _is_tag(p))
        problems.append(Problem(_format_path(loc), _message(item, loc)))
    return problems


# The tags of the discriminated unions above: pydantic puts them in an error's location, where
# a user would not recognise them. Only these are dropped: a user's own key that merely looks
# like one ("_____") keeps its place in the path.
_UNION_TAGS = frozenset(
    {
        "__range__", "__choice__", "__grid__",
        "__bundled__", "__synthetic__", "__csv__", "__parquet__", "__npz__", "__torchvision__",
        "__asha__", "__fifo__",
    }
)  # fmt: skip


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and part in _UNION_TAGS


def _format_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _message(item: Mapping[str, Any], loc: tuple[Any, ...] = ()) -> str:
    kind = item["type"]
    message = str(item["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if kind == "extra_forbidden":
        return _unknown_key_message(loc)
    if kind == "missing":
        return "is required"
    value = item.get("input")
    if (
        kind != "value_error"
        and isinstance(value, (bool, int, float, str))
        and not isinstance(value, dict)
    ):
        message += f", got {value!r}"
    return message[:1].lower() + message[1:]


def _unknown_key_message(loc: tuple[Any, ...]) -> str:
    import difflib

    key = str(loc[-1]) if loc else ""
    valid = _valid_keys(loc[:-1])
    if not valid:
        return "unknown key"
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (valid keys: {', '.join(valid)})"


def _valid_keys(parent: tuple[Any, ...]) -> list[str]:
    sections: dict[str, list[type[BaseModel]]] = {
        "data": [BundledData, SyntheticData, CsvData, ParquetData, NpzData, TorchvisionData],
        "search": [SearchSpec],
        "scheduler": [AshaScheduler, FifoScheduler],
        "objective": [ObjectiveSpec],
        "resources": [ResourcesSpec],
        "tracking": [TrackingSpec],
        "storage": [StorageSpec],
        "panda": [PandaSpec],
    }
    if not parent:
        models: list[type[BaseModel]] = [SweepSpec]
    elif len(parent) == 1:
        models = sections.get(str(parent[0]), [])
    elif len(parent) == 2 and parent[0] == "space":
        models = [RangeParameter, ChoiceParameter, GridParameter]
    else:
        models = []
    keys: list[str] = []
    for model in models:
        keys += [k for k in model.model_fields if k not in keys]
    return keys


# The lookup's advice for a spec's trainable; `caviar schema` without --spec took no spec.
_BESIDE_THE_SPEC = "put it beside the spec or install its package"
_NAME_THE_FOLDER = (
    "run caviar schema in the module's folder, name that folder or its spec with --spec PATH, "
    "or install its package"
)


def schema_for(reference: str | None = None, spec: Path | None = None) -> dict[str, Any]:
    """What ``caviar schema`` prints: the spec's JSON Schema, or a trainable's parameters.

    ``spec`` (a spec file or a folder) is where an import-path trainable is looked up first,
    instead of the working folder; a spec file also names the trainable when ``reference``
    does not. Only its ``trainable`` is read, so a spec still being written works too.
    """
    if spec is None:
        return json_schema() if reference is None else trainable_schema(reference)
    if spec.is_dir():
        if reference is None:
            raise _spec_option_error(
                f"{spec} is a folder: say which trainable in it with --trainable NAME, "
                "or name the spec file instead"
            )
        return trainable_schema(reference, spec, spec_given=True)
    if not spec.is_file():
        raise _spec_option_error(
            f"{spec} does not exist; pass a spec file or the folder of the trainable's module"
        )
    if reference is None:
        reference = _trainable_named(spec)
    return trainable_schema(reference, spec.resolve().parent, spec_given=True)


def _spec_option_error(message: str) -> SpecError:
    return SpecError([Problem("--spec", message)])


def _trainable_named(spec: Path) -> str:
    """The spec's ``trainable`` (its default when it names none), read without validating."""
    try:
        data = load_yaml(spec.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        data = None  # caviar validate says what is wrong with it; only the name is wanted here
    if not isinstance(data, dict):
        raise _spec_option_error(
            f"{spec} is not a readable spec (caviar validate says why); "
            "or name the trainable with --trainable NAME"
        )
    return str(data.get("trainable") or SweepSpec.model_fields["trainable"].default)


def trainable_schema(
    reference: str, search_dir: Path | None = None, spec_given: bool = False
) -> dict[str, Any]:
    """The JSON Schema of the parameters a trainable takes, with the metrics it reports;
    ``spec_given``: ``search_dir`` is a spec's folder (else the advice names ``--spec``)."""
    from trainables import UnknownTrainableError, get_trainable

    try:
        definition = get_trainable(reference, [search_dir or Path.cwd()])
    except UnknownTrainableError as error:
        message = str(error)
        if not spec_given:
            message = message.replace(_BESIDE_THE_SPEC, _NAME_THE_FOLDER)
        raise SpecError([Problem("trainable", message)]) from None
    schema = definition.config_model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"{reference} parameters"
    schema["x-caviar-metrics"] = dict(definition.metrics)
    return schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec, generated from the models (editors complete from it)."""
    schema = SweepSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "caviar sweep spec"
    return schema
