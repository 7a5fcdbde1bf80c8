"""The sweep spec, the product's main interface and the single source of truth: nothing
downstream re-validates raw dicts.

One concept per module: the sections (``parameters``, ``data_sources``, ``search``,
``scheduler``, ``objective``, ``resources``, ``tracking``, ``storage``, ``panda``) on a strict
base (``base``); the sweep that holds them and checks what spans them (``sweep``); the one
parse boundary (``parse``, with ``problems`` turning pydantic's errors
into paths); ``caviar schema`` (``schema``). ``data`` resolves the data a spec names against
its folder and reads it once, on the driver. The public names are re-exported here.
"""

from orchestrator.errors import Problem, SpecError
from orchestrator.spec.base import StrictModel
from orchestrator.spec.data_sources import (
    BUNDLED_SOURCES,
    DATA_SOURCES,
    FILE_SOURCES,
    BundledData,
    CsvData,
    DataSpec,
    FileData,
    NpzData,
    ParquetData,
    SyntheticData,
    TorchvisionData,
)
from orchestrator.spec.objective import ObjectiveSpec
from orchestrator.spec.panda import PandaRules, PandaSpec
from orchestrator.spec.parameters import ChoiceParameter, GridParameter, Parameter, RangeParameter
from orchestrator.spec.parse import load_spec, parse_spec, parse_spec_text
from orchestrator.spec.resources import ResourcesSpec
from orchestrator.spec.scheduler import (
    AshaScheduler,
    FifoScheduler,
    PbtPerturbation,
    PbtScheduler,
    SchedulerSpec,
)
from orchestrator.spec.schema import json_schema, schema_for, trainable_schema
from orchestrator.spec.search import SearchSpec, TpeSpec
from orchestrator.spec.storage import StorageSpec
from orchestrator.spec.sweep import RESULT_NEUTRAL, SweepSpec
from orchestrator.spec.tracking import DEFAULT_TRACKING_URI, TrackingSpec

__all__ = [
    "BUNDLED_SOURCES",
    "DATA_SOURCES",
    "DEFAULT_TRACKING_URI",
    "FILE_SOURCES",
    "RESULT_NEUTRAL",
    "AshaScheduler",
    "BundledData",
    "ChoiceParameter",
    "CsvData",
    "DataSpec",
    "FifoScheduler",
    "FileData",
    "GridParameter",
    "NpzData",
    "ObjectiveSpec",
    "PandaRules",
    "PandaSpec",
    "ParquetData",
    "PbtPerturbation",
    "PbtScheduler",
    "Parameter",
    "Problem",
    "RangeParameter",
    "ResourcesSpec",
    "SchedulerSpec",
    "SearchSpec",
    "SpecError",
    "StorageSpec",
    "StrictModel",
    "SweepSpec",
    "SyntheticData",
    "TorchvisionData",
    "TpeSpec",
    "TrackingSpec",
    "json_schema",
    "load_spec",
    "parse_spec",
    "parse_spec_text",
    "schema_for",
    "trainable_schema",
]
